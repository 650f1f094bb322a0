"""Rotation of the pseudonymisation key: the translation, datasets, stored versions, serving under two keys
(no cluster: the rotation runs in its own process, and the dataset is ingested here as jobs.ingest does)."""

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from encore.core.errors import ModelUnavailableError
from encore.privacy.ids import id_keys, key_fingerprint, pseudonymize, pseudonyms
from encore.privacy.rotation import (
    MissingUsers,
    RotationError,
    Translation,
    build_translation,
    rotate,
    rotated_fingerprint,
    rotation_keys,
)
from encore.recsys.bundle import RecommenderBundle, preprocessing
from encore.recsys.interactions import InteractionDataset, SplitConfig, merge_duplicates, parse_file
from encore.recsys.models import fit_model
from encore.serving.versions import FAMILIES, VersionCache, serving_store
from encore.store import ModelStore, PreprocessingMismatch

from conftest import REPO

OLD, NEW = b"rotation-old-key", b"rotation-new-key"
RAW_PREFIX = "RAWLISTENER-k9w2"
N_USERS, N_ITEMS = 12, 15


def raw_user(index: int) -> str:
    return f"{RAW_PREFIX}-{index:03d}"


def write_input(folder: Path, users: range = range(N_USERS)) -> Path:
    """A CSV and a Parquet file of interactions of ``users`` (with a bad row whose user field is located, and
    one whose is not): the raw input."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    rows = [(raw_user(u), f"item-{i}", int(rng.integers(1, 20))) for u in users for i in rng.choice(N_ITEMS, 7, False)]
    half = len(rows) // 2
    lines = ["user,item,weight", *(f"{u},{i},{w}" for u, i, w in rows[:half])]
    lines.insert(3, f"{raw_user(users[0])},item-1,lots")  # rejected, its user field located
    lines.insert(5, f"{raw_user(users[1])},item-2")  # rejected, wrong field count: no user kept
    (folder / "plays.csv").write_text("\n".join(lines) + "\n")
    table = pa.table({"user_id": [r[0] for r in rows[half:]], "item": [r[1] for r in rows[half:]],
                      "plays": [r[2] for r in rows[half:]]})  # fmt: skip
    pq.write_table(table, folder / "more.parquet")
    return folder


def ingest_here(input_folder: Path, output: Path | str, key: bytes) -> InteractionDataset:
    """What jobs.ingest writes, without Ray: parsed under ``key``, split, saved with its rejects."""
    parsed = pd.concat(
        [parse_file(path.read_bytes(), str(path), key) for path in sorted(input_folder.iterdir())], ignore_index=True
    )
    rejects = parsed[parsed["reason"] != ""][["source", "line", "reason", "user"]].rename(columns={"user": "user_key"})
    good = parsed[parsed["reason"] == ""]
    catalogue = pd.DataFrame({"item_id": pd.Series(dtype=str), "name": pd.Series(dtype=str), "tags": []})
    dataset = InteractionDataset.build(
        merge_duplicates(good),
        catalogue,
        SplitConfig(min_items=3),
        manifest={"id_key_fingerprint": key_fingerprint(key)},
    )
    dataset.save(str(output), attachments={"rejects.csv": rejects.to_csv(index=False).encode()})
    return InteractionDataset.load(str(output))


def train_here(
    dataset: InteractionDataset, store: ModelStore, kind: str, aliases=("latest", "production"), work: Path = None
) -> str:
    """What jobs.train stores, without Ray."""
    model = fit_model(kind, {"factors": 4, "iterations": 3} if kind == "als" else {}, dataset.matrix("train"),
                      dataset.items)  # fmt: skip
    bundle = RecommenderBundle.from_dataset(model, dataset, "train")
    folder = (work or Path(store.uri) / "..") / f"source-{kind}-{len(store.list())}"
    bundle.save(folder)
    key = dataset.manifest["id_key_fingerprint"]
    return store.save(folder, kind=kind, config={"params": {}}, metrics={"test": {"ndcg@10": 0.5}},
                      data_fingerprint=dataset.manifest["fingerprint"], preprocessing=preprocessing(key),
                      aliases=aliases).version  # fmt: skip


@pytest.fixture
def world(tmp_path):
    """An input, its dataset under the old key, and a store whose aliases name recommenders trained on it."""
    input_folder = write_input(tmp_path / "input")
    dataset = ingest_here(input_folder, tmp_path / "dataset", OLD)
    store = serving_store(str(tmp_path / "store"))
    als = train_here(dataset, store, "als")
    popularity = train_here(dataset, store, "popularity", aliases=("popular",))
    unaliased = train_here(dataset, store, "item_knn", aliases=())
    return {"tmp": tmp_path, "input": input_folder, "dataset": tmp_path / "dataset", "store": store, "als": als,
            "popularity": popularity, "unaliased": unaliased, "before": dataset}  # fmt: skip


def answers(store: ModelStore, ref: str, key: bytes, users=range(N_USERS + 1)) -> dict:
    bundle = FAMILIES["recommender"].load(store.load(ref))
    return {u: bundle.recommend(pseudonymize(raw_user(u), key), 5) for u in users}


def test_keys_come_from_the_environment_and_must_differ():
    assert rotation_keys({"ENCORE_ID_KEY": "new", "ENCORE_ID_KEY_PREVIOUS": "old"}) == (b"old", b"new")
    for environ, message in [
        ({"ENCORE_ID_KEY": "new"}, "ENCORE_ID_KEY_PREVIOUS"),
        ({"ENCORE_ID_KEY_PREVIOUS": "old"}, "ENCORE_ID_KEY to the new key"),
        ({"ENCORE_ID_KEY": "same", "ENCORE_ID_KEY_PREVIOUS": "same"}, "same key"),
        ({"ENCORE_ID_KEY": "encore-development-key-not-for-production", "ENCORE_ID_KEY_PREVIOUS": "o"}, "development"),
    ]:
        with pytest.raises(RotationError, match=message):
            rotation_keys(environ)


def test_serving_keys_are_the_current_then_the_previous(monkeypatch):
    monkeypatch.setenv("ENCORE_ID_KEY", "new")
    monkeypatch.delenv("ENCORE_ID_KEY_PREVIOUS", raising=False)
    assert list(id_keys().values()) == [b"new"]
    monkeypatch.setenv("ENCORE_ID_KEY_PREVIOUS", "old")
    keys = id_keys()
    assert list(keys.values()) == [b"new", b"old"] and list(keys) == [key_fingerprint(b"new"), key_fingerprint(b"old")]
    assert pseudonyms("u", keys) == {key_fingerprint(k): pseudonymize("u", k) for k in (b"new", b"old")}


def test_translation_pairs_every_user_of_the_input_and_shows_none(tmp_path):
    input_folder = write_input(tmp_path / "input")
    translation = build_translation(str(input_folder), OLD, NEW)
    assert len(translation) == N_USERS
    old = [pseudonymize(raw_user(u), OLD) for u in range(N_USERS)]
    translated, missing = translation.translate([*old, "", "not-a-user"])
    assert missing == 1
    assert list(translated) == [*(pseudonymize(raw_user(u), NEW) for u in range(N_USERS)), "", ""]
    shown = repr(translation) + str(translation)
    assert "12 users" in shown and not any(p in shown for p in old) and RAW_PREFIX not in shown


def test_translation_refuses_two_users_under_one_pseudonym():
    translation = Translation("a", "b")
    translation.add(["x", "y"], ["1", "2"])
    translation.add(["x"], ["1"])
    with pytest.raises(RotationError, match="share a pseudonym"):
        translation.add(["x"], ["3"])


def test_a_hetrec_folder_is_read_as_the_ingest_reads_it(tmp_path):
    folder = tmp_path / "hetrec"
    folder.mkdir()
    lines = ["userID\tartistID\tweight", *(f"{raw_user(u)}\t{50 + u % 3}\t{u + 1}" for u in range(5))]
    (folder / "user_artists.dat").write_text("\n".join(lines) + "\n")
    (folder / "artists.dat").write_text("id\tname\n50\tA\n51\tB\n52\tC\n")
    translation = build_translation(str(folder), OLD, NEW)
    translated, missing = translation.translate([pseudonymize(raw_user(u), OLD) for u in range(5)])
    assert missing == 0 and list(translated) == [pseudonymize(raw_user(u), NEW) for u in range(5)]


def test_input_suffixes_are_those_of_the_ingest():
    from encore.privacy.rotation import INPUT_SUFFIXES
    from encore.recsys.ingest import INPUT_SUFFIXES as INGESTED

    assert INPUT_SUFFIXES == INGESTED


def test_rotation_translates_dataset_and_versions_and_answers_the_same(world, caplog):
    store = world["store"]
    before = {alias: answers(store, alias, OLD) for alias in ("production", "popular")}
    caplog.set_level(logging.INFO)
    summary = rotate(str(world["input"]), OLD, NEW, [str(world["dataset"])], store.uri)

    # The versions behind aliases were rotated and the aliases moved; the unaliased one was not.
    assert set(summary["versions"]) == {world["als"], world["popularity"]}
    assert store.resolve("production") == store.resolve("latest") == summary["versions"][world["als"]]
    assert store.resolve("popular") == summary["versions"][world["popularity"]]
    for alias in ("production", "popular"):
        assert answers(store, alias, NEW) == before[alias]  # every user, the unknown one included
        manifest = store.show(alias)
        assert manifest.preprocessing == preprocessing(key_fingerprint(NEW))
        assert manifest.config["rotated_from"]["id_key_fingerprint"] == key_fingerprint(OLD)
        assert manifest.metrics == store.show(manifest.config["rotated_from"]["version"]).metrics
    assert store.show(world["unaliased"]).preprocessing == preprocessing(key_fingerprint(OLD))

    # The dataset: same rows, same splits, each user its own index, the new pseudonyms, rejects too.
    old, rotated = world["before"], InteractionDataset.load(str(world["dataset"]))
    pd.testing.assert_frame_equal(rotated.interactions, old.interactions)
    pd.testing.assert_frame_equal(rotated.items, old.items)
    assert rotated.users["user_idx"].tolist() == old.users["user_idx"].tolist()
    expected = {pseudonymize(raw_user(u), OLD): pseudonymize(raw_user(u), NEW) for u in range(N_USERS)}
    assert rotated.users["user_key"].tolist() == [expected[k] for k in old.users["user_key"]]
    assert rotated.manifest["id_key_fingerprint"] == key_fingerprint(NEW)
    assert rotated.manifest["fingerprint"] == rotated_fingerprint(old.manifest["fingerprint"], key_fingerprint(NEW))
    assert rotated.manifest["fingerprint"] == store.show("production").data_fingerprint  # jobs.evaluate pairs them
    assert rotated.manifest["rotated_from"]["version"] == old.manifest["version"]
    rejects = pd.read_csv(world["dataset"] / "versions" / rotated.manifest["version"] / "rejects.csv", dtype=str,
                          keep_default_na=False)  # fmt: skip
    assert sorted(rejects["user_key"]) == ["", pseudonymize(raw_user(0), NEW)]

    # What the rotation wrote holds the new pseudonyms only: no file pairs them with the old ones.
    written = [world["dataset"] / "versions" / rotated.manifest["version"], world["dataset"] / "manifest.json"]
    written += [Path(store.uri) / "versions" / version for version in summary["versions"].values()]
    contents = ""
    for path in (p for folder in written for p in ([folder] if folder.is_file() else sorted(folder.rglob("*")))):
        if path.suffix == ".parquet":
            contents += pq.read_table(path).to_pandas().astype(str).to_csv()
        elif path.is_file():
            contents += path.read_bytes().decode(errors="replace")
    assert pseudonymize(raw_user(5), NEW) in contents
    assert not any(pseudonymize(raw_user(u), OLD) in contents or raw_user(u) in contents for u in range(N_USERS))

    # Logs and the summary hold counts and version ids: no raw id, no pseudonym under either key.
    text = caplog.text + json.dumps(summary)
    assert "users translated" in caplog.text
    for u in range(N_USERS):
        for secret in (raw_user(u), pseudonymize(raw_user(u), OLD), pseudonymize(raw_user(u), NEW)):
            assert secret not in text


def test_a_second_run_leaves_what_is_rotated_alone(world):
    first = rotate(str(world["input"]), OLD, NEW, [str(world["dataset"])], world["store"].uri)
    versions, dataset = len(world["store"].list()), InteractionDataset.load(str(world["dataset"])).manifest["version"]
    second = rotate(str(world["input"]), OLD, NEW, [str(world["dataset"])], world["store"].uri)
    assert second["versions"] == second["aliases"] == second["datasets"] == {} and first["versions"]
    assert len(world["store"].list()) == versions
    assert InteractionDataset.load(str(world["dataset"])).manifest["version"] == dataset


def test_a_run_stopped_before_the_aliases_moved_is_finished_by_the_next(world, monkeypatch):
    store = world["store"]
    set_alias = ModelStore.set_alias

    def fail_on_production(self, alias, ref):
        if alias == "production":
            raise OSError("the store went away")
        return set_alias(self, alias, ref)

    with monkeypatch.context() as patch:
        patch.setattr(ModelStore, "set_alias", fail_on_production)
        with pytest.raises(OSError):
            rotate(str(world["input"]), OLD, NEW, [str(world["dataset"])], store.uri)
    assert store.resolve("production") == world["als"] != store.resolve("latest")
    versions = len(store.list())
    summary = rotate(str(world["input"]), OLD, NEW, [str(world["dataset"])], store.uri)
    assert len(store.list()) == versions  # the copies of the first run, not new ones
    assert store.resolve("production") == store.resolve("latest") == summary["versions"][world["als"]]
    assert InteractionDataset.load(str(world["dataset"])).manifest["id_key_fingerprint"] == key_fingerprint(NEW)


def test_all_versions_rotates_the_unaliased_ones_too(world):
    summary = rotate(str(world["input"]), OLD, NEW, [], world["store"].uri, all_versions=True)
    assert set(summary["versions"]) == {world["als"], world["popularity"], world["unaliased"]}


def test_users_missing_from_the_input_stop_the_rotation_before_anything_is_published(world, tmp_path, caplog):
    partial = write_input(tmp_path / "partial", users=range(2, N_USERS))
    store = world["store"]
    versions, aliases = {m.version for m in store.list()}, store.aliases()
    dataset = InteractionDataset.load(str(world["dataset"])).manifest["version"]
    with pytest.raises(MissingUsers, match=r"3 user key\(s\) of the dataset") as raised:  # 2 users, 1 reject
        rotate(str(partial), OLD, NEW, [str(world["dataset"])], store.uri)
    assert "nothing rotated" in str(raised.value) and RAW_PREFIX not in str(raised.value)
    with pytest.raises(MissingUsers, match=r"2 of its \d+ users"):
        rotate(str(partial), OLD, NEW, [], store.uri)
    assert {m.version for m in store.list()} == versions and store.aliases() == aliases
    assert InteractionDataset.load(str(world["dataset"])).manifest["version"] == dataset


def test_a_dataset_or_version_under_a_third_key_is_refused(world):
    with pytest.raises(RotationError, match="neither"):
        rotate(str(world["input"]), b"some-other-key", NEW, [str(world["dataset"])])
    with pytest.raises(RotationError, match="neither key"):
        rotate(str(world["input"]), b"some-other-key", NEW, [], world["store"].uri)


def test_an_alias_moved_during_the_rotation_stays_where_it_was(world, monkeypatch):
    from encore.privacy import rotation
    from encore.store import PromotionRefused

    publish = rotation.publish_version

    def publish_then_promote_another(store, plan, translation):
        manifest = publish(store, plan, translation)
        if plan.manifest.version == world["als"]:
            ModelStore(store.uri).set_alias("production", world["unaliased"])  # someone promotes meanwhile
        return manifest

    monkeypatch.setattr(rotation, "publish_version", publish_then_promote_another)
    with pytest.raises(PromotionRefused, match="names .* now"):
        rotate(str(world["input"]), OLD, NEW, [], world["store"].uri)
    assert world["store"].resolve("production") == world["unaliased"]


def test_serving_accepts_versions_of_either_key_and_answers_each_with_its_own(world):
    store = world["store"]
    old_version = store.resolve("production")
    rotate(str(world["input"]), OLD, NEW, [], store.uri)
    new_version = store.resolve("production")

    def cache(*keys: bytes) -> VersionCache:
        return VersionCache(ModelStore(store.uri), "production", kinds=FAMILIES["recommender"].kinds,
                            load=FAMILIES["recommender"].load, refresh_wait_seconds=None,
                            expected_preprocessing=[preprocessing(key_fingerprint(k)) for k in keys])  # fmt: skip

    both = cache(NEW, OLD)
    for version in (old_version, new_version):
        bundle, _ = asyncio.run(both.get(version))
        user = pseudonyms(raw_user(4), {key_fingerprint(k): k for k in (NEW, OLD)})
        assert bundle.recommend(user, 5)["fallback"] is None
        assert bundle.top_items(user, 3)["items"]
        with pytest.raises(ModelUnavailableError, match="does not hold"):
            bundle.recommend({key_fingerprint(b"a-third-key"): "x"})
    only_new = cache(NEW)
    asyncio.run(only_new.get(new_version))
    with pytest.raises(Exception, match="other preprocessing"):
        asyncio.run(only_new.get(old_version))
    with pytest.raises(PreprocessingMismatch):
        only_new.load(old_version)


def test_the_job_takes_its_keys_from_the_environment_only(world):
    arguments = ["--input", str(world["input"]), "--dataset", str(world["dataset"]), "--store", world["store"].uri]
    env = {"PATH": "", "PYTHONPATH": f"{REPO / 'src'}:{REPO}", "HOME": str(world["tmp"]), "ENCORE_ID_KEY": NEW.decode()}

    def rotate_key(*arguments: str, **more_env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "jobs.rotate_key", *arguments], cwd=REPO, capture_output=True,
                              text=True, timeout=300, env={**env, **more_env})  # fmt: skip

    refused = rotate_key(*arguments)
    assert refused.returncode == 2 and "error: set ENCORE_ID_KEY_PREVIOUS" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert "--key" not in rotate_key("--help").stdout
    done = rotate_key(*arguments, ENCORE_ID_KEY_PREVIOUS=OLD.decode())
    assert done.returncode == 0, done.stderr
    assert "rotation done" in done.stderr and world["store"].show("production").config["rotated_from"]
    assert InteractionDataset.load(str(world["dataset"])).manifest["id_key_fingerprint"] == key_fingerprint(NEW)
    for u in range(N_USERS):
        assert raw_user(u) not in done.stderr and pseudonymize(raw_user(u), OLD) not in done.stderr


def test_rotation_of_an_input_dataset_and_store_on_s3(s3_bucket, tmp_path, monkeypatch):
    import boto3

    monkeypatch.setenv("ENCORE_CACHE_DIR", str(tmp_path / "cache"))
    input_folder = write_input(tmp_path / "input")
    for path in input_folder.iterdir():
        boto3.client("s3").upload_file(str(path), s3_bucket, f"input/{path.name}")
    bucket = f"s3://{s3_bucket}"
    dataset = ingest_here(input_folder, f"{bucket}/dataset", OLD)
    store = serving_store(f"{bucket}/store")
    version = train_here(dataset, store, "als", work=tmp_path)
    before = answers(store, "production", OLD)

    summary = rotate(f"{bucket}/input", OLD, NEW, [f"{bucket}/dataset"], store.uri)
    assert summary["aliases"]["production"] == store.resolve("production") != version
    assert answers(store, "production", NEW) == before
    rotated = InteractionDataset.load(f"{bucket}/dataset")
    assert rotated.manifest["id_key_fingerprint"] == key_fingerprint(NEW)
    assert rotated.users["user_key"].tolist() == [
        {pseudonymize(raw_user(u), OLD): pseudonymize(raw_user(u), NEW) for u in range(N_USERS)}[k]
        for k in dataset.users["user_key"]
    ]
