"""Promotion admits behind an alias only versions its consumers can serve (store CLI and jobs' store)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from encore.recsys.bundle import RecommenderBundle
from encore.recsys.models import fit_model
from encore.serving.versions import serving_store
from encore.store import ModelStore, PromotionRefused

PREPROCESSING = {"id_key_fingerprint": "k1", "interactions_schema": 1}


def save_recommender(
    store: ModelStore, folder: Path, kind: str = "popularity", preprocessing=None, aliases=(), metrics=None
) -> str:
    """A real, tiny recommender bundle of ``kind``, as jobs.train saves one."""
    plays = sp.csr_matrix(np.array([[1, 0, 2, 0], [0, 3, 1, 0], [1, 1, 0, 4]], dtype=np.float32))
    items = pd.DataFrame(
        {"item_idx": range(4), "item_id": list("abcd"), "name": list("ABCD"), "popularity": [2, 2, 2, 1]}
    )
    users = pd.DataFrame({"user_idx": range(3), "user_key": ["u0", "u1", "u2"]})
    folder.mkdir(parents=True)
    RecommenderBundle(fit_model(kind, {}, plays, items), users, items).save(folder)
    return store.save(folder, kind=kind, config={}, metrics=metrics or {}, data_fingerprint="d",
                      preprocessing=preprocessing or PREPROCESSING, aliases=aliases).version  # fmt: skip


def save_files(store: ModelStore, folder: Path, kind: str, preprocessing=None) -> str:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return store.save(folder, kind=kind, config={}, metrics={}, data_fingerprint="d",
                      preprocessing=preprocessing or PREPROCESSING, aliases=()).version  # fmt: skip


def cli(store: ModelStore, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "encore.store", "--uri", store.uri, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return serving_store(str(tmp_path / "store"))


def test_promote_refuses_what_the_alias_cannot_serve_and_keeps_the_alias(store, tmp_path):
    serving = save_recommender(store, tmp_path / "serving", aliases=["production"])
    composer = save_files(store, tmp_path / "composer", "composer")
    other_key = save_recommender(
        store, tmp_path / "other-key", preprocessing={**PREPROCESSING, "id_key_fingerprint": "k2"}
    )
    broken = save_files(store, tmp_path / "broken", "popularity")  # a recommender whose files do not load
    for version, reason in [(composer, "is a composer model"), (other_key, "other preprocessing"),
                            (broken, "does not load")]:  # fmt: skip
        with pytest.raises(PromotionRefused, match=reason):
            store.promote(version)
        assert store.resolve("production") == serving
    with pytest.raises(PromotionRefused, match="serves composer models"):
        store.promote(serving, alias="composer-production")  # the alias's name says what it serves
    with pytest.raises(PromotionRefused):  # a job's save moves no alias either
        save_recommender(store, tmp_path / "job", preprocessing={"k": 3}, aliases=["latest", "production"])
    assert store.resolve("production") == serving and "latest" not in store.aliases()


def test_cli_promotes_by_kind_and_refuses_with_a_message(store, tmp_path):
    older = save_recommender(store, tmp_path / "older", aliases=["production"])
    ease = save_recommender(store, tmp_path / "ease", kind="ease")
    newest = save_recommender(store, tmp_path / "newest")
    composer = save_files(store, tmp_path / "composer", "composer")

    assert cli(store, "promote", "popularity").stdout.strip() == f"production -> {newest}"
    assert cli(store, "promote", "ease").stdout.strip() == f"production -> {ease}"
    refused = cli(store, "promote", composer)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("error: ") and "is a composer model" in refused.stderr
    refused = cli(store, "promote", "composer-production", "--alias", "production")
    assert refused.returncode == 1 and "no version or alias named 'composer-production'" in refused.stderr
    assert store.resolve("production") == ease and older != ease
