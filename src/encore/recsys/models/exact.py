"""Exact top-k by inner product over item factors, found by a cheap first pass whose error is bounded.

Recommending for many users of a factor model is a matrix product and a top-k of each row. For ALS on
HetRec that is 4.5 MFLOP and a selection among 17,632 scores per user: most of a bulk request's time.
Two things make it cheaper here, neither changing an answer:

- **Selection by stripes.** Item ``i`` lies in stripe ``i mod S`` of ``S = ceil(n_items / GROUPS)``
  stripes, so every stripe's best score is one reduction over the rows of a (GROUPS, S) view of the
  scores. The k best stripes hold k distinct items; the lowest exact score among those k is a floor under
  the exact k-th. Only the stripes whose best score, plus its error bound, reaches that floor are read item
  by item, and only their items within their bound of it (some dozens on HetRec) are scored exactly, in
  float64, and ranked (ties to the lower index).
- **A bfloat16 product** where the CPU computes one in hardware (AMX, AVX512-BF16): several times faster
  than float32 on a batch ("Bulk" in benchmarks/RESULTS.md), and its rounding is bounded. With ``u`` the
  unit roundoff of the first pass's inputs and output (``2^-8`` for bfloat16, 0 for float32 inputs and
  output) and ``g = d 2^-24 / (1 - d 2^-24)`` for float32 accumulation over ``d`` factors,

      |first_pass(q . v) - q . v| <= ((2u + u^2 + u)(1 + g) + g) sum_j |q_j v_j| <= C |q| |v|

  (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., section 3.1), plus ``d 2^-125`` for
  subnormals that the hardware flushes to zero. ``C`` is taken a quarter larger, for the float64 arithmetic
  of the floor. So the first pass may order items wrongly but never hides one that belongs in the top k.
"""

from dataclasses import dataclass

import numpy as np
import torch

# Items a stripe holds: more make the reduction cheaper and each candidate stripe dearer to read.
GROUPS = 32
# Candidate stripes per query, on average over a batch, beyond which the caller scores every item: scores
# too close together for the first pass's bound to part them leave most stripes as candidates.
MAX_STRIPES_PER_QUERY = 64
# Queries from which a bfloat16 first pass beats float32 (one query is a matrix-vector product, which
# oneDNN does not run faster in bfloat16; measured in benchmarks/RESULTS.md, "Bulk").
BFLOAT16_MIN_QUERIES = 4


@dataclass(frozen=True)
class _Precision:
    dtype: torch.dtype
    bits: torch.dtype  # the integer type of the same width, as which numpy reads the scores
    unit_roundoff: float  # of the first pass's inputs and output


FLOAT32 = _Precision(torch.float32, torch.int32, 0.0)
BFLOAT16 = _Precision(torch.bfloat16, torch.int16, 2.0**-8)


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware; elsewhere torch emulates it, slower than
    float32."""
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


class ExactTopK:
    """The exact top-k inner products of queries with ``item_factors`` (n_items x factors), built once per
    set of item factors: it holds a copy of them, padded to whole stripes, in each first pass's precision."""

    def __init__(self, item_factors: np.ndarray, bfloat16: bool | None = None):
        self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        n_items, factors = self.item_factors.shape
        self.stripes = -(-n_items // GROUPS)
        self.batch_precision = BFLOAT16 if (native_bfloat16() if bfloat16 is None else bfloat16) else FLOAT32
        self._padded = {}
        for precision in {FLOAT32, self.batch_precision}:
            padded = torch.zeros(GROUPS * self.stripes, factors, dtype=precision.dtype)
            padded[:n_items] = torch.from_numpy(self.item_factors).to(precision.dtype)
            self._padded[precision] = padded
        self._item_norms = np.linalg.norm(self.item_factors.astype(np.float64), axis=1)
        padded_norms = np.zeros(GROUPS * self.stripes)
        padded_norms[:n_items] = self._item_norms
        self._stripe_norms = padded_norms.reshape(GROUPS, self.stripes).max(axis=0)

    def top_k(
        self, queries: np.ndarray, k: int, excluded: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """``(ids, scores)``, each of shape (len(queries), k): every query's k items of highest inner
        product, computed exactly in float64 from float32 ``queries``, best first, ties to the lower index,
        none of the ``(query row, item)`` pairs ``excluded``. None where the stripes cannot give them
        cheaply: fewer than k stripes, a query with fewer than k items scoring 0 or more, or scores too
        close together for the bound; the caller then ranks every item."""
        n_items, n_queries = len(self.item_factors), len(queries)
        if not 1 <= k <= self.stripes or n_queries == 0:
            return None
        precision = self.batch_precision if n_queries >= BFLOAT16_MIN_QUERIES else FLOAT32
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if precision is FLOAT32:  # numpy's product of one query is faster than torch's
            scores = torch.from_numpy(queries @ self._padded[precision].numpy().T)
        else:
            scores = torch.from_numpy(queries).to(precision.dtype) @ self._padded[precision].T
        scores[:, n_items:] = -torch.inf  # the padding is no item
        if excluded is not None:
            scores[torch.from_numpy(excluded[0]), torch.from_numpy(excluded[1])] = -torch.inf
        # numpy reads the scores' bits as integers of their width (it has no bfloat16); a score that is not
        # negative orders as its bits do, so a stripe's largest bits are its best score where that is >= 0.
        bits = scores.view(precision.bits).numpy()
        stripe_bits = bits.reshape(n_queries, GROUPS, self.stripes).max(axis=1)
        stripe_best = np.where(stripe_bits >= 0, _as_float32(stripe_bits), 0.0)  # 0 is over a negative stripe
        picked = np.argpartition(-stripe_best, k - 1, axis=1)[:, :k]
        if (np.take_along_axis(stripe_bits, picked, axis=1) < 0).any():
            return None
        row_starts = np.arange(n_queries) * bits.shape[1]  # where each query's scores start in bits.take
        members = picked[:, :, None] + self.stripes * np.arange(GROUPS)  # (query, picked stripe, group)
        best_members = bits.take(row_starts[:, None, None] + members).argmax(axis=2)
        holders = np.take_along_axis(members, best_members[:, :, None], axis=2)[:, :, 0]
        exact_queries = queries.astype(np.float64)
        floor = np.einsum("ij,ikj->ik", exact_queries, self.item_factors[holders].astype(np.float64)).min(axis=1)
        slack = _bound(precision, queries.shape[1]) * np.linalg.norm(exact_queries, axis=1)  # x item norm
        subnormal = queries.shape[1] * 2.0**-125
        reach = stripe_best + slack[:, None] * self._stripe_norms + subnormal
        hit_queries, hit_stripes = np.nonzero(reach >= floor[:, None])
        if len(hit_queries) > MAX_STRIPES_PER_QUERY * n_queries:
            return None
        rows = hit_queries[:, None]
        columns = hit_stripes[:, None] + self.stripes * np.arange(GROUPS)
        # An excluded item and the padding score -inf, so they are never candidates.
        first_pass = _as_float32(bits.take(row_starts[rows] + columns)).astype(np.float64)
        item_norms = self._item_norms[np.minimum(columns, n_items - 1)]
        candidate = first_pass + slack[rows] * item_norms + subnormal >= floor[rows]
        rows, columns = np.broadcast_to(rows, columns.shape)[candidate], columns[candidate]
        exact = np.einsum("ij,ij->i", exact_queries[rows], self.item_factors[columns].astype(np.float64))
        order = np.lexsort((columns, -exact, rows))
        rows, columns, exact = rows[order], columns[order], exact[order]
        best = np.arange(len(rows)) - np.searchsorted(rows, rows) < k
        return columns[best].reshape(n_queries, k), exact[best].reshape(n_queries, k)


def _bound(precision: _Precision, factors: int) -> float:
    """``C`` of the module's docstring: a first-pass score is within ``C |q| |v|`` of ``q . v``."""
    u, accumulation = precision.unit_roundoff, factors * 2.0**-24 / (1 - factors * 2.0**-24)
    return 1.25 * ((3 * u + u * u) * (1 + accumulation) + accumulation)


def _as_float32(bits: np.ndarray) -> np.ndarray:
    """The float32 values of first-pass scores read as integers: a bfloat16 is the top half of a float32."""
    return (bits.astype(np.int32) << (32 - 8 * bits.itemsize)).view(np.float32)
