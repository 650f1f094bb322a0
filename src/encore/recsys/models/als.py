"""Alternating least squares for implicit feedback (Hu, Koren & Volinsky 2008), in torch.

Every interaction weight ``w`` becomes a preference ``p = [w > 0]`` and a confidence
``c = 1 + alpha * s(w)``, with ``s(w) = log1p(w)`` when ``log_scaling`` (so that a play count of
10,000 does not drown everything else) and ``s(w) = w`` otherwise. ALS minimises

    sum_ui c_ui (p_ui - x_u . y_i)^2 + regularization * (sum_u |x_u|^2 + sum_i |y_i|^2)

over user factors ``x_u`` and item factors ``y_i``, alternately solving every user's and every
item's regularised least-squares system ``(Y^T C_u Y + reg I) x_u = Y^T C_u p_u``.

With ``frequency_scaling`` ``nu > 0`` the penalty of each user and item grows with how much it was
played, the frequency-scaled regularization that Rendle et al. ("Revisiting the performance of iALS
on item recommendation benchmarks", RecSys 2022) found a well-tuned iALS needs: row ``r`` is
penalised ``reg * (t_r / mean t)^nu``, ``t_r = sum_j c_rj`` the row's total confidence (every
unplayed cell counting 1), so ``nu = 0`` is the plain objective above. What it gained on HetRec is
in ``benchmarks/RESULTS.md``.

The solver is the conjugate-gradient one of Takács et al. 2011, as ``implicit`` runs it: each
half-step starts from the current factors and takes ``cg_steps`` CG iterations, using
``Y^T C_u Y = Y^T Y + Y^T (C_u - I) Y`` so that only the interactions cost anything beyond the
shared Gram matrix. Unlike ``implicit``'s per-user loop, every user's system advances at once: the
operator is applied to all of them with two sparse kernels over the interaction pattern,
``torch.sparse.sampled_addmm`` for the dot product ``x_u . y_i`` of every interaction and a sparse
``torch.addmm`` to add the weighted ``y_i`` back onto the dense product with the Gram matrix; the
same code runs on a GPU (``device="cuda"``). The kernels run in place and in cache-sized column
blocks (``_Interactions``), much faster than gathering ``Y[items]`` and scattering with
``index_add_`` (times against ``implicit``'s in ``benchmarks/RESULTS.md``).

A catalogue of ``ann_min_items`` items or more gets an approximate-search index of its item factors
(``encore.recsys.models.ann``), built at the end of ``fit`` (or by ``save`` when the factors came from
elsewhere) and saved beside the factors. A single user's ``recommend`` then asks the index for
candidates and scores only those exactly. Below the threshold a user's top items are exact, found by
``encore.recsys.models.exact.ExactTopK``: a first pass (in bfloat16 where the CPU multiplies it in hardware)
whose rounding error is bounded, then exact scores of the few items it cannot rule out; one user and a
batch of users get the same answer.

Example
-------
>>> import scipy.sparse as sp
>>> from encore.recsys.models.als import ALS
>>> plays = sp.random(100, 50, density=0.1, format="csr", random_state=0) * 10
>>> model = ALS(factors=8, iterations=5).fit(plays)
>>> ids, scores = model.recommend(0, n=5)
>>> similar, cosines = model.similar_items(3, n=5)
"""

import warnings

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse as sp
import torch

from encore.recsys.metrics import played
from encore.recsys.models.ann import IndexFileError, ItemIndex
from encore.recsys.models.base import FitCallback, Recommender
from encore.recsys.models.exact import ExactTopK

# Candidates one approximate search may fetch: a user whose history would need more (every seen item
# may come back and be dropped) is scored exactly, which then costs about as much as the search.
MAX_CANDIDATES = 2000


class ALS(Recommender):
    """Implicit-feedback matrix factorisation fitted by alternating least squares with CG.

    Parameters
    ----------
    factors : int
        Length of each user's and item's latent vector.
    regularization : float
        L2 penalty on every factor vector (on the average one when ``frequency_scaling`` is set).
    alpha : float
        Confidence per unit of (scaled) weight: ``c = 1 + alpha * s(w)``.
    iterations : int
        ALS sweeps, each one user half-step and one item half-step.
    log_scaling : bool
        Scale weights with ``log1p(w)`` before they become confidences.
    frequency_scaling : float
        Exponent ``nu`` of the penalty's growth with each row's total confidence; 0 keeps it constant.
    cg_steps : int
        Conjugate-gradient iterations per half-step, warm-started from the current factors.
    random_state : int
        Seed of the initial factors; the same seed gives the same model on the same device.
    device : str
        Torch device to fit on, ``"cpu"`` or ``"cuda"``.
    ann_min_items : int
        Catalogue size from which an approximate-search index is built and single-user
        recommendations come from it; below it every item is scored.
    ann_search_width : int
        Candidates the index explores per search (HNSW's ``efSearch``): wider is slower and finds
        more of the exact top items. Read at query time, so a loaded model can be given another.

    Attributes
    ----------
    user_factors_ : ndarray of shape (n_users, factors), float32
    item_factors_ : ndarray of shape (n_items, factors), float32
    user_items_ : csr_matrix, the matrix the model was fitted on
    mean_user_confidence_ : float, the users' average total confidence, which scales a folded-in
        user's penalty as training scaled theirs
    item_index_ : ItemIndex, only for a catalogue of ``ann_min_items`` items or more
    """

    kind = "als"
    state_format = 2  # 2: mean_user_confidence_ (frequency-scaled penalty)

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.01,
        alpha: float = 1.0,
        iterations: int = 15,
        log_scaling: bool = False,
        frequency_scaling: float = 0.0,
        cg_steps: int = 3,
        random_state: int = 0,
        device: str = "cpu",
        ann_min_items: int = 100_000,
        ann_search_width: int = 128,
    ):
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.log_scaling = log_scaling
        self.frequency_scaling = frequency_scaling
        self.cg_steps = cg_steps
        self.random_state = random_state
        self.device = device
        self.ann_min_items = ann_min_items
        self.ann_search_width = ann_search_width

    def _fit(self, user_items: sp.csr_matrix, items: pd.DataFrame | None, callback: FitCallback | None) -> None:
        """Factorise ``user_items``; each ``callback`` sees ``user_factors_`` and ``item_factors_`` set to
        copies of that sweep's factors."""
        excess = self._excess_matrix(user_items)
        device = torch.device(self.device)
        by_user = _Interactions(excess, self.factors, device)
        by_item = _Interactions(excess.T.tocsr(), self.factors, device)
        user_penalty, item_penalty = (torch.from_numpy(penalty).to(device) for penalty in self._penalties(excess))
        user_factors, item_factors = (initial.to(device) for initial in self._initial_factors(*excess.shape))
        for iteration in range(self.iterations):
            _least_squares_cg(by_user, user_factors, item_factors, user_penalty, self.cg_steps)
            _least_squares_cg(by_item, item_factors, user_factors, item_penalty, self.cg_steps)
            if callback is not None:
                self._keep(user_factors, item_factors)
                callback(iteration, self)
        self._keep(user_factors, item_factors)
        self.index_items()

    def index_items(self) -> None:
        """Build ``item_index_`` from the current item factors if the catalogue is large enough, and
        drop any index of earlier factors otherwise."""
        vars(self).pop("item_index_", None)
        if self.n_items >= self.ann_min_items:
            self.item_index_ = ItemIndex.build(self.item_factors_)

    def _recommend(self, user, n: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        """Below ``ann_min_items`` items, every user's top ``n`` is exact, found through ``ExactTopK``
        (a bounded first pass, then exact float64 scores of the few candidates), or by ranking every item
        where it cannot serve. For one user of a model with ``item_index_``, the index proposes ``n``
        candidates plus one per item the user played (each may come back and be excluded), and those are
        scored exactly; an array of such users is scored exactly over every item, so evaluation gets exact
        answers.
        """
        index = getattr(self, "item_index_", None)
        if index is None:
            users = np.atleast_1d(np.asarray(user))
            excluded = played(self.user_items_, users) if exclude_seen else None
            found = self._exact_top_k().top_k(self.user_factors_[users], n, excluded)
            if found is None:
                return super()._recommend(user, n, exclude_seen)
            ids, scores = found
            return (ids[0], scores[0]) if np.ndim(user) == 0 else (ids, scores)
        if np.ndim(user) != 0:
            return super()._recommend(user, n, exclude_seen)
        row = self.user_items_[user]
        seen = row.indices[row.data != 0] if exclude_seen else np.empty(0, dtype=np.int64)
        if n + len(seen) > MAX_CANDIDATES:
            return super()._recommend(user, n, exclude_seen)
        candidates = index.search(self.user_factors_[user], n + len(seen), self.ann_search_width)
        candidates = np.setdiff1d(candidates, seen)
        if not len(candidates):
            return np.empty(0, dtype=np.int64), np.empty(0)
        scores = (self.item_factors_[candidates] @ self.user_factors_[user]).astype(np.float64)[None, :]
        ids, best = self._best(scores, n)
        return candidates[ids[0]], best[0]

    def _exact_top_k(self) -> ExactTopK:
        """Built from the item factors on first use, and again once a fit has replaced them."""
        search = vars(self).get("_exact")
        if search is None or search.item_factors is not self.item_factors_:
            search = self._exact = ExactTopK(self.item_factors_)
        return search

    def save(self, folder) -> None:
        if self.n_items >= self.ann_min_items and not hasattr(self, "item_index_"):
            self.index_items()  # factors set from outside a fit, as a distributed fit sets them
        super().save(folder)

    @classmethod
    def load(cls, folder) -> "ALS":
        model = super().load(folder)
        index = getattr(model, "item_index_", None)
        if index is not None and index.shape != model.item_factors_.shape:
            raise IndexFileError(
                f"{folder}: the index covers {index.shape[0]} x {index.shape[1]} item factors, "
                f"the model has {model.item_factors_.shape[0]} x {model.item_factors_.shape[1]}"
            )
        return model

    def score(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors_[users] @ self.item_factors_.T

    def score_history(self, items: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Fold in an unseen user: the exact least-squares factors for ``items`` against the fixed item
        factors (``implicit``'s ``recalculate_user``), scored on every item. ``weights`` default to 1."""
        return self.item_factors_ @ self._fold_in(items, weights)

    def _similar_items(self, item: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` items whose factors have the highest cosine similarity to ``item``'s, itself excluded."""
        norms = np.linalg.norm(self.item_factors_, axis=1)
        # An item with all-zero factors (never played) is similar to nothing, not NaN.
        cosine = (self.item_factors_ @ self.item_factors_[item]) / np.maximum(norms * norms[item], 1e-12)
        cosine = cosine.astype(np.float64)[None, :]
        cosine[0, item] = -np.inf
        ids, best = self._best(cosine, n)
        return ids[0], best[0]

    def _contributions(self, user: int, item: int) -> tuple[np.ndarray, np.ndarray]:
        """How much each item ``user`` played contributes to ``item``'s score (Hu et al. 2008, section 5).

        With ``W_u = (Y^T C_u Y + reg I)^-1`` the folded-in score is ``sum_j c_uj y_item^T W_u y_j``, one
        term per played item ``j``. The terms sum to ``score_history`` of the user's history at ``item``,
        which differs from ``score`` only by what the training's CG steps left unsolved.
        """
        row = self.user_items_[user]
        played = row.data > 0
        history, confidence = row.indices[played], 1 + self._excess_confidence(row.data[played])
        cholesky = scipy.linalg.cho_factor(self._user_system(history, confidence))
        weighted_item = scipy.linalg.cho_solve(cholesky, self.item_factors_[item].astype(np.float64))
        return history, confidence * (self.item_factors_[history] @ weighted_item)

    def _excess_matrix(self, user_items: sp.csr_matrix) -> sp.csr_matrix:
        """Keep ``user_items_`` and ``mean_user_confidence_``; return the pattern of positive weights
        holding ``c - 1``."""
        self.user_items_ = sp.csr_matrix(user_items, dtype=np.float32, copy=True)
        self.user_items_.sum_duplicates()
        excess = self.user_items_.copy()
        excess.data[excess.data < 0] = 0
        excess.eliminate_zeros()
        excess.data = self._excess_confidence(excess.data)
        self.mean_user_confidence_ = float(excess.shape[1] + excess.data.sum(dtype=np.float64) / excess.shape[0])
        return excess

    def _penalties(self, excess: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """The L2 penalty of every user and of every item, float32."""
        user_totals = excess.shape[1] + np.asarray(excess.sum(axis=1, dtype=np.float64)).ravel()
        item_totals = excess.shape[0] + np.asarray(excess.sum(axis=0, dtype=np.float64)).ravel()
        # The users' mean is the one fold-in scales a new user's penalty by.
        user_penalty = self._penalty(user_totals, self.mean_user_confidence_)
        return user_penalty.astype(np.float32), self._penalty(item_totals, item_totals.mean()).astype(np.float32)

    def _penalty(self, totals: np.ndarray, mean: float) -> np.ndarray:
        return self.regularization * (totals / mean) ** self.frequency_scaling

    def _initial_factors(self, n_users: int, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Drawn on the CPU so that a seed gives the same start on every device and every worker.
        generator = torch.Generator().manual_seed(self.random_state)
        users = torch.rand(n_users, self.factors, generator=generator) * 0.01
        items = torch.rand(n_items, self.factors, generator=generator) * 0.01
        return users, items

    def _excess_confidence(self, weights: np.ndarray) -> np.ndarray:
        """``c - 1 = alpha * s(w)``, what an interaction adds to the confidence every item starts with."""
        weights = np.asarray(weights, dtype=np.float32)
        return (self.alpha * (np.log1p(weights) if self.log_scaling else weights)).astype(np.float32)

    def _user_system(self, items: np.ndarray, confidence: np.ndarray) -> np.ndarray:
        """``Y^T C_u Y + reg I`` for a user with these items and confidences, in float64."""
        factors = self.item_factors_.astype(np.float64)
        played = factors[items]
        system = factors.T @ factors + (played.T * (confidence - 1)) @ played
        total = len(factors) + (confidence - 1).sum()
        system[np.diag_indices_from(system)] += self._penalty(total, self.mean_user_confidence_)
        return system

    def _fold_in(self, items: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        weights = np.ones(len(items), dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
        # A repeated item counts once with its weights summed, as it would in the training matrix.
        items, position = np.unique(items, return_inverse=True)
        weights = np.bincount(position, weights=weights, minlength=len(items))
        items, weights = items[weights > 0], weights[weights > 0]
        confidence = 1 + self._excess_confidence(weights)
        rhs = self.item_factors_[items].T.astype(np.float64) @ confidence
        return scipy.linalg.solve(self._user_system(items, confidence), rhs, assume_a="pos").astype(np.float32)

    def _keep(self, users: torch.Tensor, items: torch.Tensor) -> None:
        vars(self).pop("item_index_", None)  # an index of earlier factors would answer for them
        self.user_factors_ = users.cpu().numpy().copy()
        self.item_factors_ = items.cpu().numpy().copy()


# Bytes of factors one column block of the interactions may gather from (see _Interactions).
BLOCK_BYTES = 8 * 2**20


class _Interactions:
    """The interaction pattern of one half-step (rows solved for, columns held fixed) with the two
    kernels CG needs, split into column blocks so that each block gathers from at most
    ``BLOCK_BYTES`` of the fixed factors. Gathering rows at random from a factor matrix larger than
    the cache is what made the kernels slow (``benchmarks/RESULTS.md``, "ALS iteration time").

    ``excess`` holds ``e = c - 1`` per interaction and ``values`` is a per-interaction buffer that
    every product overwrites in place; both are in block order, and each block's sparse tensor
    views its slice of ``values``.
    """

    def __init__(self, matrix: sp.csr_matrix, factors: int, device: torch.device):
        n_blocks = max(1, -(-matrix.shape[1] * factors * 4 // BLOCK_BYTES))
        bounds = np.linspace(0, matrix.shape[1], n_blocks + 1).astype(np.int64)
        parts = [matrix[:, start:stop].tocsr() for start, stop in zip(bounds[:-1], bounds[1:])]
        self.excess = torch.from_numpy(np.concatenate([part.data for part in parts])).to(device)
        # Zeros, not empty: sampled_addmm scales the old values by beta=0, and 0 * NaN garbage is NaN.
        self.values = torch.zeros_like(self.excess)
        # 32-bit indices where they fit: the kernels are memory-bound and run about a third faster.
        index = np.int32 if matrix.nnz < np.iinfo(np.int32).max else np.int64
        self.blocks = []
        offset = 0
        for part, start, stop in zip(parts, bounds[:-1], bounds[1:]):
            crow = torch.from_numpy(part.indptr.astype(index)).to(device)
            col = torch.from_numpy(part.indices.astype(index)).to(device)
            with warnings.catch_warnings():
                # torch calls its CSR support beta on every first use; the two kernels used here are stable.
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
                tensor = torch.sparse_csr_tensor(
                    crow, col, self.values[offset : offset + part.nnz], part.shape, check_invariants=False
                )
            self.blocks.append((tensor, slice(int(start), int(stop))))
            offset += part.nnz

    def dots(self, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """``values[ui] = rows_u . columns_i`` for every interaction (u, i); returns ``values``."""
        for tensor, block in self.blocks:
            # out=input: computed in place, without the copy of the pattern that costs as much as the kernel.
            torch.sparse.sampled_addmm(tensor, rows, columns[block].T, beta=0.0, out=tensor)
        return self.values

    def weighted_sum(self, columns: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out[u] += sum_i values[ui] columns_i`` for every row u; returns ``out``."""
        for tensor, block in self.blocks:
            torch.addmm(out, tensor, columns[block], out=out)
        return out


def _least_squares_cg(
    interactions: _Interactions, X: torch.Tensor, Y: torch.Tensor, penalty: torch.Tensor, steps: int
) -> None:
    """Update every row ``x_u`` of ``X`` in place by ``steps`` CG iterations on its system
    ``(Y^T Y + reg_u I + Y^T E_u Y) x_u = Y^T (1 + e_u)``, ``e_ui = c_ui - 1`` the interactions'
    excess and ``reg_u = penalty[u]``.

    The rows are independent systems, so the CG scalars are per row; a row whose residual has
    vanished stops moving, as ``implicit`` stops iterating that user.
    """
    gram = Y.T @ Y
    penalty = penalty[:, None]
    e = interactions.excess

    # r = b - A x = sum_i (1 + e_ui - e_ui (x_u . y_i)) y_i - (Y^T Y + reg_u I) x_u
    values = interactions.dots(X, Y)
    torch.addcmul(e + 1, e, values, value=-1, out=values)
    residual = interactions.weighted_sum(Y, (X @ gram).addcmul_(penalty, X).neg_())
    direction = residual.clone()
    product = torch.empty_like(X)
    rs_old = torch.einsum("ij,ij->i", residual, residual)
    for _ in range(steps):
        interactions.dots(direction, Y).mul_(e)
        interactions.weighted_sum(Y, torch.mm(direction, gram, out=product).addcmul_(penalty, direction))
        live = rs_old > 1e-20
        step = torch.where(live, rs_old / torch.einsum("ij,ij->i", direction, product).where(live, 1.0), 0.0)
        X.addcmul_(step[:, None], direction)
        residual.addcmul_(step[:, None], product, value=-1)
        rs_new = torch.einsum("ij,ij->i", residual, residual)
        direction.mul_(torch.where(live, rs_new / rs_old.where(live, 1.0), 0.0)[:, None]).add_(residual)
        rs_old = rs_new
