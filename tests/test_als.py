"""ALS on matrices where the right answer is known, and its solver against an exact one."""

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from encore.recsys.models.als import ALS

from helpers import block_matrix

BLOCKS, USERS_PER_BLOCK, ITEMS_PER_BLOCK = 3, 12, 8


def blocks_of_plays() -> sp.csr_matrix:
    """Each user plays 5 of their block's 8 items, 1..20 times."""
    return block_matrix(BLOCKS, USERS_PER_BLOCK, ITEMS_PER_BLOCK, played_per_user=5, max_plays=20)


def item_block(items) -> np.ndarray:
    return np.asarray(items) // ITEMS_PER_BLOCK


def random_matrix(seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    matrix = sp.random(40, 30, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    matrix.data = rng.integers(1, 50, matrix.nnz).astype(np.float32)
    return matrix


def confidences(model: ALS, matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Dense ``c`` and ``p`` of Hu et al., in float64."""
    weights = matrix.toarray().astype(np.float64)
    scaled = np.log1p(weights) if model.log_scaling else weights
    return 1 + model.alpha * scaled, (weights > 0).astype(np.float64)


def penalties(model: ALS, confidence: np.ndarray) -> np.ndarray:
    """Rendle et al.'s frequency-scaled penalty of each row: reg * (row's total confidence / mean)^nu."""
    totals = confidence.sum(axis=1)
    return model.regularization * (totals / totals.mean()) ** model.frequency_scaling


def objective(model: ALS, matrix: sp.csr_matrix) -> float:
    """The weighted loss, computed densely: sum c (p - x.y)^2 + sum_u reg_u |x_u|^2 + sum_i reg_i |y_i|^2."""
    confidence, preference = confidences(model, matrix)
    X, Y = model.user_factors_.astype(np.float64), model.item_factors_.astype(np.float64)
    user_penalty, item_penalty = penalties(model, confidence), penalties(model, confidence.T)
    return float(
        (confidence * (preference - X @ Y.T) ** 2).sum()
        + user_penalty @ (X**2).sum(axis=1)
        + item_penalty @ (Y**2).sum(axis=1)
    )


@pytest.fixture(scope="module")
def blocks():
    matrix = blocks_of_plays()
    # One factor per block: more would let each user fit the zeros of its own unplayed items.
    return matrix, ALS(factors=BLOCKS, iterations=15).fit(matrix)


def test_recommends_unplayed_items_of_the_users_block(blocks):
    matrix, model = blocks
    for user in range(matrix.shape[0]):
        ids, scores = model.recommend(user, n=ITEMS_PER_BLOCK - 5)
        assert (item_block(ids) == user // USERS_PER_BLOCK).all(), (user, ids, scores)
        assert not set(ids) & set(matrix[user].indices)
        assert (np.diff(scores) <= 0).all()


def test_similar_items_are_the_items_block(blocks):
    _, model = blocks
    for item in range(model.n_items):
        ids, scores = model.similar_items(item, n=ITEMS_PER_BLOCK - 1)
        assert item not in ids
        assert (item_block(ids) == item_block(item)).all(), (item, ids, scores)
        assert scores.max() <= 1 + 1e-6


def test_fold_in_of_a_new_user_ranks_the_block_of_its_history(blocks):
    _, model = blocks
    history = np.array([1, 4, 6]) + ITEMS_PER_BLOCK  # block 1
    ids, _ = model.recommend_for_history(history, n=ITEMS_PER_BLOCK - len(history))
    assert (item_block(ids) == 1).all()
    assert not set(ids) & set(history)
    weighted = model.score_history(history, weights=np.array([10.0, 1.0, 1.0]))
    assert (item_block(np.argsort(-weighted)[:ITEMS_PER_BLOCK]) == 1).all()


@pytest.mark.parametrize("frequency_scaling", [0.0, 1.0])
def test_fold_in_of_a_known_user_ranks_like_the_trained_user(frequency_scaling):
    matrix = random_matrix()
    model = ALS(factors=6, iterations=15, frequency_scaling=frequency_scaling).fit(matrix)
    for user in range(0, matrix.shape[0], 3):
        row = matrix[user]
        folded = model.score_history(row.indices, row.data)
        trained = model.score(np.array([user]))[0]
        assert np.corrcoef(folded, trained)[0, 1] > 0.99
        assert len(set(np.argsort(-folded)[:5]) & set(np.argsort(-trained)[:5])) >= 4


@pytest.mark.parametrize("frequency_scaling", [0.0, 1.5])
def test_fold_in_solves_the_users_system_exactly(frequency_scaling):
    matrix = random_matrix(5)
    model = ALS(factors=5, regularization=0.1, iterations=3, log_scaling=True, frequency_scaling=frequency_scaling)
    model.fit(matrix)
    confidence, preference = confidences(model, matrix)
    user_penalty = penalties(model, confidence)
    Y = model.item_factors_.astype(np.float64)
    for user in (0, 7, 21):
        system = Y.T @ (confidence[user][:, None] * Y) + user_penalty[user] * np.eye(5)
        expected = Y @ np.linalg.solve(system, Y.T @ (confidence[user] * preference[user]))
        row = matrix[user]
        np.testing.assert_allclose(model.score_history(row.indices, row.data), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("log_scaling, frequency_scaling", [(False, 0.0), (True, 0.0), (True, 1.5)])
def test_cg_with_many_steps_matches_an_exact_solve(log_scaling, frequency_scaling):
    matrix = random_matrix(1)
    model = ALS(factors=5, regularization=0.1, alpha=0.5, iterations=2, cg_steps=15, log_scaling=log_scaling,
                frequency_scaling=frequency_scaling)  # fmt: skip
    model.fit(matrix)
    # The last half-step solved every item's system against the final user factors.
    X = torch.from_numpy(model.user_factors_).double()
    confidence, preference = (torch.from_numpy(m.T) for m in confidences(model, matrix))
    item_penalty = penalties(model, confidence.numpy())
    assert frequency_scaling == 0 or item_penalty.max() > 1.5 * item_penalty.min()
    expected = []
    for item in range(matrix.shape[1]):
        system = X.T @ (confidence[item][:, None] * X) + item_penalty[item] * torch.eye(5, dtype=torch.float64)
        expected.append(torch.linalg.solve(system, X.T @ (confidence[item] * preference[item])))
    np.testing.assert_allclose(model.item_factors_, torch.stack(expected).numpy(), atol=1e-4)


@pytest.mark.parametrize("frequency_scaling", [0.0, 1.0])
def test_loss_never_increases(frequency_scaling):
    matrix = random_matrix(2)
    losses = []
    model = ALS(factors=6, iterations=8, log_scaling=True, frequency_scaling=frequency_scaling)
    model.fit(matrix, callback=lambda iteration, fitted: losses.append(objective(fitted, matrix)))
    assert len(losses) == 8
    assert all(after <= before * (1 + 1e-6) for before, after in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.9 * losses[0]
    assert objective(model, matrix) == losses[-1]


def test_same_seed_same_model_and_save_load_round_trip(tmp_path):
    matrix = random_matrix(3)
    first = ALS(factors=6, iterations=4, random_state=7).fit(matrix)
    second = ALS(factors=6, iterations=4, random_state=7).fit(matrix)
    np.testing.assert_array_equal(first.user_factors_, second.user_factors_)
    np.testing.assert_array_equal(first.item_factors_, second.item_factors_)
    other = ALS(factors=6, iterations=4, random_state=8).fit(matrix)
    assert not np.allclose(first.item_factors_, other.item_factors_)

    first.save(tmp_path / "als")
    loaded = ALS.load(tmp_path / "als")
    assert loaded.get_params() == first.get_params()
    assert loaded.user_factors_.dtype == np.float32
    users = np.arange(matrix.shape[0])
    np.testing.assert_array_equal(loaded.score(users), first.score(users))
    np.testing.assert_array_equal(loaded.recommend(users, n=5)[0], first.recommend(users, n=5)[0])
    np.testing.assert_array_equal(loaded.score_history([1, 2, 3]), first.score_history([1, 2, 3]))

    # An artifact from before the frequency-scaled penalty (no state format) is refused, not half-loaded.
    config = json.loads((tmp_path / "als" / "config.json").read_text())
    del config["state_format"]
    (tmp_path / "als" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="saved in state format 1, .* reads format 2: train it again"):
        ALS.load(tmp_path / "als")


def test_explanation_contributions_sum_to_the_folded_in_score():
    matrix = random_matrix(4)
    model = ALS(factors=6, iterations=10, alpha=0.3).fit(matrix)
    user = 5
    row = matrix[user]
    item = int(model.recommend(user, n=1)[0][0])
    contributions = model.explain(user, item, n=matrix.shape[1])
    assert sorted(i for i, _ in contributions) == sorted(row.indices)
    assert [c for _, c in contributions] == sorted((c for _, c in contributions), reverse=True)
    folded = model.score_history(row.indices, row.data)[item]
    assert sum(c for _, c in contributions) == pytest.approx(folded, rel=1e-4, abs=1e-5)
    assert folded == pytest.approx(model.score(np.array([user]))[0, item], abs=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_fit_matches_cpu():
    matrix = blocks_of_plays()
    cpu = ALS(factors=BLOCKS, iterations=2).fit(matrix)
    gpu = ALS(factors=BLOCKS, iterations=2, device="cuda").fit(matrix)
    np.testing.assert_allclose(gpu.item_factors_, cpu.item_factors_, atol=1e-4)
    model = ALS(factors=BLOCKS, iterations=15, device="cuda").fit(matrix)
    for user in range(0, matrix.shape[0], 5):
        ids, _ = model.recommend(user, n=ITEMS_PER_BLOCK - 5)
        assert (item_block(ids) == user // USERS_PER_BLOCK).all()
