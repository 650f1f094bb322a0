"""EASE and the item- and user-based neighbourhood models, on matrices small enough to reason
about: two blocks of users who only play their own block's items, and hand-computed examples."""

import numpy as np
import pytest
import scipy.sparse as sp

from encore.core.errors import NotSupportedError
from encore.recsys.models.ease import EASE
from encore.recsys.models.knn import SIMILARITIES, ItemKNN, UserKNN, pairwise_similarity
from encore.recsys.models.rp3beta import RP3beta

from helpers import block_matrix

BLOCK_USERS, BLOCK_ITEMS, PLAYED_PER_USER = 12, 10, 6


def block_of(items) -> np.ndarray:
    return np.asarray(items) // BLOCK_ITEMS


def weighting(similarity: str) -> dict:
    # Pearson centres each vector on its observed weights, so it needs play counts, not presence.
    return {"binarize": False, "log_scaling": True} if similarity == "pearson" else {}


def knn(cls, similarity: str, **params):
    return cls(**{"similarity": similarity, "shrinkage": 0.0, **weighting(similarity), **params})


MODELS = [
    pytest.param(lambda: EASE(regularization=1.0), id="ease"),
    pytest.param(lambda: EASE(regularization=1.0, binarize=False, log_scaling=True), id="ease-log"),
    *[pytest.param(lambda s=s: knn(ItemKNN, s, neighbours=20), id=f"item_knn-{s}") for s in SIMILARITIES],
    *[pytest.param(lambda s=s: knn(UserKNN, s, neighbours=30), id=f"user_knn-{s}") for s in SIMILARITIES],
    pytest.param(lambda: RP3beta(alpha=0.8, beta=0.3, neighbours=20), id="rp3beta"),
]
ITEM_MODELS = [param for param in MODELS if not param.id.startswith("user_knn")]


@pytest.fixture(scope="module")
def blocks() -> sp.csr_matrix:
    """Users 0-11 play only items 0-9 and users 12-23 only items 10-19, six items each, 1..49 times:
    every user has four unplayed items in their own block."""
    return block_matrix(2, BLOCK_USERS, BLOCK_ITEMS, PLAYED_PER_USER, max_plays=49)


def other_block(block: int) -> np.ndarray:
    return np.flatnonzero(block_of(np.arange(2 * BLOCK_ITEMS)) != block)


@pytest.mark.parametrize("make", MODELS)
def test_recommendations_come_from_the_users_block(make, blocks):
    model = make().fit(blocks)
    scores = model.score(np.arange(2 * BLOCK_USERS))
    for user in range(2 * BLOCK_USERS):
        block = user // BLOCK_USERS
        # Nothing links a user to the other block's items: no evidence, so exactly 0.
        assert (scores[user, other_block(block)] == 0).all(), user
        ids, best = model.recommend(user, n=1)
        assert block_of(ids[0]) == block and best[0] > 0, (user, ids, best)


@pytest.mark.parametrize("make", MODELS)
@pytest.mark.parametrize("block", [0, 1])
def test_a_new_users_history_ranks_its_block_first(make, blocks, block):
    model = make().fit(blocks)
    history, weights = block * BLOCK_ITEMS + np.array([0, 2, 5]), np.array([3.0, 10.0, 1.0])
    scores = model.score_history(history, weights)
    assert scores.shape == (blocks.shape[1],)
    assert (scores[other_block(block)] == 0).all()
    ids, best = model.recommend_for_history(history, n=1, weights=weights)
    assert block_of(ids[0]) == block and best[0] > 0, (ids, best)


@pytest.mark.parametrize("make", ITEM_MODELS)
def test_similar_items_come_from_the_items_block(make, blocks):
    model = make().fit(blocks)
    for item in range(2 * BLOCK_ITEMS):
        ids, scores = model.similar_items(item, n=3)
        assert item not in ids
        assert (block_of(ids) == block_of(item)).all(), (item, ids, scores)


@pytest.mark.parametrize("make", ITEM_MODELS)
def test_explanations_are_history_items_that_sum_to_the_score(make, blocks):
    model = make().fit(blocks)
    for user in (0, 5, 13, 23):
        history = set(blocks[user].indices)
        scores = model.score(np.array([user]))[0]
        assert model.explain(user, int(model.recommend(user, n=1)[0][0]))
        for item in np.flatnonzero(scores):
            contributions = model.explain(user, int(item))
            items = [index for index, _ in contributions]
            weights = [weight for _, weight in contributions]
            assert set(items) <= history
            assert weights == sorted(weights, reverse=True)
            assert sum(weights) == pytest.approx(scores[item], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("n_users, n_items, regularization", [(9, 6, 3.0), (1500, 1100, 300.0)])
def test_ease_matches_the_closed_form(n_users, n_items, regularization):
    # 1,100 items cross the 1,024-row blocks in which the inverse is mirrored; a λ in proportion
    # to XᵀX keeps float32 as close to this float64 reference as it is on real data.
    rng = np.random.default_rng(1)
    plays = rng.integers(1, 5, size=(n_users, n_items)) * (rng.random((n_users, n_items)) < 0.4)
    plays[:, 4] = 0  # an item nobody played: its weights must come out 0, as the formula gives
    model = EASE(regularization=regularization).fit(sp.csr_matrix(plays.astype(np.float32)))

    presence = (plays > 0).astype(np.float64)
    inverse = np.linalg.inv(presence.T @ presence + regularization * np.eye(n_items))
    expected = np.eye(n_items) - inverse / np.diag(inverse)
    np.fill_diagonal(expected, 0.0)
    assert 4 not in model.played_ and model.played_.tolist() == np.flatnonzero(plays.any(axis=0)).tolist()
    weights = np.zeros((n_items, n_items))
    weights[np.ix_(model.played_, model.played_)] = model.weights_
    np.testing.assert_allclose(weights, expected, atol=1e-5)
    np.testing.assert_allclose(model.score(np.arange(9)), presence[:9] @ expected, atol=1e-5)
    np.testing.assert_allclose(model.score_history(np.array([0, 3])), expected[0] + expected[3], atol=1e-5)


def test_ease_similar_items_agree_with_a_history_of_that_item(blocks):
    model = EASE(regularization=1.0).fit(blocks)
    ids, scores = model.similar_items(3, n=5)
    history_ids, history_scores = model.recommend_for_history([3], n=5)
    np.testing.assert_array_equal(ids, history_ids)
    np.testing.assert_allclose(scores, history_scores, rtol=1e-6)


def test_ease_refuses_a_catalogue_past_max_items():
    with pytest.raises(ValueError, match=r"over 6 items .* GB .* max_items is 5"):
        EASE(max_items=5).fit(sp.csr_matrix(np.ones((3, 6), dtype=np.float32)))


def test_shrinkage_lowers_pairs_seen_together_less_often():
    # Items as columns: a = users {0, 1}, b = {1, 2} share one user, cosine 1/2;
    # c = {0, 1, 2, 3}, d = {0, ..., 4} share four, cosine 4 / (2·√5).
    a, b, c, d = [0, 1], [1, 2], [0, 1, 2, 3], [0, 1, 2, 3, 4]
    plays = np.zeros((5, 4), dtype=np.float32)
    for item, users in enumerate((a, b, c, d)):
        plays[users, item] = 1.0
    plain = ItemKNN(shrinkage=0, neighbours=3).fit(sp.csr_matrix(plays)).similarity_
    shrunk = ItemKNN(shrinkage=2, neighbours=3).fit(sp.csr_matrix(plays)).similarity_
    assert plain[0, 1] == pytest.approx(0.5)
    assert shrunk[0, 1] == pytest.approx(0.5 * 1 / (1 + 2))
    assert plain[2, 3] == pytest.approx(4 / (2 * np.sqrt(5)))
    assert shrunk[2, 3] == pytest.approx(4 / (2 * np.sqrt(5)) * 4 / (4 + 2))
    assert shrunk[0, 1] / plain[0, 1] < shrunk[2, 3] / plain[2, 3]


# Three vectors: a = (1, 3, 0), b = (1, 0, 3), c = (4, 2, 3).
HAND = np.array([[1.0, 3.0, 0.0], [1.0, 0.0, 3.0], [4.0, 2.0, 3.0]])
EXPECTED = {
    # a·b = 1, a·c = 10, b·c = 13; |a|² = |b|² = 10, |c|² = 29.
    "cosine": {(0, 1): 1 / 10, (0, 2): 10 / np.sqrt(290), (1, 2): 13 / np.sqrt(290)},
    # Centred on the observed entries: a → (-1, 1, ·), b → (-1, ·, 1), c → (1, -1, 0).
    "pearson": {(0, 1): 0.5, (0, 2): -1.0, (1, 2): -0.5},
    # a - b = (0, 3, -3), a - c = (-3, 1, -3), b - c = (-3, -2, 0).
    "euclidean": {(0, 1): 1 / (1 + np.sqrt(18)), (0, 2): 1 / (1 + np.sqrt(19)), (1, 2): 1 / (1 + np.sqrt(13))},
}


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_similarities_match_hand_computed_values(similarity):
    matrix = pairwise_similarity(sp.csr_matrix(HAND), sp.csr_matrix(HAND), similarity).toarray()
    for (i, j), value in EXPECTED[similarity].items():
        assert matrix[i, j] == pytest.approx(value)
        assert matrix[j, i] == pytest.approx(value)


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_user_knn_keeps_only_positive_neighbours(similarity):
    model = knn(UserKNN, similarity, neighbours=5, binarize=False).fit(sp.csr_matrix(HAND, dtype=np.float32))
    # Pearson's log scaling changes these values but not their signs.
    expected_pairs = {pair for pair, value in EXPECTED[similarity].items() if value > 0}
    stored = set(zip(*model.similarity_.nonzero()))
    assert stored == expected_pairs | {(j, i) for i, j in expected_pairs}


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_similarities_stay_sparse_across_blocks(similarity, blocks):
    similarity_ = knn(ItemKNN, similarity, neighbours=100).fit(blocks).similarity_
    rows, cols = similarity_.nonzero()
    assert len(rows) > 0
    assert (block_of(rows) == block_of(cols)).all()


@pytest.mark.parametrize("cls", [ItemKNN, UserKNN])
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_pruning_keeps_the_k_most_similar(cls, similarity, blocks):
    full = knn(cls, similarity, neighbours=100).fit(blocks).similarity_
    pruned = knn(cls, similarity, neighbours=3).fit(blocks).similarity_
    assert np.diff(pruned.indptr).max() == 3
    assert np.diff(full.indptr).max() > 3
    for row in range(full.shape[0]):
        kept = np.sort(pruned[row].data)[::-1]
        np.testing.assert_allclose(kept, np.sort(full[row].data)[::-1][:3])
        assert row not in pruned[row].indices


def test_pearson_refuses_weights_it_cannot_centre(blocks):
    with pytest.raises(ValueError, match="binarize=False"):
        ItemKNN(similarity="pearson")
    model = knn(UserKNN, "pearson").fit(blocks)
    with pytest.raises(NotSupportedError, match="unequal weights"):
        model.score_history(np.array([0, 2, 5]))


@pytest.mark.parametrize("beta, expected", [(0.0, [5 / 7, 2 / 7]), (1.0, [5 / 8, 3 / 8])])
def test_rp3beta_walk_probabilities_by_hand(beta, expected):
    # Users: {0, 1}, {0, 1, 2}, {2}, {1}. From item 0 a walk reaches item 1 with 1/2*1/2 + 1/2*1/3 = 5/12
    # and item 2 with 1/2*1/3 = 1/6; beta divides by popularity (item 1: 3 users, item 2: 2).
    played = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 1], [0, 0, 1], [0, 1, 0]], dtype=np.float32))
    similarity = RP3beta(alpha=1.0, beta=beta, neighbours=10).fit(played * 7).similarity_.toarray()
    assert similarity[0] == pytest.approx([0.0, *expected])
    assert similarity.sum(axis=1) == pytest.approx(np.ones(3))
