"""Erasing a listener: exact removal where a model allows it, and a planted listener erased everywhere."""

import asyncio
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from conftest import TEST_ID_KEY, run_driver

PLANTED = "ERASEME-PLANTED-k4q9"


def plays(seed: int = 0, n_users: int = 9, n_items: int = 7) -> sp.csr_matrix:
    matrix = sp.random(n_users, n_items, density=0.5, format="csr", random_state=seed)
    matrix.data = np.ceil(matrix.data * 20)  # play counts
    return matrix


def catalogue(n_items: int = 7) -> pd.DataFrame:
    tags = [["rock", "live"], ["jazz"], ["rock"], [], ["pop", "live"], ["jazz", "pop"], ["folk"]]
    return pd.DataFrame({"item_idx": np.arange(n_items), "item_id": [f"i{i}" for i in range(n_items)], "tags": tags})


@pytest.mark.parametrize(
    "kind, params",
    [
        ("popularity", {"by": "users"}),
        ("popularity", {"by": "weight"}),
        ("content", {}),
        ("hybrid", {"collaborative": "popularity"}),
        (
            "blend",
            {
                "parts": [
                    {"kind": "popularity", "params": {}, "weight": 1.0},
                    {"kind": "content", "params": {}, "weight": 0.5},
                ]
            },
        ),  # fmt: skip
    ],
)
def test_exact_removal_is_the_fit_without_the_listener(kind, params):
    from encore.privacy.erasure import exactly_removable, remove_user
    from encore.recsys.models import fit_model

    user_items, items, row = plays(), catalogue(), 4
    model = fit_model(kind, params, user_items, items)
    assert exactly_removable(model)
    remove_user(model, row)
    keep = np.arange(user_items.shape[0]) != row
    refit = fit_model(kind, params, user_items[keep], items)
    users = np.arange(user_items.shape[0] - 1)
    np.testing.assert_array_equal(model.score(users), refit.score(users))
    np.testing.assert_array_equal(model.recommend(users, n=3)[0], refit.recommend(users, n=3)[0])
    assert (model.user_items_ != refit.user_items_).nnz == 0


def test_models_whose_items_depend_on_every_listener_need_a_retrain():
    from encore.privacy.erasure import exactly_removable
    from encore.recsys.models import fit_model

    for kind, params in [("als", {"factors": 2, "iterations": 1}), ("ease", {}), ("item_knn", {}), ("rp3beta", {})]:
        assert not exactly_removable(fit_model(kind, params, plays(), catalogue())), kind
    hybrid = fit_model("hybrid", {"collaborative": "ease"}, plays(), catalogue())
    assert not exactly_removable(hybrid)


def planted_csv(path: Path) -> None:
    rng = np.random.default_rng(11)
    lines = ["user,item,weight"]
    for user in [*(f"listener-{n:02d}" for n in range(10)), PLANTED]:
        for item in rng.choice(10, size=6, replace=False):
            lines.append(f"{user},track-{item},{rng.integers(1, 20)}")
    lines.append(f"{PLANTED},track-solo,5")  # an item only they played: it stays in the catalogue, unplayed
    lines.append(f"{PLANTED},track-1,-3")  # a reject that carries their key
    path.write_text("\n".join(lines) + "\n")


def files_holding(roots: list[Path], needles: list[str]) -> list[str]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if not path.is_file():
                continue
            content = path.read_bytes().decode("utf-8", errors="replace")
            if path.suffix == ".parquet":
                content += json.dumps(pq.read_table(path).to_pylist(), default=str)
            found += [f"{needle} in {path}" for needle in needles if needle in content]
    return found


def plant_run(storage: Path, name: str, checkpoint_file: str) -> Path:
    checkpoint = storage / name / "checkpoint_2026-01-01_00-00-00.000000"
    checkpoint.mkdir(parents=True)
    np.savez(checkpoint / checkpoint_file, users=np.ones((3, 2)), items=np.ones((4, 2)), iteration=0)
    (storage / name / "checkpoint_manager_snapshot.json").write_text("{}")
    return storage / name


def test_an_erased_listener_is_in_no_file_and_gets_the_unknown_users_answer(ray_local, tmp_path):
    from encore.core.errors import UnknownModelError
    from encore.privacy.erasure import EXACT, RETRAIN
    from encore.privacy.ids import pseudonymize
    from encore.recsys.bundle import RecommenderBundle
    from encore.recsys.ingest import ingest
    from encore.recsys.interactions import InteractionDataset, SplitConfig
    from encore.recsys.models import fit_model
    from encore.recsys.train import train
    from encore.serving.versions import FAMILIES, VersionCache
    from encore.store import ModelStore

    key = pseudonymize(PLANTED, TEST_ID_KEY.encode())
    planted_csv(tmp_path / "plays.csv")
    dataset_uri, store_uri = str(tmp_path / "dataset"), str(tmp_path / "store")
    ingest(str(tmp_path / "plays.csv"), dataset_uri, SplitConfig())
    ingest(str(tmp_path / "plays.csv"), dataset_uri, SplitConfig())  # a previous version, kept for readers
    store = ModelStore(store_uri)
    by_weight = train(dataset_uri, "popularity", {"by": "weight"}, store_uri, [])  # held, named by no alias
    popularity = train(dataset_uri, "popularity", {}, store_uri, ["production"])
    knn = train(dataset_uri, "item_knn", {"neighbours": 5}, store_uri, ["latest", "knn-production"])
    # An ALS version fitted on two Ray Train runs (planted: a real run costs half a minute), no alias.
    dataset = InteractionDataset.load(dataset_uri)
    storage = tmp_path / "store" / "ray-train"
    als_runs = [plant_run(storage, f"als-planted-{fit}", "factors.npz") for fit in ("train", "train-validation")]
    orphan = plant_run(storage, "als-killed-train", "factors.npz")  # a killed job's run: no version names it
    composer_run = plant_run(storage, "composer-0123", "state.npz")  # not listening data: kept
    bundle = RecommenderBundle.from_dataset(
        fit_model("als", {"factors": 2, "iterations": 2}, dataset.matrix("train", "validation"), dataset.items),
        dataset, "train", "validation",
    )  # fmt: skip
    bundle.save(tmp_path / "als-bundle")
    workers = {"name": "als-planted", "storage_path": str(storage), "num_workers": 2}
    fingerprint = dataset.manifest["fingerprint"]
    als = store.save(tmp_path / "als-bundle", kind="als", config={"params": {}, "workers": workers}, metrics={},
                     data_fingerprint=fingerprint, preprocessing={}, aliases=[]).version  # fmt: skip
    roots = [tmp_path / "store", tmp_path / "dataset"]
    assert files_holding(roots, [key]), "the planted listener was not planted"

    # A replica's cache, serving the listener from production and from a version asked by id.
    cache = VersionCache(store, "production", FAMILIES["recommender"].kinds, FAMILIES["recommender"].load,
                         poll_seconds=0, refresh_wait_seconds=None)  # fmt: skip
    served, _ = asyncio.run(cache.get())
    assert served.recommend(key)["fallback"] is None
    asyncio.run(cache.get(knn))

    report_path = tmp_path / "erasure.json"
    run_driver(ray_local, ["jobs.erase", "--user", PLANTED, "--store", store_uri, "--report", str(report_path)])

    assert files_holding(roots, [key, PLANTED]) == []
    report = json.loads(report_path.read_text())
    assert PLANTED not in report_path.read_text() and report["user_key"] == key and report["complete"]
    assert report["verification"]["found"] == [] and report["verification"]["files_searched"] > 10
    (entry,) = report["datasets"]
    assert entry["found"] == {"users": 1, "interactions": 7, "rejects": 1}
    assert len(entry["versions_deleted"]) == 1 and [p.name for p in (tmp_path / "dataset" / "versions").iterdir()] == [
        entry["new_version"]
    ]
    republished = {item["old"]: item for item in report["versions"]["republished"]}
    assert set(republished) == {popularity, knn}
    assert (republished[popularity]["method"], republished[popularity]["why"]) == ("exact-removal", EXACT["popularity"])
    assert republished[knn]["method"] == "retrained" and republished[knn]["why"] == RETRAIN["item_knn"]
    assert set(report["versions"]["deleted"]) == {by_weight, popularity, knn, als}
    assert store.aliases() == {
        "production": republished[popularity]["new"],
        "latest": republished[knn]["new"],
        "knn-production": republished[knn]["new"],
    }
    assert {version for version in store.aliases().values()} | {m.version for m in store.list()} == {
        republished[popularity]["new"], republished[knn]["new"]
    }  # fmt: skip
    deleted_runs = {Path(run["run"]).name for run in report["checkpoints"]["deleted"]}
    assert deleted_runs == {run.name for run in [*als_runs, orphan]} and composer_run.exists()
    assert not any(run.exists() for run in [*als_runs, orphan])
    assert report["backups"]["storage"] == "local"

    # The republished versions: the erased dataset's lineage, and the rest of the data unchanged.
    erased = InteractionDataset.load(dataset_uri)
    assert erased.n_users == dataset.n_users - 1 and erased.n_items == dataset.n_items
    manifest = store.show("production")
    assert manifest.data_fingerprint == erased.manifest["fingerprint"] == entry["new_fingerprint"]
    assert manifest.config["erasure"]["replaces"] == popularity
    assert store.show("latest").config["dataset_version"] == entry["new_version"]
    refit = fit_model("popularity", {}, erased.matrix("train", "validation"), erased.items)
    now = RecommenderBundle.load(store.load("production").path, "popularity")
    np.testing.assert_array_equal(now.model.item_scores_, refit.item_scores_)

    # Serving: production answers from the republished version, the listener as an unknown user; the
    # erased version asked by id is gone, and unloaded.
    served, info = asyncio.run(cache.get())
    assert info["version"] == republished[popularity]["new"]
    assert served.recommend(key) == served.recommend("0" * 32) and served.recommend(key)["fallback"] == "popular"
    with pytest.raises(UnknownModelError):
        asyncio.run(cache.get(knn))
    assert popularity not in cache._loaded and knn not in cache._loaded


def test_the_report_never_lands_where_the_key_is_erased(tmp_path):
    from encore.privacy.erasure import ErasureError, erase

    with pytest.raises(ErasureError, match="outside the store"):
        erase("0" * 32, str(tmp_path / "store"), report_uri=str(tmp_path / "store" / "report.json"))
    with pytest.raises(ErasureError, match="32 lowercase hex"):
        erase("not-a-key", str(tmp_path / "store"))


def tiny_dataset_and_store(dataset_uri: str, store_uri: str, tmp_path: Path, kinds=("popularity",), played=5):
    """A dataset and a store holding the planted listener, made without Ray: (key, users, store, versions)."""
    from encore.privacy.ids import key_fingerprint, pseudonymize
    from encore.recsys.bundle import RecommenderBundle, preprocessing
    from encore.recsys.interactions import InteractionDataset, SplitConfig
    from encore.recsys.models import fit_model
    from encore.store import ModelStore

    key, key_print = pseudonymize(PLANTED, b"tiny-key"), key_fingerprint(b"tiny-key")
    users = [key, *(pseudonymize(f"listener-{n}", b"tiny-key") for n in range(6))]
    rng = np.random.default_rng(3)
    pairs = pd.DataFrame(
        [(user, f"track-{item}", float(rng.integers(1, 9)), np.nan) for user in users
         for item in rng.choice(played + 3, size=played, replace=False)],
        columns=["user", "item", "weight", "timestamp"],
    )  # fmt: skip
    items = pd.DataFrame({"item_id": pd.Series(dtype=str), "name": pd.Series(dtype=str), "tags": []})
    dataset = InteractionDataset.build(pairs, items, SplitConfig(), {"id_key_fingerprint": key_print, "sources": []})
    dataset.save(dataset_uri)
    store = ModelStore(store_uri)
    versions = []
    for kind in kinds:
        model = fit_model(kind, {}, dataset.matrix("train", "validation"), dataset.items)
        RecommenderBundle.from_dataset(model, dataset, "train", "validation").save(tmp_path / kind)
        saved = store.save(tmp_path / kind, kind=kind, config={"params": {}, "dataset": dataset_uri}, metrics={},
                           data_fingerprint=dataset.manifest["fingerprint"], preprocessing=preprocessing(key_print),
                           aliases=[f"{kind}-production"])  # fmt: skip
        versions.append(saved.version)
    return key, users, store, versions[0] if len(versions) == 1 else versions


def test_a_dry_run_finds_and_plans_and_changes_nothing(tmp_path):
    from encore.privacy.erasure import erase

    dataset_uri, store_uri = str(tmp_path / "dataset"), str(tmp_path / "store")
    key, _, store, (popularity, ease) = tiny_dataset_and_store(dataset_uri, store_uri, tmp_path, ("popularity", "ease"))
    before = sorted(str(path) for path in tmp_path.rglob("*"))
    report = erase(key, store_uri, dry_run=True)
    assert sorted(str(path) for path in tmp_path.rglob("*")) == before
    assert report["datasets"][0]["found"]["users"] == 1 and not report["complete"]
    assert {(entry["old"], entry["method"]) for entry in report["versions"]["republished"]} == {
        (popularity, "exact-removal"), (ease, "retrained")
    }  # fmt: skip
    assert sorted(report["versions"]["deleted"]) == sorted([popularity, ease])


def test_erasure_on_s3_rewrites_the_dataset_deletes_versions_and_cached_copies(s3_bucket, tmp_path, monkeypatch):
    """No Ray: a popularity model is removed from exactly, so nothing is retrained."""
    import boto3

    from encore.privacy.erasure import erase
    from encore.recsys.interactions import InteractionDataset

    monkeypatch.setenv("ENCORE_CACHE_DIR", str(tmp_path / "cache"))
    dataset_uri, store_uri = f"s3://{s3_bucket}/data/plays", f"s3://{s3_bucket}/prod"
    key, users, store, old = tiny_dataset_and_store(dataset_uri, store_uri, tmp_path)
    cached = store.load("popularity-production").path  # this machine's cached copy of the version
    boto3.client("s3").put_bucket_lifecycle_configuration(Bucket=s3_bucket, LifecycleConfiguration={"Rules": [
        {"ID": "expire", "Status": "Enabled", "Filter": {"Prefix": ""},
         "NoncurrentVersionExpiration": {"NoncurrentDays": 30}}]})  # fmt: skip

    report = erase(key, store_uri, report_uri=str(tmp_path / "report.json"))

    (republished,) = report["versions"]["republished"]
    assert republished["method"] == "exact-removal" and store.resolve("popularity-production") == republished["new"]
    assert report["versions"]["deleted"] == [old] and not cached.exists()
    assert report["backups"] == {"storage": "s3", "bucket": s3_bucket, "noncurrent_days": 30,
                                 "source": "the bucket's lifecycle configuration"}  # fmt: skip
    client = boto3.client("s3")
    keys = [entry["Key"] for entry in client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    for name in keys:
        body = client.get_object(Bucket=s3_bucket, Key=name)["Body"].read()
        text = body.decode("utf-8", errors="replace")
        if name.endswith(".parquet"):
            text += json.dumps(pq.read_table(pa_buffer(body)).to_pylist(), default=str)
        assert key not in text, name
    assert files_holding([tmp_path / "cache"], [key]) == []
    erased = InteractionDataset.load(dataset_uri)
    assert erased.n_users == len(users) - 1 and key not in set(erased.users["user_key"])


def pa_buffer(data: bytes):
    import pyarrow as pa

    return pa.BufferReader(data)


def test_the_bucket_expires_deleted_versions_within_the_window_the_readme_states():
    import re

    from encore.privacy.erasure import DEFAULT_NONCURRENT_DAYS

    from conftest import REPO

    template = (REPO / "infra" / "s3" / "bucket.yaml").read_text()
    days = int(re.search(r"NoncurrentVersionDays:\n(?:\s+\w+: .*\n)*?\s+Default: (\d+)", template).group(1))
    assert "NoncurrentVersionExpiration:\n              NoncurrentDays: !Ref NoncurrentVersionDays" in template
    assert days == DEFAULT_NONCURRENT_DAYS
    erasure = (REPO / "README.md").read_text().split("**Erasure.**", 1)[1].split("\n## ", 1)[0]
    assert f"for up to {days} days after the erasure" in erasure


def test_a_deleted_version_is_never_served_again_and_leaves_no_rollback(tmp_path):
    """The store's delete and a replica's cache, without Ray: the alias moves, the old version goes."""
    from encore.core.errors import UnknownModelError
    from encore.serving.versions import VersionCache
    from encore.store import ModelStore, StoreError

    store = ModelStore(tmp_path / "store")

    def save(text: str, aliases) -> str:
        (tmp_path / text).mkdir()
        (tmp_path / text / "model.txt").write_text(text)
        return store.save(tmp_path / text, kind="genre", config={}, metrics={}, data_fingerprint="d",
                          preprocessing={}, aliases=aliases).version  # fmt: skip

    old = save("old", ["genre-production"])
    cache = VersionCache(store, "genre-production", {"genre"}, lambda loaded: (loaded.path / "model.txt").read_text(),
                         poll_seconds=0, refresh_wait_seconds=None)  # fmt: skip
    assert asyncio.run(cache.get())[0] == "old" and asyncio.run(cache.get(old))[0] == "old"
    with pytest.raises(StoreError, match="genre-production"):
        store.delete(old)  # an alias names it
    new = save("new", ["genre-production"])
    store.delete(old)
    with pytest.raises(StoreError, match="no earlier version"):
        store.rollback("genre-production")
    assert asyncio.run(cache.get()) == ("new", {"kind": "genre", "version": new})
    assert old not in cache._loaded
    with pytest.raises(UnknownModelError):
        asyncio.run(cache.get(old))
