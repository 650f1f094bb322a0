"""Neighbourhood models: item-based and user-based k-nearest neighbours over sparse vectors.

Both compare rows of a sparse matrix (items as vectors over users for ``ItemKNN``, users as
vectors over items for ``UserKNN``) with one of three similarities, all computed from sparse
matrix products so that only pairs that share at least one user (or item) are ever stored:

- ``"cosine"``: a·b / (‖a‖ ‖b‖).
- ``"pearson"``: cosine after centring each row on the mean of its *observed* (nonzero) entries,
  the usual convention for implicit feedback, where an absent entry is unknown rather than zero.
  Binary rows centre to all zeros, so Pearson needs graded weights (``binarize=False``).
- ``"euclidean"``: 1 / (1 + ‖a - b‖), with ‖a - b‖² = ‖a‖² + ‖b‖² - 2a·b. Only pairs that
  co-occur get a value; the rest stay 0 (no evidence) instead of their small true similarity,
  which keeps the matrix sparse.

``shrinkage`` multiplies each similarity by n / (n + shrinkage), n the number of users (items)
the pair shares, so that a pair seen together once does not look as alike as one seen together
a hundred times. Each row keeps its ``neighbours`` most similar rows with a positive similarity:
a negative Pearson correlation says "unlike", which a top-N ranking over plays has no use for.
"""

import numpy as np
import pandas as pd
import scipy.sparse as sp

from encore.core.errors import NotSupportedError
from encore.recsys.models.base import FitCallback, Recommender

SIMILARITIES = ("cosine", "pearson", "euclidean")


def weigh(user_items: sp.csr_matrix, binarize: bool, log_scaling: bool) -> sp.csr_matrix:
    """The interaction weights a model learns from: presence (``binarize``), log(1 + plays)
    (``log_scaling``) or the plays themselves. Explicit zeros are dropped, so every stored weight
    is positive. float32, the type of the learned weights: a float64 operand would make every
    product with them copy them first."""
    weighted = sp.csr_matrix(user_items, dtype=np.float32, copy=True)
    weighted.eliminate_zeros()
    if binarize:
        weighted.data[:] = 1.0
    elif log_scaling:
        np.log1p(weighted.data, out=weighted.data)
    return weighted


def check_weighting(binarize: bool, log_scaling: bool) -> None:
    if binarize and log_scaling:
        raise ValueError(
            "binarize and log_scaling exclude each other: binarize drops the play counts that log_scaling would scale"
        )


def history_row(items: np.ndarray, weights: np.ndarray | None, n_items: int) -> sp.csr_matrix:
    """A 1 x n_items row for an unseen user's history; repeated items add up, like ingest does."""
    items = np.asarray(items, dtype=np.int64)
    weights = np.ones(len(items)) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != items.shape:
        raise ValueError(f"{len(items)} items but weights of shape {weights.shape}")
    return sp.csr_matrix((weights, (np.zeros_like(items), items)), shape=(1, n_items))


def _centre(rows: sp.csr_matrix) -> sp.csr_matrix:
    counts = np.diff(rows.indptr)
    means = np.asarray(rows.sum(axis=1)).ravel() / np.maximum(counts, 1)
    centred = rows.copy()
    centred.data -= np.repeat(means, counts)
    centred.eliminate_zeros()
    return centred


def _pattern(rows: sp.csr_matrix) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones_like(rows.data), rows.indices, rows.indptr), shape=rows.shape)


def _normalise(rows: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(rows.multiply(rows).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / norms) @ rows)


def pairwise_similarity(
    left: sp.csr_matrix, right: sp.csr_matrix, similarity: str, shrinkage: float = 0.0
) -> sp.csr_matrix:
    """Similarities between the rows of ``left`` and the rows of ``right``, as a sparse
    (left rows x right rows) matrix holding only pairs that share a column.

    Rows must hold positive weights (see ``weigh``).

    >>> similarity = pairwise_similarity(items, items, "cosine", shrinkage=10)
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, not {similarity!r}")
    left, right = sp.csr_matrix(left, dtype=np.float64), sp.csr_matrix(right, dtype=np.float64)
    # Counted before centring: a centred weight that happens to be 0 is still a shared user.
    shared = _pattern(left) @ _pattern(right).T if shrinkage > 0 else None
    if similarity == "pearson":
        left, right = _centre(left), _centre(right)
    if similarity == "euclidean":
        dots = sp.coo_matrix(left @ right.T)
        left_norms = np.asarray(left.multiply(left).sum(axis=1)).ravel()
        right_norms = np.asarray(right.multiply(right).sum(axis=1)).ravel()
        # Cancellation can leave tiny negatives where two rows are equal.
        squared = np.maximum(left_norms[dots.row] + right_norms[dots.col] - 2 * dots.data, 0.0)
        similarities = sp.csr_matrix((1.0 / (1.0 + np.sqrt(squared)), (dots.row, dots.col)), shape=dots.shape)
    else:
        similarities = sp.csr_matrix(_normalise(left) @ _normalise(right).T)
    if shared is not None:
        shared.data = shared.data / (shared.data + shrinkage)
        similarities = sp.csr_matrix(similarities.multiply(shared))
    return similarities


def top_neighbours(similarities: sp.csr_matrix, k: int, exclude_self: bool = False) -> sp.csr_matrix:
    """Keep, in each row, the ``k`` largest positive similarities (ties to the lower column),
    leaving out the diagonal when rows and columns are the same things.

    >>> neighbours = top_neighbours(pairwise_similarity(items, items, "cosine"), 100, exclude_self=True)
    """
    coo = sp.coo_matrix(similarities)
    keep = coo.data > 0
    if exclude_self:
        keep &= coo.row != coo.col
    rows, cols, values = coo.row[keep], coo.col[keep], coo.data[keep]
    order = np.lexsort((cols, -values, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    row_starts = np.searchsorted(rows, np.arange(coo.shape[0]))
    rank = np.arange(len(rows)) - row_starts[rows]
    keep = rank < k
    return sp.csr_matrix((values[keep].astype(np.float32), (rows[keep], cols[keep])), shape=coo.shape)


def _check_neighbourhood(similarity: str, neighbours: int, shrinkage: float, binarize: bool, log_scaling: bool) -> None:
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, not {similarity!r}")
    if similarity == "pearson" and binarize:
        raise ValueError(
            "pearson centres each vector on its observed weights, which binarize makes all 1 "
            "(every similarity would be 0): use binarize=False, e.g. with log_scaling=True"
        )
    if neighbours < 1:
        raise ValueError(f"neighbours must be at least 1, not {neighbours}")
    if shrinkage < 0:
        raise ValueError(f"shrinkage must be non-negative, not {shrinkage}")
    check_weighting(binarize, log_scaling)


class _Neighbourhood(Recommender):
    """What item- and user-based kNN share: their hyperparameters and how they weigh interactions."""

    def __init__(self, similarity: str, neighbours: int, shrinkage: float, binarize: bool, log_scaling: bool):
        _check_neighbourhood(similarity, neighbours, shrinkage, binarize, log_scaling)
        self.similarity = similarity
        self.neighbours = neighbours
        self.shrinkage = shrinkage
        self.binarize = binarize
        self.log_scaling = log_scaling

    def _weigh(self, user_items: sp.csr_matrix) -> sp.csr_matrix:
        return weigh(user_items, self.binarize, self.log_scaling)


class ItemKNN(_Neighbourhood):
    """Item-based k-nearest neighbours: a user's score for an item is the sum, over the items
    they played, of their weight times that item's similarity to it (Sarwar et al. 2001;
    Deshpande & Karypis 2004).

    Parameters
    ----------
    similarity : {"cosine", "pearson", "euclidean"}
        How two items, as vectors over users, are compared (see the module docstring).
    neighbours : int
        How many most similar items each item keeps.
    shrinkage : float
        Similarities are multiplied by n / (n + shrinkage), n the number of users a pair shares.
    binarize : bool
        Learn from presence (played or not) instead of play counts.
    log_scaling : bool
        With ``binarize=False``, learn from log(1 + plays) so a few heavy listeners do not dominate.

    Attributes
    ----------
    similarity_ : scipy.sparse.csr_matrix, shape (n_items, n_items), float32
        Row i holds item i's neighbours and their similarities; the diagonal is empty.

    Examples
    --------
    >>> model = ItemKNN(similarity="cosine", neighbours=200, shrinkage=5).fit(user_items)
    >>> ids, scores = model.recommend(0, n=10)
    >>> model.similar_items(42, n=5)
    """

    kind = "item_knn"

    def __init__(
        self,
        similarity: str = "cosine",
        neighbours: int = 200,
        shrinkage: float = 5.0,
        binarize: bool = True,
        log_scaling: bool = False,
    ):
        super().__init__(similarity, neighbours, shrinkage, binarize, log_scaling)

    def _fit(self, user_items: sp.csr_matrix, items: pd.DataFrame | None, callback: FitCallback | None) -> None:
        self.user_items_ = user_items
        item_vectors = self._weigh(self.user_items_).T.tocsr()
        similarities = pairwise_similarity(item_vectors, item_vectors, self.similarity, self.shrinkage)
        self.similarity_ = top_neighbours(similarities, self.neighbours, exclude_self=True)

    def score(self, users: np.ndarray) -> np.ndarray:
        return (self._weigh(self.user_items_[users]) @ self.similarity_).toarray()

    def score_history(self, items: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        history = self._weigh(history_row(items, weights, self.n_items))
        return (history @ self.similarity_).toarray().ravel()

    def _similar_items(self, item: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The item's neighbours, most similar first: at most ``neighbours`` of them."""
        row = self.similarity_[item]
        order = np.lexsort((row.indices, -row.data))[:n]
        return row.indices[order], row.data[order]

    def _contributions(self, user: int, item: int) -> tuple[np.ndarray, np.ndarray]:
        """Each played item's share of the score, weight x similarity; the shares sum to the score."""
        history = self._weigh(self.user_items_[user])
        similarities = self.similarity_[history.indices][:, [item]].toarray().ravel()
        return history.indices, history.data * similarities


class UserKNN(_Neighbourhood):
    """User-based k-nearest neighbours: a user's score for an item is the sum, over their most
    similar users, of similarity times that neighbour's weight for the item (Herlocker et al. 1999).

    Parameters
    ----------
    similarity : {"cosine", "pearson", "euclidean"}
        How two users, as vectors over items, are compared (see the module docstring).
    neighbours : int
        How many most similar users each user keeps.
    shrinkage : float
        Similarities are multiplied by n / (n + shrinkage), n the number of items a pair shares.
    binarize : bool
        Learn from presence (played or not) instead of play counts.
    log_scaling : bool
        With ``binarize=False``, learn from log(1 + plays).

    Attributes
    ----------
    similarity_ : scipy.sparse.csr_matrix, shape (n_users, n_users), float32
        Row u holds user u's neighbours and their similarities; the diagonal is empty.

    Examples
    --------
    >>> model = UserKNN(neighbours=50).fit(user_items)
    >>> ids, scores = model.recommend(0, n=10)
    >>> ids, scores = model.recommend_for_history([3, 17, 256])
    """

    kind = "user_knn"

    def __init__(
        self,
        similarity: str = "cosine",
        neighbours: int = 50,
        shrinkage: float = 10.0,
        binarize: bool = True,
        log_scaling: bool = False,
    ):
        super().__init__(similarity, neighbours, shrinkage, binarize, log_scaling)

    def _fit(self, user_items: sp.csr_matrix, items: pd.DataFrame | None, callback: FitCallback | None) -> None:
        self.user_items_ = user_items
        users = self._weigh(self.user_items_)
        similarities = pairwise_similarity(users, users, self.similarity, self.shrinkage)
        self.similarity_ = top_neighbours(similarities, self.neighbours, exclude_self=True)

    def score(self, users: np.ndarray) -> np.ndarray:
        return (self.similarity_[users] @ self._weigh(self.user_items_)).toarray()

    def score_history(self, items: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Finds the new user's neighbours among the fitted users, as ``fit`` would have."""
        user_items = self._weigh(self.user_items_)
        history = self._weigh(history_row(items, weights, self.n_items))
        if self.similarity == "pearson" and np.unique(history.data).size < 2:
            raise NotSupportedError(
                "pearson user_knn needs a history with unequal weights: centred on their "
                "mean, equal weights are all 0 and resemble no user"
            )
        similarities = pairwise_similarity(history, user_items, self.similarity, self.shrinkage)
        return (top_neighbours(similarities, self.neighbours) @ user_items).toarray().ravel()

    def _similar_items(self, item: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotSupportedError("user_knn compares users, not items; item_knn or ease can find similar items")

    def _contributions(self, user: int, item: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotSupportedError(
            "user_knn scores an item through similar users' plays, not through the user's "
            "own items, so its scores do not split into history-item contributions"
        )
