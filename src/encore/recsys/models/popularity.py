"""The popularity baseline: every user gets the items the most users played."""

import numpy as np
import scipy.sparse as sp

from encore.recsys.models.base import Recommender


class Popularity(Recommender):
    """Ranks items by how many users interacted with them (``by="users"``) or by their total
    weight (``by="weight"``, e.g. total play count)."""

    kind = "popularity"

    def __init__(self, by: str = "users"):
        if by not in ("users", "weight"):
            raise ValueError(f"by must be 'users' or 'weight', not {by!r}")
        self.by = by

    def fit(self, user_items: sp.csr_matrix) -> "Popularity":
        self.user_items_ = sp.csr_matrix(user_items, dtype=np.float32)
        counted = self.user_items_ if self.by == "weight" else (self.user_items_ > 0)
        self.item_scores_ = np.asarray(counted.sum(axis=0), dtype=np.float64).ravel()
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.item_scores_, (len(users), len(self.item_scores_))).copy()

    def score_history(self, items: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return self.item_scores_.copy()
