"""ALS with an approximate-search index, forced on a small catalogue by a low ``ann_min_items``."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from encore.recsys.bundle import RecommenderBundle
from encore.recsys.models import als
from encore.recsys.models.als import ALS
from encore.recsys.models.ann import IndexFileError
from encore.recsys.models.base import Recommender
from encore.store import ChecksumError, ModelStore

ITEMS, FACTORS, USERS, CLUSTERS = 4000, 16, 60, 40


def planted_model(ann_min_items: int = 1000, seen_per_user: int = 8) -> ALS:
    """Factors of clustered items with spread norms and users near one cluster each; every user has
    played some of their own exact top 30, so ``exclude_seen`` removes items the index finds."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLUSTERS, FACTORS)).astype(np.float32)
    items = centres[rng.integers(0, CLUSTERS, ITEMS)] + 0.3 * rng.standard_normal((ITEMS, FACTORS))
    items *= rng.lognormal(0, 0.3, ITEMS)[:, None]
    users = centres[rng.integers(0, CLUSTERS, USERS)] + 0.1 * rng.standard_normal((USERS, FACTORS))
    users, items = users.astype(np.float32), items.astype(np.float32)
    favourites = np.argsort(-(users @ items.T), axis=1)[:, :30]
    seen = np.stack([rng.choice(row, seen_per_user, replace=False) for row in favourites])
    rows = np.repeat(np.arange(USERS), seen_per_user)
    plays = sp.csr_matrix((np.full(seen.size, 3.0), (rows, seen.ravel())), shape=(USERS, ITEMS))

    model = ALS(factors=FACTORS, ann_min_items=ann_min_items)
    model._excess_matrix(plays)
    model.user_factors_, model.item_factors_ = users, items
    model.index_items()
    return model


def exact(model: ALS, user: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
    ids, scores = Recommender.recommend(model, np.array([user]), 10, exclude_seen)  # every item scored
    return ids[0], scores[0]


@pytest.fixture(scope="module")
def model() -> ALS:
    return planted_model()


def recall(model: ALS, exclude_seen: bool) -> float:
    found = [
        len(np.intersect1d(model.recommend(user, 10, exclude_seen)[0], exact(model, user, exclude_seen)[0]))
        for user in range(USERS)
    ]
    return sum(found) / (10 * USERS)


def test_index_finds_the_exact_top_items(model):
    assert hasattr(model, "item_index_")
    assert recall(model, exclude_seen=False) >= 0.95
    ids, scores = model.recommend(0, 10, exclude_seen=False)
    # Candidates are re-scored exactly: the scores are the model's own, best first.
    np.testing.assert_allclose(scores, model.score(np.array([0]))[0, ids], rtol=1e-5)
    assert np.all(np.diff(scores) <= 0)


def test_seen_items_are_excluded_when_the_index_answers(model):
    for user in range(USERS):
        ids, _ = model.recommend(user, 10)
        assert len(ids) == 10
        assert not np.isin(ids, model.user_items_[user].indices).any()
    assert recall(model, exclude_seen=True) >= 0.95


def test_a_history_too_long_to_over_fetch_is_scored_exactly(model, monkeypatch):
    monkeypatch.setattr(als, "MAX_CANDIDATES", 12)  # 10 + 8 seen items is over it
    monkeypatch.setattr(model, "item_index_", None)  # an index that is asked anything fails the test
    ids, scores = model.recommend(3, 10)
    np.testing.assert_array_equal(ids, exact(model, 3, True)[0])


def test_small_catalogues_are_scored_exactly():
    plays = sp.random(30, 40, density=0.2, format="csr", random_state=0, dtype=np.float32) * 5
    assert not hasattr(ALS(factors=4, iterations=2).fit(plays), "item_index_")
    assert hasattr(ALS(factors=4, iterations=2, ann_min_items=40).fit(plays), "item_index_")


def bundle(model: ALS) -> RecommenderBundle:
    users = pd.DataFrame({"user_idx": np.arange(USERS), "user_key": [f"user-{u}" for u in range(USERS)]})
    items = pd.DataFrame(
        {
            "item_idx": np.arange(ITEMS),
            "item_id": [f"item-{i}" for i in range(ITEMS)],
            "name": [f"Item {i}" for i in range(ITEMS)],
            "popularity": np.ones(ITEMS, dtype=np.int64),
        }
    )
    return RecommenderBundle(model, users, items)


def test_the_index_is_saved_in_the_bundle_and_covered_by_the_store(model, tmp_path):
    bundle(model).save(tmp_path / "bundle")
    assert (tmp_path / "bundle" / "item_index_.faiss").is_file()
    store = ModelStore(tmp_path / "store")
    manifest = store.save(
        tmp_path / "bundle", kind="als", config={}, metrics={}, data_fingerprint="planted", preprocessing={}
    )
    assert "item_index_.faiss" in manifest.files

    loaded = RecommenderBundle.load(store.load(manifest.version).path, "als")
    assert hasattr(loaded.model, "item_index_")
    for user in range(5):
        assert loaded.recommend(f"user-{user}") == bundle(model).recommend(f"user-{user}")

    stored = store.load(manifest.version).path / "item_index_.faiss"
    stored.write_bytes(stored.read_bytes()[:-100])
    with pytest.raises(ChecksumError):
        store.load(manifest.version)


LOAD = """
import sys
from encore.recsys.models.als import ALS
from encore.recsys.models.ann import IndexFileError
for folder in sys.argv[1:]:
    try:
        ALS.load(folder)
        print("loaded")
    except IndexFileError as error:
        print("refused:", error)
"""


def test_a_damaged_index_file_is_refused_cleanly(model, tmp_path):
    damages = {
        "truncated": lambda data: data[: len(data) // 2],
        "header overwritten": lambda data: data[:8] + b"\xff" * 64 + data[72:],
        "missing": None,
    }
    for name, damage in damages.items():
        model.save(tmp_path / name)
        path = tmp_path / name / "item_index_.faiss"
        if damage is None:
            path.unlink()
        else:
            path.write_bytes(damage(path.read_bytes()))
    # In a child process: a reader that crashed would take the test run down with it.
    folders = [str(tmp_path / name) for name in damages]
    result = subprocess.run([sys.executable, "-c", LOAD, *folders], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(damages) and all(line.startswith("refused:") for line in lines), result.stdout


def test_an_index_of_other_items_is_refused(model, tmp_path):
    other = planted_model()
    other.item_factors_ = other.item_factors_[:-1]
    other.index_items()
    other.save(tmp_path / "other")
    model.save(tmp_path / "model")
    (tmp_path / "model" / "item_index_.faiss").write_bytes((tmp_path / "other" / "item_index_.faiss").read_bytes())
    with pytest.raises(IndexFileError, match="3999 x 16"):
        ALS.load(tmp_path / "model")
