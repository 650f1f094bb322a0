"""A store that cannot be turned against its readers, and a cache its readers can share.

Each attack is carried out for real: the store's objects are written directly, as anyone with write
access to the bucket or folder could write them, against a local folder and the moto S3 server.
"""

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path

import boto3
import pytest
from test_store import MODEL_FILES, make_folder, save

from encore.store import ModelStore, StoreError

# The store and the cache sit three levels below tmp_path, so that these names lead from either to
# tmp_path / "victim" in the layouts the store used before it checked them.
TRAVERSAL = "../../../victim"
FAKE_ID = "popularity-20000101T000000.000000Z-0123456789ab"
CANARY = b"the victim's own data\n"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, monkeypatch) -> ModelStore:
    monkeypatch.setenv("ENCORE_CACHE_DIR", str(cache_dir(tmp_path)))
    if request.param == "local":
        return ModelStore(tmp_path / "stores" / "local")
    return ModelStore(f"s3://{request.getfixturevalue('s3_bucket')}/models")


@pytest.fixture
def s3_store(tmp_path, monkeypatch, s3_bucket) -> ModelStore:
    monkeypatch.setenv("ENCORE_CACHE_DIR", str(cache_dir(tmp_path)))
    return ModelStore(f"s3://{s3_bucket}/models")


@pytest.fixture
def victim(tmp_path) -> Path:
    """A folder outside the store and the cache, holding data nobody may touch."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "canary.txt").write_bytes(CANARY)
    return folder


@pytest.fixture
def source(tmp_path) -> Path:
    return make_folder(tmp_path / "model", MODEL_FILES)


def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "home" / "cache"


def is_s3(store: ModelStore) -> bool:
    return store.uri.startswith("s3://")


def put(store: ModelStore, key: str, data: bytes) -> None:
    """Write ``key`` of the store directly, bypassing every check of the store."""
    if is_s3(store):
        bucket, _, prefix = store.uri.removeprefix("s3://").partition("/")
        boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=data)
    else:
        path = Path(store.uri) / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def manifest_bytes(version, files: dict[str, bytes], kind="popularity") -> bytes:
    entries = {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for name, data in files.items()}
    return json.dumps(
        {
            "version": version,
            "kind": kind,
            "config": {},
            "metrics": {},
            "files": entries,
            "data_fingerprint": "d",
            "preprocessing": {},
            "code_version": "0.1.0",
            "created_at": "2000-01-01T00:00:00.000000+00:00",
        }
    ).encode()


def plant_version(store: ModelStore, folder: str, version, files: dict[str, bytes]) -> None:
    """A manifest under ``versions/<folder>/`` that says it is ``version``, its files where a reader fetches them."""
    put(store, f"versions/{folder}/MANIFEST.json", manifest_bytes(version, files))
    if is_s3(store) and len(str(version)) < 900:  # an S3 key holds at most 1024 bytes
        for name, data in files.items():
            put(store, f"versions/{version}/{name}", data)


def snapshot(root: Path, *skipped: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` but those under ``skipped``, with the content of its files."""
    return {
        str(path): None if path.is_dir() else path.read_bytes()
        for path in root.rglob("*")
        if not any(path.is_relative_to(skip) for skip in skipped)
    }


def outside(tmp_path: Path) -> dict[str, bytes | None]:
    """What the machine holds outside the cache and, for a local store, outside the store."""
    return snapshot(tmp_path, cache_dir(tmp_path).parent, tmp_path / "stores")


def assert_refused(attempt, tmp_path: Path) -> StoreError:
    """``attempt()`` raises StoreError, changes nothing outside the cache and the store, and says so briefly."""
    before = outside(tmp_path)
    with pytest.raises(StoreError) as refused:
        attempt()
    assert outside(tmp_path) == before
    message = str(refused.value)
    assert len(message) < 1000, message[:2000]
    assert str(cache_dir(tmp_path)) not in message
    return refused.value


@pytest.mark.parametrize(
    "folder, version",
    [
        ("stage2", TRAVERSAL),  # as reported: load("stage2") emptied the victim and filled it with evil.txt
        (FAKE_ID, TRAVERSAL),
        (FAKE_ID, "ABSOLUTE"),
        (FAKE_ID, "x" * 100_000),
    ],
)
def test_manifest_naming_another_folder_is_refused(store, victim, tmp_path, folder, version):
    version = str(victim) if version == "ABSOLUTE" else version
    # From S3 the reader writes what the manifest lists where the version says; in a folder it reads them there.
    files = {"evil.txt": b"evil"} if is_s3(store) else {"canary.txt": CANARY}
    plant_version(store, folder, version, files)

    assert_refused(lambda: store.load(folder), tmp_path)
    assert sorted(os.listdir(victim)) == ["canary.txt"] and (victim / "canary.txt").read_bytes() == CANARY


def test_manifest_of_another_version_is_refused(store, source, tmp_path):
    real = save(store, source, aliases=())
    put(store, f"versions/{FAKE_ID}/MANIFEST.json", json.dumps(real.to_dict()).encode())

    refused = assert_refused(lambda: store.load(FAKE_ID), tmp_path)
    assert FAKE_ID in str(refused) and real.version in str(refused)


@pytest.mark.parametrize("target", [TRAVERSAL, "stage2", "x" * 100_000, 42, "ABSOLUTE"])
def test_alias_naming_no_version_id_is_refused(store, victim, tmp_path, target):
    target = str(victim) if target == "ABSOLUTE" else target
    if isinstance(target, str) and len(target) < 200:
        # The version it names exists and is consistent, so only the name itself can give it away.
        plant_version(store, target, target, {"evil.txt": b"evil"} if is_s3(store) else {"canary.txt": CANARY})
    put(store, "aliases/production.json", json.dumps({"version": target, "history": [], "updated_at": "x"}).encode())

    for attempt in (lambda: store.load("production"), store.aliases, lambda: store.gc(keep=0)):
        assert_refused(attempt, tmp_path)
    assert (victim / "canary.txt").read_bytes() == CANARY


@pytest.mark.parametrize("entry", [TRAVERSAL, "stage2", "y" * 100_000, None])
def test_alias_history_naming_no_version_id_is_refused(store, source, tmp_path, entry):
    version = save(store, source, aliases=()).version
    record = {"version": version, "history": [version, entry], "updated_at": "x"}
    put(store, "aliases/production.json", json.dumps(record).encode())

    for attempt in (store.rollback, lambda: store.gc(keep=0), lambda: store.promote(version)):
        assert_refused(attempt, tmp_path)
    assert store.list()[0].version == version  # gc deleted nothing


@pytest.mark.parametrize(
    "name",
    [
        "../../evil",
        "../../../../../../evil",
        "ABSOLUTE",
        "maps/../../evil",
        "maps\\..\\..\\evil",
        "maps//evil",
        "./evil",
        "maps/./evil",
        "maps/",
        "MANIFEST.json",
        "evil\x00.txt",
        "evil\n.txt",
        "e" * 300,
    ],
)
def test_manifest_listing_an_unsafe_file_name_is_refused(store, tmp_path, name):
    name = str(tmp_path / "evil") if name == "ABSOLUTE" else name
    files = {"weights.bin": b"w", name: b"evil"}
    put(store, f"versions/{FAKE_ID}/MANIFEST.json", manifest_bytes(FAKE_ID, files))
    for relative, data in files.items():
        # A folder store gets only what can be written inside it; S3 keys are opaque, so S3 gets them all.
        if (is_s3(store) or ".." not in relative) and relative.isprintable() and len(relative) < 255:
            put(store, f"versions/{FAKE_ID}/{relative}", data)

    for attempt in (lambda: store.load(FAKE_ID), lambda: store.verify(FAKE_ID), store.list):
        refused = assert_refused(attempt, tmp_path)
        assert FAKE_ID in str(refused)
    assert not (tmp_path / "evil").exists()


def test_local_file_linked_outside_its_version_is_refused(tmp_path, victim, monkeypatch):
    monkeypatch.setenv("ENCORE_CACHE_DIR", str(cache_dir(tmp_path)))
    store = ModelStore(tmp_path / "stores" / "local")
    put(store, f"versions/{FAKE_ID}/MANIFEST.json", manifest_bytes(FAKE_ID, {"weights.bin": CANARY}))
    (tmp_path / "stores" / "local" / "versions" / FAKE_ID / "weights.bin").symlink_to(victim / "canary.txt")

    for attempt in (lambda: store.load(FAKE_ID), lambda: store.verify(FAKE_ID)):
        refused = assert_refused(attempt, tmp_path)
        assert "weights.bin" in str(refused)


def test_local_store_writes_and_deletes_nothing_through_links(tmp_path, victim, source, monkeypatch):
    monkeypatch.setenv("ENCORE_CACHE_DIR", str(cache_dir(tmp_path)))
    root = tmp_path / "stores" / "local"
    store = ModelStore(root)
    version = save(store, source, aliases=()).version
    (root / "aliases").symlink_to(victim)
    (root / "versions" / FAKE_ID).symlink_to(victim)
    (victim / "MANIFEST.json").write_bytes(manifest_bytes(FAKE_ID, {"canary.txt": CANARY}))

    assert_refused(lambda: store.set_alias("production", version), tmp_path)
    (root / "aliases").unlink()
    assert_refused(lambda: store.gc(keep=0, grace_seconds=0), tmp_path)
    assert sorted(os.listdir(victim)) == ["MANIFEST.json", "canary.txt"]


def test_save_refuses_file_names_the_store_would_refuse_to_load(store, tmp_path):
    source = tmp_path / "model"
    source.mkdir()
    (source / "maps\\evil").write_bytes(b"x")

    with pytest.raises(ValueError, match="maps"):
        save(store, source)
    assert store.list() == []


# ---- readers sharing the cache -------------------------------------------------------

WAIT_SECONDS = 60


def _signal(sync: Path, event: str, reader: int) -> None:
    (sync / f"{event}-{reader}").touch()


def _wait_for(sync: Path, event: str, readers) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not all((sync / f"{event}-{reader}").exists() for reader in readers):
        if time.monotonic() > deadline:
            raise TimeoutError(f"readers {list(readers)} never signalled {event}")
        time.sleep(0.01)


def racing_reader(uri: str, version: str, reader: int, readers: int, sync: str) -> dict:
    """Load ``version`` as reader ``reader`` of ``readers`` in one fixed interleaving, then report what it got.

    Every reader looks in the empty cache before any of them downloads; then they download one after
    the other, each once the previous one has its copy in hand. So each later reader finds a copy
    placed after it looked, while the earlier readers hold theirs open, as they would to load a model.
    """
    sync = Path(sync)
    store = ModelStore(uri)
    download = store._backend.fetch
    gated = []

    def fetch_in_turn(key, target):
        if target is not None and not gated:
            gated.append(key)
            _signal(sync, "looked", reader)
            _wait_for(sync, "looked", range(readers))
            _wait_for(sync, "loaded", range(reader))
        return download(key, target)

    store._backend.fetch = fetch_in_turn
    loaded = store.load(version)
    held = os.open(loaded.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        identity = os.fstat(held).st_ino
        _signal(sync, "loaded", reader)
        _wait_for(sync, "loaded", range(readers))
        return {
            "listed": sorted(os.listdir(held)),
            "still_there": loaded.path.is_dir() and os.stat(loaded.path).st_ino == identity,
            "files": {relative: (loaded.path / relative).read_bytes() for relative in loaded.manifest.files},
        }
    finally:
        os.close(held)


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_readers_racing_into_an_empty_cache_keep_their_copies(s3_store, source, tmp_path, pool):
    version = save(s3_store, source).version
    readers = 3
    sync = tmp_path / "sync"
    sync.mkdir()
    if pool == "threads":
        executor = concurrent.futures.ThreadPoolExecutor(readers)
    else:
        executor = concurrent.futures.ProcessPoolExecutor(readers, mp_context=multiprocessing.get_context("spawn"))
    with executor:
        jobs = [executor.submit(racing_reader, s3_store.uri, version, i, readers, str(sync)) for i in range(readers)]
        reports = [job.result(timeout=2 * WAIT_SECONDS) for job in jobs]

    for report in reports:
        assert report["listed"] == ["MANIFEST.json", "maps", "scaler.txt", "weights.bin"]
        assert report["still_there"]
        assert report["files"] == MODEL_FILES


def test_repairing_a_damaged_copy_leaves_the_copy_a_reader_holds(s3_store, source):
    version = save(s3_store, source).version
    first = s3_store.load(version)
    held = os.open(first.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        identity = os.fstat(held).st_ino
        listed = sorted(os.listdir(held))
        (first.path / "scaler.txt").write_bytes(b"damaged")  # the copy goes bad while its reader uses it

        second = ModelStore(s3_store.uri).load(version)  # another replica finds the damage and repairs it

        assert sorted(os.listdir(held)) == listed == ["MANIFEST.json", "maps", "scaler.txt", "weights.bin"]
        assert os.stat(first.path).st_ino == identity
        assert (first.path / "scaler.txt").read_bytes() == b"damaged"
    finally:
        os.close(held)
    assert second.path != first.path
    assert {relative: (second.path / relative).read_bytes() for relative in MODEL_FILES} == MODEL_FILES
    assert ModelStore(s3_store.uri).load(version).path == second.path
