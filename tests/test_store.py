"""The model store, run against a local folder and against an S3 server (moto)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from encore.store import (
    ChecksumError,
    LoadedVersion,
    Manifest,
    ModelStore,
    PreprocessingMismatch,
    StoreError,
    VersionNotFound,
    core,
)
from encore.store.backends import s3_client_config

MODEL_FILES = {
    "weights.bin": bytes(range(256)) * 40,
    "maps/item_ids.json": b'{"a": 0, "b": 1}',
    "maps/deep/user_ids.json": b'{"u": 0}',
    "scaler.txt": b"mean=0.5\n",
}


class LocalObjects:
    """Direct access to a local store's files, bypassing the store."""

    def __init__(self, root: Path):
        self.root = root

    def keys(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def write(self, key: str, data: bytes) -> None:
        (self.root / key).write_bytes(data)

    def delete(self, key: str) -> None:
        (self.root / key).unlink()


class S3Objects:
    """Direct access to an S3 store's objects, bypassing the store."""

    def __init__(self, uri: str):
        self.bucket, _, self.prefix = uri.removeprefix("s3://").partition("/")
        self.client = boto3.client("s3")

    def keys(self) -> list[str]:
        reply = self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}/")
        return sorted(entry["Key"][len(self.prefix) + 1 :] for entry in reply.get("Contents", []))

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}", Body=data)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, monkeypatch) -> ModelStore:
    monkeypatch.setenv("ENCORE_CACHE_DIR", str(tmp_path / "cache"))
    if request.param == "local":
        return ModelStore(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    return ModelStore(f"s3://{bucket}/models")


@pytest.fixture
def objects(store) -> LocalObjects | S3Objects:
    if store.uri.startswith("s3://"):
        return S3Objects(store.uri)
    return LocalObjects(Path(store.uri))


@pytest.fixture
def source(tmp_path) -> Path:
    return make_folder(tmp_path / "model", MODEL_FILES)


def make_folder(root: Path, files: dict[str, bytes]) -> Path:
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return root


def save(store: ModelStore, source: Path, kind: str = "popularity", **overrides) -> Manifest:
    arguments = dict(
        kind=kind,
        config={"alpha": 1.0},
        metrics={"ndcg@10": 0.25, "recall@10": 0.5},
        data_fingerprint="sha256:data",
        preprocessing={"id_key": "k1", "extractor": "v2"},
    )
    arguments.update(overrides)
    return store.save(source, **arguments)


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "encore.store", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_save_then_load_returns_the_same_files(store, source):
    manifest = save(store, source)

    loaded = store.load()
    assert isinstance(loaded, LoadedVersion)
    assert loaded.manifest == manifest
    for relative, data in MODEL_FILES.items():
        assert (loaded.path / relative).read_bytes() == data
    assert set(manifest.files) == set(MODEL_FILES)
    assert manifest.files["weights.bin"]["size"] == len(MODEL_FILES["weights.bin"])
    assert manifest.kind == "popularity" and manifest.preprocessing == {"id_key": "k1", "extractor": "v2"}
    assert manifest.code_version.startswith("0.1.0")
    assert datetime.fromisoformat(manifest.created_at).utcoffset() == timedelta(0)
    assert manifest.version.startswith("popularity-")
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest
    assert store.resolve("latest") == manifest.version
    assert store.show(manifest.version) == manifest


def test_layout_puts_files_then_manifest_under_versions(store, source, objects):
    manifest = save(store, source, aliases=("latest", "candidate"))

    expected = {f"versions/{manifest.version}/{relative}" for relative in [*MODEL_FILES, "MANIFEST.json"]}
    expected |= {"aliases/latest.json", "aliases/candidate.json"}
    assert set(objects.keys()) == expected
    alias = json.loads(objects.read("aliases/candidate.json"))
    assert alias["version"] == manifest.version and alias["history"] == [] and alias["updated_at"]
    assert json.loads(objects.read(f"versions/{manifest.version}/MANIFEST.json")) == manifest.to_dict()


def test_local_store_defaults_to_absolute_artifacts_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ModelStore().uri == str(tmp_path / "artifacts")


@pytest.mark.parametrize("kind", ["Popularity", "-pop", "pop/x", ""])
def test_malformed_kind_is_rejected_by_name(store, source, kind):
    with pytest.raises(ValueError, match=f"invalid model kind {kind!r}"):
        save(store, source, kind=kind)
    assert store.list() == []


def test_list_is_newest_first_and_filters_by_kind(store, source):
    first = save(store, source, kind="popularity")
    second = save(store, source, kind="als")
    third = save(store, source, kind="popularity")

    assert [m.version for m in store.list()] == [third.version, second.version, first.version]
    assert [m.version for m in store.list("popularity")] == [third.version, first.version]
    assert [m.version for m in store.list("als")] == [second.version]
    assert store.list("pop") == []


def test_aliases_promote_and_rollback_keep_history(store, source):
    first = save(store, source).version
    second = save(store, source).version
    assert store.aliases() == {"latest": second}

    assert store.promote(first) == first
    assert store.promote("latest") == second
    assert store.aliases() == {"latest": second, "production": second}

    assert store.rollback() == first
    assert store.resolve("production") == first
    with pytest.raises(StoreError, match="no earlier version"):
        store.rollback()
    assert store.rollback("latest") == first
    with pytest.raises(VersionNotFound):
        store.rollback("canary")

    assert store.set_alias("canary", second) == second
    with pytest.raises(VersionNotFound):
        store.set_alias("canary", "popularity-nonexistent")
    with pytest.raises(ValueError, match="invalid alias"):
        store.set_alias("../x", second)


def test_unknown_reference_is_not_found(store, source):
    save(store, source)
    for ref in ["production", "popularity-20000101T000000.000000Z-000000000000", "../versions", ""]:
        with pytest.raises(VersionNotFound):
            store.load(ref)


def _flip_one_byte(data: bytes) -> bytes:
    return data[:10] + bytes([data[10] ^ 1]) + data[11:]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_file_is_refused_naming_it(store, source, objects, damage):
    version = save(store, source).version
    key = f"versions/{version}/weights.bin"
    if damage == "delete":
        objects.delete(key)
    else:
        data = objects.read(key)
        objects.write(key, _flip_one_byte(data) if damage == "flip" else data[:-1])

    problem = {
        "flip": "has sha256",
        "truncate": f"has {len(MODEL_FILES['weights.bin']) - 1} bytes",
        "delete": "is missing",
    }
    for check in (store.load, store.verify):
        with pytest.raises(ChecksumError, match=rf"{version}.*weights\.bin {problem[damage]}"):
            check(version)


def test_verify_checks_the_store_not_a_cached_copy(store, source, objects, tmp_path, monkeypatch):
    version = save(store, source).version
    store.load(version)  # an S3 store now has a good copy in the cache
    key = f"versions/{version}/maps/item_ids.json"
    objects.write(key, _flip_one_byte(objects.read(key)))

    with pytest.raises(ChecksumError, match=rf"{version}.*maps/item_ids\.json"):
        store.verify(version)
    monkeypatch.setenv("ENCORE_CACHE_DIR", str(tmp_path / "fresh-cache"))
    with pytest.raises(ChecksumError, match=r"maps/item_ids\.json"):
        store.load(version)


def test_damaged_cached_copy_is_downloaded_again(s3_bucket, source, tmp_path, monkeypatch):
    monkeypatch.setenv("ENCORE_CACHE_DIR", str(tmp_path / "cache"))
    store = ModelStore(f"s3://{s3_bucket}/models")
    save(store, source)
    cached = store.load().path
    assert cached.is_relative_to(tmp_path / "cache")
    assert store.load().path == cached  # a good copy is reused
    (cached / "weights.bin").write_bytes(b"stale")

    reloaded = store.load().path
    assert reloaded != cached and reloaded.is_relative_to(tmp_path / "cache")
    assert (reloaded / "weights.bin").read_bytes() == MODEL_FILES["weights.bin"]
    assert (cached / "weights.bin").read_bytes() == b"stale"  # left for readers that may still hold it
    assert store.load().path == reloaded


def test_preprocessing_mismatch_is_refused(store, source):
    version = save(store, source).version

    assert store.load(version, expected_preprocessing={"id_key": "k1"}).manifest.version == version
    with pytest.raises(PreprocessingMismatch, match="id_key: expected 'k2', found 'k1'"):
        store.load(version, expected_preprocessing={"id_key": "k2"})
    with pytest.raises(PreprocessingMismatch, match="tokenizer: expected 'bpe', found nothing"):
        store.load(version, expected_preprocessing={"extractor": "v2", "tokenizer": "bpe"})


WRITER = textwrap.dedent("""
    import sys
    from encore.store import ModelStore
    ModelStore(sys.argv[1]).save(
        sys.argv[2], kind="crashy", config={}, metrics={}, data_fingerprint="d", preprocessing={}
    )
""")


def test_killed_writer_leaves_no_visible_version(store, objects, tmp_path):
    source = make_folder(tmp_path / "model", {"a.bin": b"a" * 100, "b.bin": b"b" * 100})
    # The last file in sorted order is a pipe nobody writes to: the writer blocks reading it.
    os.mkfifo(source / "z.pipe")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, store.uri, str(source)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while len(written := [key for key in objects.keys() if key.startswith("versions/")]) < 2:
            assert writer.poll() is None, writer.stderr.read().decode()
            assert time.monotonic() < deadline, "the writer never stored its first files"
            time.sleep(0.05)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
        writer.stderr.close()

    version = written[0].split("/")[1]
    assert sorted(written) == [f"versions/{version}/a.bin", f"versions/{version}/b.bin"]
    assert store.list() == []
    for attempt in (store.resolve, store.load, store.show):
        with pytest.raises(VersionNotFound, match="incomplete"):
            attempt(version)
    assert store.gc() == []  # still inside the grace period: it could be a slow writer
    assert store.gc(grace_seconds=0, dry_run=True) == [version]
    assert objects.keys() == written
    assert store.gc(grace_seconds=0) == [version]
    assert objects.keys() == []


def test_concurrent_writers_get_distinct_complete_versions(store, source, monkeypatch):
    # Every writer sees the same clock reading: only the random part of the id tells them apart.
    now = datetime.now(UTC)
    monkeypatch.setattr(core, "_utc_now", lambda: now)
    writers = 4
    start = threading.Barrier(writers)
    saved, errors = [], []

    def write():
        own_store = ModelStore(store.uri)
        start.wait()
        try:
            saved.append(save(own_store, source, aliases=()).version)
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert len(set(saved)) == writers
    assert {m.version for m in store.list()} == set(saved)
    for version in saved:
        store.verify(version)


def test_gc_removes_old_versions_but_keeps_aliased_ones(store, source):
    oldest, pinned_by_history, old, newest = (save(store, source, aliases=()).version for _ in range(4))
    other_kind = save(store, source, kind="als", aliases=()).version
    store.promote(oldest)
    store.set_alias("canary", pinned_by_history)
    store.set_alias("canary", newest)

    assert store.gc(keep=1, dry_run=True) == [old]
    assert len(store.list()) == 5
    assert store.gc(keep=1) == [old]
    assert {m.version for m in store.list()} == {oldest, pinned_by_history, newest, other_kind}
    with pytest.raises(VersionNotFound):
        store.load(old)
    assert store.gc(keep=0) == [other_kind]
    with pytest.raises(ValueError):
        store.gc(keep=-1)


def test_alias_history_is_bounded_so_gc_can_free_space(store, source):
    versions = [save(store, source, aliases=()).version for _ in range(2)]
    for step in range(15):
        store.set_alias("flip", versions[step % 2])
    rollbacks = 0
    with pytest.raises(StoreError, match="no earlier version"):
        while True:
            store.rollback("flip")
            rollbacks += 1
    assert rollbacks == 10


def test_cli_lists_shows_promotes_and_rolls_back(store, tmp_path):
    from test_promotion import save_recommender  # promote admits only versions the service can load

    metrics = {"ndcg@10": 0.123456, "recall@10": 0.5, "hidden": 1}
    first = save_recommender(store, tmp_path / "first", metrics=metrics, aliases=["latest"])
    second = save_recommender(store, tmp_path / "second", aliases=["latest"])

    listing = cli("--uri", store.uri, "list")
    assert listing.returncode == 0, listing.stderr
    header, *rows = listing.stdout.splitlines()
    assert header.split()[:2] == ["VERSION", "KIND"]
    assert [row.split()[0] for row in rows] == [second, first]
    assert "latest" in rows[0] and "latest" not in rows[1]
    assert "ndcg@10=0.1235" in rows[1] and "hidden" not in rows[1]
    assert "no versions" in cli("--uri", store.uri, "list", "--kind", "als").stdout

    shown = cli("--uri", store.uri, "show", "latest")
    assert shown.returncode == 0 and json.loads(shown.stdout)["version"] == second

    assert cli("--uri", store.uri, "promote", first).stdout.strip() == f"production -> {first}"
    assert cli("--uri", store.uri, "promote", second).returncode == 0
    rolled = cli("--uri", store.uri, "rollback")
    assert rolled.returncode == 0 and rolled.stdout.strip() == f"production -> {first}"
    assert store.aliases()["production"] == first
    assert cli("--uri", store.uri, "verify", "production").returncode == 0

    failed = cli("--uri", store.uri, "rollback")
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: ") and "no earlier version" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_cli_reports_errors_without_traceback(tmp_path, source):
    store = ModelStore(tmp_path / "store")
    version = save(store, source).version
    (tmp_path / "store" / "versions" / version / "scaler.txt").write_bytes(b"mean=0.6\n")
    env = {**os.environ, "ENCORE_STORE_URI": str(tmp_path / "store")}

    for args, message in [
        (["verify", version], "scaler.txt"),
        (["show", "nope"], "no version or alias named 'nope'"),
        (["--uri", "ftp://host/x", "list"], "unsupported store URI"),
    ]:
        result = cli(*args, env=env)
        assert result.returncode == 1, result
        assert result.stderr.startswith("error: ") and message in result.stderr
        assert "Traceback" not in result.stderr
    assert cli("gc", "--keep", "0", "--dry-run", env=env).stdout.strip() == "nothing to remove"


def test_s3_requests_give_up_after_the_timeouts_and_attempts_the_environment_sets(monkeypatch):
    for name in ("ENCORE_S3_CONNECT_TIMEOUT", "ENCORE_S3_MAX_ATTEMPTS", "ENCORE_S3_RETRY_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENCORE_S3_READ_TIMEOUT", "2.5")
    config = s3_client_config()
    assert (config.connect_timeout, config.read_timeout) == (3.0, 2.5)  # not boto3's 60 s
    assert config.retries == {"mode": "standard", "max_attempts": 3}
    monkeypatch.setenv("ENCORE_S3_MAX_ATTEMPTS", "many")
    with pytest.raises(ValueError, match="ENCORE_S3_MAX_ATTEMPTS='many'"):
        s3_client_config()


def test_exported_version_imports_into_another_store_verified_and_once(store, source, tmp_path):
    manifest = save(store, source)
    folder = store.export("latest", tmp_path / "shipped")
    assert folder.name == manifest.version
    assert sorted(path.name for path in folder.rglob("*") if path.is_file()) == sorted(
        [core.MANIFEST_NAME, *(Path(name).name for name in MODEL_FILES)]
    )
    with pytest.raises(StoreError, match="exists"):
        store.export("latest", tmp_path / "shipped")

    other = ModelStore(tmp_path / "other")
    imported = other.import_version(folder, aliases=["production"])
    assert imported == manifest and other.aliases()["production"] == manifest.version
    assert other.verify("production") == manifest
    assert other.import_version(folder) == manifest  # again: nothing changes
    assert [entry.version for entry in other.list()] == [manifest.version]

    # Shipped with the CLI, as the demo imports its composer.
    result = cli("--uri", str(tmp_path / "third"), "import", str(folder))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"imported {manifest.version} ({len(MODEL_FILES)} files verified)"


def _exported(tmp_path, source) -> Path:
    store = ModelStore(tmp_path / "origin")
    save(store, source)
    return store.export("latest", tmp_path / "shipped")


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda folder: (folder / "weights.bin").write_bytes(b"\0" * 64), "weights.bin has"),
        (lambda folder: (folder / "weights.bin").unlink(), "weights.bin is missing"),
        (lambda folder: (folder / "extra.py").write_text("import os"), "unlisted file"),
        (lambda folder: (folder / core.MANIFEST_NAME).write_text("{"), "unreadable"),
        (lambda folder: (folder / core.MANIFEST_NAME).unlink(), "holds no MANIFEST.json"),
        (lambda folder: folder.rename(folder.with_name("production")), "not a version id"),
    ],
)
def test_import_refuses_a_tampered_export_and_writes_nothing(tmp_path, source, tamper, message):
    folder = _exported(tmp_path, source)
    tamper(folder)
    if not folder.exists():
        folder = folder.with_name("production")
    target = ModelStore(tmp_path / "target")
    with pytest.raises(StoreError, match=message):
        target.import_version(folder, aliases=["production"])
    assert target.list() == [] and target.aliases() == {}
    assert not (tmp_path / "target" / "versions").exists() or not any((tmp_path / "target" / "versions").iterdir())


def test_import_refuses_a_manifest_whose_files_lead_out_of_the_folder(tmp_path, source):
    folder = _exported(tmp_path, source)
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    described = json.loads((folder / core.MANIFEST_NAME).read_text())
    described["files"] = {"../../secret.txt": {"sha256": "0" * 64, "size": 8}}
    (folder / core.MANIFEST_NAME).write_text(json.dumps(described))
    target = ModelStore(tmp_path / "target")
    with pytest.raises(StoreError, match="file name"):
        target.import_version(folder)
    assert target.list() == []


def test_import_refuses_a_version_id_the_store_holds_with_other_content(tmp_path, source):
    folder = _exported(tmp_path, source)
    target = ModelStore(tmp_path / "target")
    target.import_version(folder)
    described = json.loads((folder / core.MANIFEST_NAME).read_text())
    described["metrics"] = {"ndcg@10": 0.99}
    (folder / core.MANIFEST_NAME).write_text(json.dumps(described))
    with pytest.raises(StoreError, match="holds another"):
        target.import_version(folder, aliases=["production"])
    assert "production" not in target.aliases()
