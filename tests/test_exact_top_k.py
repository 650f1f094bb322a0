"""ExactTopK against ranking every item in float64, with both first passes, where its bound is tested hardest."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from encore.recsys.metrics import played
from encore.recsys.models.als import ALS
from encore.recsys.models.exact import BFLOAT16_MIN_QUERIES, GROUPS, ExactTopK


def ranked_in_float64(queries, items, k, excluded=None):
    """Every item scored in float64, the excluded ones dropped, best first with ties to the lower index."""
    scores = queries.astype(np.float64) @ items.astype(np.float64).T
    if excluded is not None:
        scores[excluded] = -np.inf
    ids = np.stack([np.lexsort((np.arange(len(row)), -row))[:k] for row in scores])
    return ids, np.take_along_axis(scores, ids, axis=1)


def random_factors(rng, n, factors):
    """Factors whose norms spread over two orders of magnitude, as ALS item norms do."""
    vectors = rng.standard_normal((n, factors)).astype(np.float32)
    return vectors * rng.lognormal(0.0, 1.0, (n, 1)).astype(np.float32)


def random_exclusions(rng, n_queries, n_items, per_query):
    rows = np.repeat(np.arange(n_queries), per_query)
    return rows, rng.integers(0, n_items, len(rows))


@pytest.mark.parametrize("bfloat16", [False, True])
@pytest.mark.parametrize("n_items, factors, k", [(1000, 16, 10), (1003, 7, 1), (2500, 64, 30)])
def test_equals_ranking_every_item_in_float64(bfloat16, n_items, factors, k):
    rng = np.random.default_rng(n_items + factors + k)
    items = random_factors(rng, n_items, factors)
    search = ExactTopK(items, bfloat16=bfloat16)
    for n_queries in (40, 1):  # a batch and a single query take different first passes
        queries = random_factors(rng, n_queries, factors)
        excluded = random_exclusions(rng, n_queries, n_items, per_query=25)
        found = search.top_k(queries, k, excluded)
        assert found is not None
        expected = ranked_in_float64(queries, items, k, excluded)
        np.testing.assert_array_equal(found[0], expected[0])
        np.testing.assert_allclose(found[1], expected[1], rtol=1e-12)


def test_items_the_bfloat16_pass_cannot_tell_apart_are_still_ranked_exactly():
    # Item i is one direction scaled by 1 + i 1e-5: bfloat16's 8 bits see a few distinct scores among 1,024,
    # where the exact order is by index, highest first. Items 100 and 1000 are copies of item 1020 (a tie:
    # the lower index first), and each query has some of the best items excluded.
    rng = np.random.default_rng(7)
    direction = rng.standard_normal(32).astype(np.float32)
    items = direction * (1 + np.arange(1024) * 1e-5).astype(np.float32)[:, None]
    items[[100, 1000]] = items[1020]
    queries = direction * np.array([[1.0], [3.0], [0.5], [2.0]], dtype=np.float32)
    excluded = (np.array([0, 0, 1, 2, 3]), np.array([1023, 1022, 1021, 1020, 100]))
    assert len(queries) >= BFLOAT16_MIN_QUERIES  # so the first pass is bfloat16
    first_pass = (torch.from_numpy(queries).bfloat16() @ torch.from_numpy(items).bfloat16().T).float().numpy()
    assert len(np.unique(first_pass[0, 900:])) <= 4  # the test's premise: the first pass cannot order them

    found = ExactTopK(items, bfloat16=True).top_k(queries, 6, excluded)

    assert found is not None
    expected = ranked_in_float64(queries, items, 6, excluded)
    np.testing.assert_array_equal(found[0], expected[0])
    assert list(found[0][0]) == [1021, 100, 1000, 1020, 1019, 1018]


def test_an_item_whose_bfloat16_score_is_two_roundings_low_is_still_found():
    # One factor: the query and the best item are 1 + 2^-8 - 2^-16, which bfloat16 rounds down to 1, so
    # the first pass scores the best item 1 against an exact (1 + 2^-8)^2, about 1 + 2^-7: a bound under two
    # units of roundoff would lose it, since the floor is that item's own exact score.
    value = np.float32(1 + 2.0**-8 - 2.0**-16)
    items = np.linspace(0.1, 0.5, 4 * GROUPS, dtype=np.float32)[:, None]
    items[77] = value
    queries = np.full((BFLOAT16_MIN_QUERIES, 1), value, dtype=np.float32)

    found = ExactTopK(items, bfloat16=True).top_k(queries, 1)

    assert found is not None
    assert (found[0] == 77).all()
    np.testing.assert_allclose(found[1], float(value) ** 2, rtol=1e-12)


def test_declines_what_the_stripes_cannot_answer_and_als_then_ranks_every_item():
    rng = np.random.default_rng(3)
    positive = np.abs(random_factors(rng, 4 * GROUPS, 8))
    search = ExactTopK(positive)
    assert search.top_k(positive[:5], search.stripes + 1) is None  # more than there are stripes
    assert search.top_k(-positive[:5], 3) is None  # every score negative
    keep_two = np.setdiff1d(np.arange(len(positive)), [0, 1])
    assert search.top_k(positive[:1], 3, (np.zeros(len(keep_two), dtype=int), keep_two)) is None  # two items left

    model = ALS(factors=8)
    model.user_factors_ = np.concatenate([positive[:3], -positive[3:5]])
    model.item_factors_ = positive
    model.user_items_ = sp.csr_matrix(
        (np.ones(len(keep_two)), (np.zeros(len(keep_two), dtype=int), keep_two)), shape=(5, len(positive))
    )
    users = np.arange(5)
    ids, scores = model.recommend(users, 3)
    expected_ids, expected_scores = ranked_in_float64(
        model.user_factors_, positive, 3, played(model.user_items_, users)
    )
    # Ranking every item, the model drops the places that a user with too few items left cannot fill.
    assert ids.shape == (5, 2)
    np.testing.assert_array_equal(ids, expected_ids[:, :2])
    np.testing.assert_allclose(scores, expected_scores[:, :2], rtol=1e-6)


def test_als_recommends_exactly_and_the_same_for_one_user_as_for_many():
    rng = np.random.default_rng(11)
    plays = sp.random(60, 1500, density=0.02, format="csr", random_state=rng, dtype=np.float32)
    plays.data = rng.integers(1, 30, plays.nnz).astype(np.float32)
    model = ALS(factors=16, iterations=3).fit(plays)
    users = np.arange(60)
    assert model._exact_top_k().top_k(model.user_factors_[users], 10, played(plays, users)) is not None
    for exclude_seen in (True, False):
        ids, scores = model.recommend(users, 10, exclude_seen=exclude_seen)
        excluded = played(plays, users) if exclude_seen else None
        expected_ids, expected_scores = ranked_in_float64(model.user_factors_, model.item_factors_, 10, excluded)
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-12)
        for user in (0, 17, 59):
            alone = model.recommend(user, 10, exclude_seen=exclude_seen)
            np.testing.assert_array_equal(alone[0], ids[user])
            np.testing.assert_array_equal(alone[1], scores[user])
