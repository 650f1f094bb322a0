"""Content-based and hybrid recommenders: what items are like, not only who played them.

Item features come from the catalogue: the tags listeners gave them (TF-IDF over each item's tag
list, as HetRec provides) or audio features (the catalogue's ``audio_*`` columns, standardised).
A content model ranks items nobody has played yet; the hybrid adds content to a collaborative
model's scores, weighing it most for the items with fewest interactions.

    model = ContentBased(features="tags").fit(user_items, items)
    ids, scores = model.recommend(userid, n=10)
"""

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from encore.core.errors import NotSupportedError
from encore.recsys.interactions import AUDIO_PREFIX
from encore.recsys.models.base import FitCallback, Recommender, standardise


def item_features(items: pd.DataFrame, source: str) -> sp.csr_matrix:
    """L2-normalised feature rows in ``item_idx`` order; an item without features has a zero row."""
    items = items.sort_values("item_idx")
    if source == "tags":
        if "tags" not in items or not any(len(tags) for tags in items["tags"]):
            raise ValueError("the catalogue has no tags to build content features from")
        vectorizer = TfidfVectorizer(analyzer=list, sublinear_tf=True)
        return normalize(vectorizer.fit_transform(items["tags"].map(list)).tocsr())
    if source == "audio":
        columns = [column for column in items.columns if column.startswith(AUDIO_PREFIX)]
        if not columns:
            raise ValueError(f"the catalogue has no audio feature columns ({AUDIO_PREFIX}*)")
        values = items[columns].to_numpy(np.float64)
        present = ~np.isnan(values).any(axis=1)
        standard = np.zeros_like(values)
        mean, std = values[present].mean(axis=0), values[present].std(axis=0)
        standard[present] = (values[present] - mean) / np.where(std > 0, std, 1)
        return normalize(sp.csr_matrix(standard))
    raise ValueError(f"unknown feature source {source!r}; choose 'tags' or 'audio'")


def _weights(user_items: sp.csr_matrix) -> sp.csr_matrix:
    # Play counts are heavy-tailed: a log keeps one obsessive favourite from drowning the profile.
    weighted = sp.csr_matrix(user_items, dtype=np.float64, copy=True)
    weighted.data = np.log1p(weighted.data)
    return weighted


class ContentBased(Recommender):
    """Each user is the weighted sum of the features of the items they played; items are ranked by
    cosine similarity to it. ``features``: ``"tags"`` or ``"audio"``."""

    kind = "content"

    def __init__(self, features: str = "tags"):
        self.features = features

    def _fit(self, user_items: sp.csr_matrix, items: pd.DataFrame | None, callback: FitCallback | None) -> None:
        if items is None:
            raise ValueError("a content model learns from the item catalogue: fit(user_items, items)")
        self.user_items_ = user_items
        self.item_features_ = item_features(items, self.features)
        self.user_profiles_ = normalize(_weights(self.user_items_) @ self.item_features_).tocsr()

    def score(self, users: np.ndarray) -> np.ndarray:
        return (self.user_profiles_[users] @ self.item_features_.T).toarray()

    def score_history(self, items: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return (self._profile(items, weights) @ self.item_features_.T).toarray().ravel()

    def _profile(self, items: np.ndarray, weights: np.ndarray | None) -> sp.csr_matrix:
        weights = np.ones(len(items)) if weights is None else np.asarray(weights, dtype=np.float64)
        history = sp.csr_matrix((np.log1p(weights), (np.zeros(len(items), dtype=int), items)), shape=(1, self.n_items))
        return normalize(history @ self.item_features_)

    def _similar_items(self, item: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        scores = (self.item_features_[item] @ self.item_features_.T).toarray()
        scores[0, item] = -np.inf
        ids, best = self._best(scores, n)
        return ids[0], best[0]

    def _contributions(self, user: int, item: int) -> tuple[np.ndarray, np.ndarray]:
        """History items by their share of the score: weight x similarity to ``item``, scaled like the profile."""
        history = _weights(self.user_items_[user])
        profile_norm = sp.linalg.norm(history @ self.item_features_)
        if profile_norm == 0:
            return np.empty(0, dtype=np.int64), np.empty(0)
        similarity = (self.item_features_[history.indices] @ self.item_features_[item].T).toarray().ravel()
        return history.indices, history.data * similarity / profile_norm


class Hybrid(Recommender):
    """A collaborative model with content added per item, by how many people played it: with ``c``
    training users on an item, its score is ``z(collaborative) + w(c) * z(content)`` (``z``: per-user
    z-scores over the catalogue) with

        w(c) = (balance * cold_weight + c * warm_weight) / (balance + c)

    so content weighs ``cold_weight`` for an item nobody played and tends to ``warm_weight`` once its
    listeners outnumber ``balance``. Among items the collaborative model knows nothing about, content
    decides; among the rest it still breaks near-ties. (Adding content rather than trading the
    collaborative score away for it did better on HetRec, where a collaborative score is still
    informative for items with a handful of listeners: see ``benchmarks/RESULTS.md``.)
    """

    kind = "hybrid"
    state_format = 2  # 2: listeners_ per item, content added to the collaborative score

    def __init__(
        self,
        collaborative: str = "popularity",
        collaborative_params: dict | None = None,
        features: str = "tags",
        balance: float = 20.0,
        cold_weight: float = 1.2,
        warm_weight: float = 0.1,
    ):
        self.collaborative = collaborative
        self.collaborative_params = collaborative_params
        self.features = features
        self.balance = balance
        self.cold_weight = cold_weight
        self.warm_weight = warm_weight

    def _fit(self, user_items: sp.csr_matrix, items: pd.DataFrame | None, callback: FitCallback | None) -> None:
        from encore.recsys.models import fit_model

        self.user_items_ = user_items
        self.collaborative_ = fit_model(self.collaborative, self.collaborative_params or {}, self.user_items_, items)
        self.content_ = ContentBased(self.features).fit(self.user_items_, items)
        self.listeners_ = np.asarray((self.user_items_ > 0).sum(axis=0), dtype=np.float64).ravel()

    def content_weights(self) -> np.ndarray:
        """``w(c)`` of every item, from the current ``balance``, ``cold_weight`` and ``warm_weight``."""
        return (self.balance * self.cold_weight + self.listeners_ * self.warm_weight) / (self.balance + self.listeners_)

    def combine(self, collaborative: np.ndarray, content: np.ndarray) -> np.ndarray:
        """The hybrid's scores from its two parts' scores (rows of users): a weighting can be searched
        on a fitted hybrid's part scores without fitting the parts again."""
        return standardise(collaborative) + self.content_weights() * standardise(content)

    def score(self, users: np.ndarray) -> np.ndarray:
        return self.combine(self.collaborative_.score(users), self.content_.score(users))

    def score_history(self, items: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        collaborative = self.collaborative_.score_history(items, weights)[None, :]
        content = self.content_.score_history(items, weights)[None, :]
        return self.combine(collaborative, content)[0]

    def _similar_items(self, item: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self.collaborative_.similar_items(item, n)
        except NotSupportedError:
            return self.content_.similar_items(item, n)

    def _contributions(self, user: int, item: int) -> tuple[np.ndarray, np.ndarray]:
        # Explanations come from the part that weighs most for this item.
        if self.content_weights()[item] <= 1:
            try:
                return self.collaborative_._contributions(user, item)
            except NotSupportedError:
                pass
        return self.content_._contributions(user, item)
