import math

import numpy as np
import pytest
import scipy.sparse as sp

from encore.recsys.metrics import evaluate, played, top_k, user_metrics


def test_user_metrics_by_hand():
    # hits at ranks 2 and 4 of 4; three relevant items, one of them never ranked
    metrics = user_metrics(np.array([3, 1, 7, 5]), {1, 5, 9}, k=4)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert metrics["precision@4"] == pytest.approx(0.5)
    assert metrics["recall@4"] == pytest.approx(2 / 3)
    assert metrics["hitrate@4"] == 1.0
    assert metrics["ndcg@4"] == pytest.approx(dcg / idcg)
    assert metrics["map@4"] == pytest.approx((1 / 2 + 2 / 4) / 3)


def test_user_metrics_cut_at_k():
    metrics = user_metrics(np.array([3, 1, 7, 5]), {1, 5, 9}, k=2)
    assert metrics["precision@2"] == pytest.approx(0.5)
    assert metrics["recall@2"] == pytest.approx(1 / 3)
    assert metrics["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert metrics["map@2"] == pytest.approx((1 / 2) / 2)


def test_perfect_and_empty_rankings():
    perfect = user_metrics(np.array([4, 2]), {2, 4}, k=2)
    assert perfect["ndcg@2"] == pytest.approx(1.0) and perfect["map@2"] == pytest.approx(1.0)
    miss = user_metrics(np.array([0, 1]), {2}, k=2)
    assert miss["ndcg@2"] == 0 and miss["hitrate@2"] == 0
    with pytest.raises(ValueError):
        user_metrics(np.array([0]), set(), k=1)


def test_top_k_orders_and_breaks_ties_by_index():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [3.0, 2.0, 1.0, 0.0]])
    assert top_k(scores, 3).tolist() == [[1, 3, 2], [0, 1, 2]]


@pytest.mark.parametrize("k", [1, 3, 10, 39, 40, 50])
def test_top_k_equals_a_full_stable_sort_whatever_the_ties(k):
    """Scores drawn from a few values, so that ties cross the k-th place in most rows; some items excluded."""
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 4, size=(200, 40)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    scores[0] = -np.inf
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    assert (top_k(scores, k) == expected).all()


class FixedScores:
    """Every user ranks items 0, 1, 2, ... in that order."""

    def __init__(self, n_items):
        self.n_items = n_items

    def score(self, users):
        return np.tile(-np.arange(self.n_items, dtype=float), (len(users), 1))


def test_evaluate_excludes_seen_items_and_averages_over_users():
    seen = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]]))
    held_out = sp.csr_matrix(np.array([[0, 1, 0, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]]))
    results = evaluate(FixedScores(5), seen, held_out, ks=(1, 3))
    # user 0: item 0 is seen, so item 1 is ranked first -> hit at rank 1
    # user 1: ranking 0, 1, 2 -> item 3 is missed at k=3; user 2 has nothing held out
    assert results["users"] == 2
    assert results["hitrate@1"] == pytest.approx(0.5)
    assert results["recall@3"] == pytest.approx(0.5)
    assert results["precision@1"] == pytest.approx(0.5)
    assert results["coverage@1"] == pytest.approx(2 / 5)  # items 1 and 0
    assert results["coverage@3"] == pytest.approx(4 / 5)  # items 0..3


def test_evaluate_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate(FixedScores(3), sp.csr_matrix((2, 3)), sp.csr_matrix((2, 4)))


def test_bootstrap_interval_brackets_the_mean():
    from encore.recsys.metrics import bootstrap_interval

    values = np.random.default_rng(0).random(500)
    low, high = bootstrap_interval(values)
    assert low < values.mean() < high
    assert high - low < 0.1
    assert bootstrap_interval(np.full(50, 0.3)) == pytest.approx((0.3, 0.3))


def test_cold_items_have_at_most_so_many_listeners():
    from encore.recsys.metrics import cold_items

    seen = sp.csr_matrix(np.array([[3, 0, 1, 0], [1, 0, 0, 0], [2, 0, 5, 0], [0, 0, 0, 7]]))
    assert cold_items(seen, max_listeners=1).tolist() == [1, 3]
    assert cold_items(seen, max_listeners=2).tolist() == [1, 2, 3]


def test_restrict_items_keeps_only_those_columns():
    from encore.recsys.metrics import restrict_items

    held_out = sp.csr_matrix(np.array([[1, 0, 1], [0, 1, 0]]))
    restricted = restrict_items(held_out, np.array([2]))
    assert restricted.toarray().tolist() == [[0, 0, 1], [0, 0, 0]]
    assert restricted.nnz == 1


def test_played_is_the_rows_nonzero_entries_with_repeats_and_stored_zeros():
    user_items = sp.random(60, 30, density=0.2, format="csr", random_state=2)
    user_items.data[::5] = 0  # stored, but not played
    for users in (np.array([4]), np.array([7, 7, 0]), np.arange(60), np.array([], dtype=int)):
        expected = user_items[users].nonzero()
        assert all((got == want).all() for got, want in zip(played(user_items, users), expected))
