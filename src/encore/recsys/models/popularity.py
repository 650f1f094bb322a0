"""The popularity baseline: every user gets the items the most users played."""

import numpy as np
import pandas as pd
import scipy.sparse as sp

from encore.recsys.models.base import FitCallback, Recommender


class Popularity(Recommender):
    """Ranks items by how many users interacted with them (``by="users"``) or by their total
    weight (``by="weight"``, e.g. total play count)."""

    kind = "popularity"

    def __init__(self, by: str = "users"):
        if by not in ("users", "weight"):
            raise ValueError(f"by must be 'users' or 'weight', not {by!r}")
        self.by = by

    def _fit(self, user_items: sp.csr_matrix, items: pd.DataFrame | None, callback: FitCallback | None) -> None:
        self.user_items_ = user_items
        counted = self.user_items_ if self.by == "weight" else (self.user_items_ > 0)
        self.item_scores_ = np.asarray(counted.sum(axis=0), dtype=np.float64).ravel()

    def score(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.item_scores_, (len(users), len(self.item_scores_))).copy()

    def score_history(self, items: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return self.item_scores_.copy()
