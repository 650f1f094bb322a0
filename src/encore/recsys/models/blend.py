"""A weighted blend of several recommenders: models that err differently are better together.

Each part's scores are standardised per user (z-scores over the catalogue) before they are
weighted and summed, so parts on different scales (ALS dot products, EASE regression weights,
kNN similarity sums) contribute in proportion to their weight.

    model = Blend([{"kind": "ease", "params": {"regularization": 60}, "weight": 0.4},
                   {"kind": "als", "params": {"factors": 128}, "weight": 0.3},
                   {"kind": "item_knn", "params": {}, "weight": 0.3}]).fit(user_items, items)
"""

import numpy as np
import pandas as pd
import scipy.sparse as sp

from encore.core.errors import NotSupportedError
from encore.recsys.models.base import FitCallback, Recommender, standardise


class Blend(Recommender):
    """``parts``: a list of ``{"kind", "params", "weight"}``; weights need not sum to one."""

    kind = "blend"

    def __init__(self, parts: list[dict]):
        if not parts:
            raise ValueError("a blend needs at least one part")
        for part in parts:
            if set(part) != {"kind", "params", "weight"}:
                raise ValueError(f"each part has exactly the keys kind, params and weight, not {sorted(part)}")
        self.parts = parts

    def _fit(self, user_items: sp.csr_matrix, items: pd.DataFrame | None, callback: FitCallback | None) -> None:
        from encore.recsys.models import fit_model

        self.user_items_ = user_items
        for index, part in enumerate(self.parts):
            setattr(self, f"part{index}_", fit_model(part["kind"], part["params"], self.user_items_, items))

    def _models(self) -> list[tuple[Recommender, float]]:
        return [(getattr(self, f"part{index}_"), part["weight"]) for index, part in enumerate(self.parts)]

    def score(self, users: np.ndarray) -> np.ndarray:
        return sum(weight * standardise(model.score(users)) for model, weight in self._models())

    def score_history(self, items: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return sum(
            weight * standardise(model.score_history(items, weights)[None, :])[0] for model, weight in self._models()
        )

    def _similar_items(self, item: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """From the heaviest part that knows item similarity."""
        for model, _ in sorted(self._models(), key=lambda pair: -pair[1]):
            try:
                return model.similar_items(item, n)
            except NotSupportedError:
                continue
        raise NotSupportedError("no part of this blend has a notion of item similarity")

    def _contributions(self, user: int, item: int) -> tuple[np.ndarray, np.ndarray]:
        """Each history item's contribution, summed over the parts that explain, each scaled as in ``score``.

        Every part gives all its contributions, so an item counts in full in each part that weighs it,
        not only where it is among that part's largest."""
        totals = np.zeros(self.n_items)
        explained = False
        for model, weight in self._models():
            try:
                history, contributions = model._contributions(user, item)
            except NotSupportedError:
                continue
            explained = True
            std = model.score(np.array([user]))[0].std() or 1.0
            np.add.at(totals, history, weight * contributions / std)
        if not explained:
            raise NotSupportedError("no part of this blend can explain its recommendations")
        history = self.user_items_[user].indices
        return history, totals[history]
