"""Ranking metrics for top-N recommendation, and one evaluator for every model.

Definitions, for one user with relevant (held-out) set R and ranked list L cut at k:

- ``precision@k`` = |L ∩ R| / k
- ``recall@k`` = |L ∩ R| / |R|
- ``hitrate@k`` = 1 if L ∩ R is not empty
- ``ndcg@k`` = DCG / IDCG, DCG = Σ_i [L_i ∈ R] / log2(i + 2), IDCG the best DCG for min(k, |R|) hits
- ``map@k`` = Σ_i [L_i ∈ R] · precision@(i+1) / min(k, |R|)

Each is averaged over the users with at least one relevant item. ``coverage@k`` is the share of
the catalogue that appears in at least one user's top k.
"""

import numpy as np
import scipy.sparse as sp
import torch

DEFAULT_KS = (10, 20)
COLD_MAX_LISTENERS = 3  # an item with at most this many training users is a cold-start item


def user_metrics(ranked: np.ndarray, relevant: set[int], k: int) -> dict[str, float]:
    """The metrics of one ranked list (item indices, best first) against one relevant set."""
    if not relevant:
        raise ValueError("a user with no relevant items has no ranking metrics")
    top = ranked[:k]
    hits = np.fromiter((item in relevant for item in top), dtype=bool, count=len(top))
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = discounts[: min(k, len(relevant))].sum()
    precision_at_hits = np.cumsum(hits) / np.arange(1, len(top) + 1)
    return {
        f"precision@{k}": hits.sum() / k,
        f"recall@{k}": hits.sum() / len(relevant),
        f"hitrate@{k}": float(hits.any()),
        f"ndcg@{k}": (hits * discounts[: len(top)]).sum() / ideal,
        f"map@{k}": (precision_at_hits * hits).sum() / min(k, len(relevant)),
    }


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores of each row, best first (ties broken by lower index)."""
    k = min(k, scores.shape[1])
    # torch's selection is four times faster than np.argpartition here, but which of the items tied with a row's
    # k-th score it picks is left to chance. Selecting one more than asked shows the rows where such a tie
    # crosses the k-th place (the extra score equals the k-th), and only those are ranked again over all items.
    selected = min(k + 1, scores.shape[1])
    candidates = torch.topk(torch.from_numpy(np.ascontiguousarray(scores)), selected, dim=1, sorted=False).indices
    candidates = candidates.numpy()
    candidate_scores = np.take_along_axis(scores, candidates, axis=1)
    order = np.lexsort((candidates, -candidate_scores), axis=1)
    ranked = np.take_along_axis(candidates, order, axis=1)
    if selected > k:
        ranked_scores = np.take_along_axis(candidate_scores, order, axis=1)
        for row in np.flatnonzero(ranked_scores[:, k] == ranked_scores[:, k - 1]):
            tied = np.flatnonzero(scores[row] >= ranked_scores[row, k - 1])
            ranked[row, :k] = tied[np.lexsort((tied, -scores[row, tied]))][:k]
    return ranked[:, :k]


def played(user_items: sp.csr_matrix, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``user_items[users].nonzero()``, read from the CSR arrays: building the rows' sub-matrix took a quarter
    of a single user's recommendation."""
    starts = user_items.indptr[users]
    lengths = user_items.indptr[users + 1] - starts
    positions = np.arange(lengths.sum()) + np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    nonzero = user_items.data[positions] != 0
    return np.repeat(np.arange(len(users)), lengths)[nonzero], user_items.indices[positions][nonzero]


def per_user_metrics(
    model, seen: sp.csr_matrix, held_out: sp.csr_matrix, ks=DEFAULT_KS, batch_size: int = 512
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Each metric for every user with held-out items, and the catalogue coverage at each k.

    ``model.score(users)`` gives a (len(users), n_items) array; items in ``seen`` (what the model
    was fitted on) are excluded from each user's ranking so they cannot count as hits or misses.
    """
    seen, held_out = sp.csr_matrix(seen), sp.csr_matrix(held_out)
    if seen.shape != held_out.shape:
        raise ValueError(f"seen {seen.shape} and held-out {held_out.shape} matrices differ in shape")
    users = np.flatnonzero(np.diff(held_out.indptr))
    if len(users) == 0:
        raise ValueError("no user has held-out items to evaluate on")
    k_max = max(ks)
    values: dict[str, list[float]] = {}
    recommended = {k: np.zeros(seen.shape[1], dtype=bool) for k in ks}
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        scores = np.asarray(model.score(batch), dtype=np.float64)
        scores[played(seen, batch)] = -np.inf
        ranked = top_k(scores, k_max)
        for row, user in enumerate(batch):
            relevant = set(held_out.indices[held_out.indptr[user] : held_out.indptr[user + 1]].tolist())
            for k in ks:
                for name, value in user_metrics(ranked[row], relevant, k).items():
                    values.setdefault(name, []).append(value)
        for k in ks:
            recommended[k][ranked[:, :k].ravel()] = True
    coverage = {f"coverage@{k}": float(recommended[k].mean()) for k in ks}
    return {name: np.asarray(v) for name, v in sorted(values.items())}, coverage


def evaluate(model, seen: sp.csr_matrix, held_out: sp.csr_matrix, ks=DEFAULT_KS, batch_size: int = 512) -> dict:
    """Rank the whole catalogue for every user with held-out items and average the metrics."""
    values, coverage = per_user_metrics(model, seen, held_out, ks, batch_size)
    results = {name: float(v.mean()) for name, v in values.items()}
    results.update(coverage)
    results["users"] = int(len(next(iter(values.values()))))
    return results


def bootstrap_interval(
    values: np.ndarray, confidence: float = 0.95, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over users."""
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(resamples, len(values)), replace=True).mean(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def cold_items(seen: sp.csr_matrix, max_listeners: int = COLD_MAX_LISTENERS) -> np.ndarray:
    """The items at most ``max_listeners`` users have in ``seen``, the cold-start items reported apart."""
    return np.flatnonzero(np.asarray((seen > 0).sum(axis=0)).ravel() <= max_listeners)


def restrict_items(held_out: sp.csr_matrix, items: np.ndarray) -> sp.csr_matrix:
    """``held_out`` with only the given item columns kept, e.g. cold-start items."""
    mask = np.zeros(held_out.shape[1], dtype=np.float32)
    mask[items] = 1
    restricted = sp.csr_matrix(held_out.multiply(mask[None, :]))
    restricted.eliminate_zeros()
    return restricted
