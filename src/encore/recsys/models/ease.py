"""EASE, the embarrassingly shallow autoencoder (Steck 2019): one item-item weight matrix,
learned in closed form.

With X the users x items matrix and P = (XᵀX + λI)⁻¹, the weights are B = I - P·diagMat(1/diag(P)),
i.e. B_ij = -P_ij / P_jj off the diagonal and 0 on it (an item may not predict itself). A user's
scores are their row of X times B.

Only items someone played take part in the inverse: an item nobody played has a zero row and
column in XᵀX, so its row and column of B are exactly 0 and leaving it out changes nothing but
the cost, which grows with the cube of the item count.

The inverse is computed in float32, through a Cholesky factorisation (LAPACK potrf/potri, half
the work of a general inverse), in half the memory of float64. λ keeps XᵀX + λI well conditioned
(condition number (e_max + λ) / λ, e_max the largest eigenvalue of XᵀX), so float32 loses nothing
that matters (the comparison with float64 is in ``benchmarks/RESULTS.md``).
"""

import numpy as np
import pandas as pd
import scipy.linalg.lapack as lapack
import scipy.sparse as sp

from encore.recsys.models.base import FitCallback, Recommender
from encore.recsys.models.knn import check_weighting, history_row, weigh

# Bytes per item pair while fitting, at most: the dense float32 Gram matrix (inverted in place into
# the weights kept) and the sparse product it is made dense from.
FIT_BYTES_PER_PAIR = 4 + 4


def _inverse_spd(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix, in place, through its Cholesky factor.

    LAPACK's potrf/potri take about half the time of a general inverse or a solve against the
    identity, and work in the caller's buffer: handing them the (Fortran-ordered) transpose of
    a C-ordered symmetric matrix spares f2py a copy.
    """
    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (matrix,))
    factor, info = potrf(matrix.T, lower=True, overwrite_a=True, clean=False)
    if info != 0:
        raise np.linalg.LinAlgError(f"Cholesky factorisation failed (LAPACK info {info})")
    inverse, info = potri(factor, lower=True, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"inverse from the Cholesky factor failed (LAPACK info {info})")
    # potri fills the lower triangle only; mirror it a block of rows at a time to stay in place.
    block = 1024
    for start in range(0, len(inverse), block):
        stop = min(start + block, len(inverse))
        diagonal = inverse[start:stop, start:stop]
        diagonal[...] = np.tril(diagonal) + np.tril(diagonal, -1).T
        inverse[start:stop, stop:] = inverse[stop:, start:stop].T
    return inverse.T


class EASE(Recommender):
    """Embarrassingly shallow autoencoder: a dense item-item model with a closed-form fit.

    Parameters
    ----------
    regularization : float
        λ, added to the diagonal of XᵀX; larger values shrink the weights of rare items.
    max_items : int
        Refuse to fit a catalogue larger than this: memory grows with its square and time with
        its cube (20,000 items take about 3.2 GB while fitting).
    binarize : bool
        Learn from presence (played or not) instead of play counts, as in the paper.
    log_scaling : bool
        With ``binarize=False``, learn from log(1 + plays).

    Attributes
    ----------
    played_ : numpy.ndarray of int
        The items someone played in training, ascending; every other row and column of B is 0.
    weights_ : numpy.ndarray, shape (len(played_), len(played_)), float32
        B among the played items: ``weights_[a, b]`` is how much playing item ``played_[a]`` adds to
        item ``played_[b]``'s score. Kept without the zero rows and columns, which saves memory and
        artifact size in proportion to the items nobody played.

    Examples
    --------
    >>> model = EASE(regularization=150).fit(user_items)
    >>> ids, scores = model.recommend(0, n=10)
    >>> model.explain(0, ids[0], n=3)
    """

    kind = "ease"
    state_format = 2  # 2: weights_ among played_ items only

    def __init__(
        self, regularization: float = 150.0, max_items: int = 20000, binarize: bool = True, log_scaling: bool = False
    ):
        if regularization <= 0:
            raise ValueError(f"regularization must be positive, not {regularization}")
        check_weighting(binarize, log_scaling)
        self.regularization = regularization
        self.max_items = max_items
        self.binarize = binarize
        self.log_scaling = log_scaling

    def _weigh(self, user_items: sp.csr_matrix) -> sp.csr_matrix:
        return weigh(user_items, self.binarize, self.log_scaling)

    def _fit(self, user_items: sp.csr_matrix, items: pd.DataFrame | None, callback: FitCallback | None) -> None:
        n_items = user_items.shape[1]
        if n_items > self.max_items:
            raise ValueError(
                f"EASE over {n_items:,} items needs a dense {n_items:,} x {n_items:,} item-item matrix, about "
                f"{FIT_BYTES_PER_PAIR * n_items**2 / 1e9:.1f} GB while fitting, and max_items is "
                f"{self.max_items:,}: raise max_items if the memory is there, or drop rare items"
            )
        weighted = self._weigh(user_items).tocsc()
        played = np.flatnonzero(np.diff(weighted.indptr))
        columns = weighted[:, played]
        gram = (columns.T @ columns).toarray()
        gram[np.diag_indices_from(gram)] += self.regularization
        precision = _inverse_spd(gram)
        precision /= -np.diag(precision).copy()
        np.fill_diagonal(precision, 0.0)
        self.played_, self.weights_ = played, precision
        self.user_items_ = user_items

    def _block_scores(self, histories: sp.csr_matrix) -> np.ndarray:
        """Scores of every item for weighted history rows: B applied among the played items, 0 elsewhere."""
        scores = np.zeros((histories.shape[0], self.n_items), dtype=np.float32)
        scores[:, self.played_] = histories[:, self.played_] @ self.weights_
        return scores

    def _position(self, item: int) -> int | None:
        """``item``'s row in ``weights_``, or None when nobody played it in training."""
        position = int(np.searchsorted(self.played_, item))
        return position if position < len(self.played_) and self.played_[position] == item else None

    def score(self, users: np.ndarray) -> np.ndarray:
        return self._block_scores(self._weigh(self.user_items_[users]))

    def score_history(self, items: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return self._block_scores(self._weigh(history_row(items, weights, self.n_items))).ravel()

    def _similar_items(self, item: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Items by B's row of ``item``: exactly what someone who played only ``item`` would be
        recommended, so the two answers agree."""
        scores = np.zeros((1, self.n_items))
        position = self._position(item)
        if position is not None:
            scores[0, self.played_] = self.weights_[position]
        scores[0, item] = -np.inf
        ids, best = self._best(scores, n)
        return ids[0], best[0]

    def _contributions(self, user: int, item: int) -> tuple[np.ndarray, np.ndarray]:
        """Each played item's share of the score, weight x B[played, item]; the shares sum to the score."""
        history = self._weigh(self.user_items_[user])
        position = self._position(item)
        if position is None:
            column = np.zeros(len(history.indices), dtype=np.float32)
        else:
            column = self.weights_[np.searchsorted(self.played_, history.indices), position]
        return history.indices, history.data * column
