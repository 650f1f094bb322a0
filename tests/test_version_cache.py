"""VersionCache: how a deployment finds, loads, reloads and keeps model versions (no cluster)."""

import asyncio
import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import boto3
import pytest

from encore.core.errors import ModelUnavailableError, UnknownModelError
from encore.serving.versions import VersionCache
from encore.store import ModelStore

from conftest import moto_server


def save(store: ModelStore, tmp_path: Path, kind: str, text: str, aliases=("latest",)) -> str:
    folder = tmp_path / f"source-{text}"
    folder.mkdir()
    (folder / "model.txt").write_text(text)
    return store.save(
        folder, kind=kind, config={}, metrics={}, data_fingerprint="d", preprocessing={}, aliases=aliases
    ).version


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return ModelStore(tmp_path / "store")


class Clock:
    """A monotonic clock the test moves; it starts at 0, as on a machine booted a moment ago."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def cache(store: ModelStore, poll_seconds: float = 0.0, clock=None, **options) -> VersionCache:
    """A cache of genre models whose requests wait for each refresh to end, so a test sees every outcome."""
    return VersionCache(
        store,
        "genre-production",
        kinds={"genre"},
        load=lambda loaded: (loaded.path / "model.txt").read_text(),
        poll_seconds=poll_seconds,
        capacity=2,
        clock=clock or Clock(),
        **{"refresh_wait_seconds": None, **options},
    )


def get(versions: VersionCache, ref: str | None = None) -> tuple[str, dict]:
    return asyncio.run(versions.get(ref))


def test_default_alias_without_a_model_is_unavailable_until_published(store, tmp_path):
    versions = cache(store)
    with pytest.raises(ModelUnavailableError, match="genre-production"):
        get(versions)
    version = save(store, tmp_path, "genre", "first", aliases=("genre-production",))
    assert get(versions) == ("first", {"kind": "genre", "version": version})


def test_refs_are_aliases_versions_or_kinds_of_the_served_kinds_only(store, tmp_path):
    save(store, tmp_path, "genre", "old")
    newest = save(store, tmp_path, "genre", "new")
    recommender = save(store, tmp_path, "popularity", "other")
    versions = cache(store)
    assert get(versions, "genre") == ("new", {"kind": "genre", "version": newest})
    assert get(versions, newest)[0] == "new"
    with pytest.raises(UnknownModelError, match="popularity model"):
        get(versions, recommender)
    with pytest.raises(UnknownModelError, match="'popularity'"):
        get(versions, "popularity")
    with pytest.raises(UnknownModelError, match="'nope'"):
        get(versions, "nope")


def test_a_moved_alias_is_picked_up_after_the_poll_interval(store, tmp_path):
    first = save(store, tmp_path, "genre", "first", aliases=("genre-production",))
    clock = Clock()
    versions = cache(store, poll_seconds=3600, clock=clock)
    assert get(versions)[0] == "first"  # resolved on first use although the clock reads 0
    second = save(store, tmp_path, "genre", "second", aliases=("genre-production",))
    clock.now = 3599.0
    assert get(versions)[1]["version"] == first  # within the poll interval
    clock.now = 3600.0
    assert get(versions)[1]["version"] == second


def test_every_name_is_resolved_on_first_use_whatever_the_clock_reads(store, tmp_path):
    save(store, tmp_path, "genre", "old")
    newest = save(store, tmp_path, "genre", "new", aliases=("latest", "genre-production"))
    clock = Clock()
    clock.now = 5.0  # less than one poll interval since boot
    versions = cache(store, poll_seconds=3600, clock=clock)
    assert get(versions, "genre")[1]["version"] == newest
    assert get(versions, "latest")[1]["version"] == newest
    assert get(versions)[1]["version"] == newest


def test_a_damaged_new_version_leaves_the_loaded_one_serving(store, tmp_path):
    first = save(store, tmp_path, "genre", "first", aliases=("genre-production",))
    versions = cache(store)
    assert get(versions)[0] == "first"
    second = save(store, tmp_path, "genre", "second", aliases=("genre-production",))
    (tmp_path / "store" / "versions" / second / "model.txt").write_text("tampered")
    assert get(versions) == ("first", {"kind": "genre", "version": first})
    with pytest.raises(UnknownModelError, match="could not be loaded"):
        get(versions, second)


@pytest.mark.parametrize("damage", ["another kind", "another key", "a missing file", "a loader that fails"])
def test_whatever_lands_behind_the_alias_the_working_version_keeps_serving(store, tmp_path, caplog, damage):
    folder = tmp_path / "working"
    folder.mkdir()
    (folder / "model.txt").write_text("first")
    clock = Clock()
    versions = VersionCache(
        store,
        "genre-production",
        kinds={"genre"},
        load=lambda loaded: (loaded.path / "model.txt").read_text().removesuffix("-loads") or 1 / 0,
        poll_seconds=10,
        expected_preprocessing={"key": "k1"},
        clock=clock,
        refresh_wait_seconds=None,  # each request sees the outcome of the refresh it started
    )
    store.save(folder, kind="genre", config={}, metrics={}, data_fingerprint="d", preprocessing={"key": "k1"},
               aliases=["genre-production"])  # fmt: skip
    working = store.resolve("genre-production")
    assert get(versions) == ("first", {"kind": "genre", "version": working})

    bad_folder = tmp_path / "bad"
    bad_folder.mkdir()
    (bad_folder / "model.txt").write_text("" if damage == "a loader that fails" else "second")
    bad = store.save(
        bad_folder,
        kind="composer" if damage == "another kind" else "genre",
        config={},
        metrics={},
        data_fingerprint="d",
        preprocessing={"key": "k2" if damage == "another key" else "k1"},
        aliases=["genre-production"],
    ).version
    if damage == "a missing file":
        (tmp_path / "store" / "versions" / bad / "model.txt").unlink()
    with caplog.at_level("ERROR", logger="encore.serving.versions"):
        for now in (10, 11, 15, 20):  # two polls: the refusal is logged at each, not at every request
            clock.now = now
            assert get(versions) == ("first", {"kind": "genre", "version": working})
    assert versions.refused["genre-production"]["version"] == bad
    assert sum(bad in record.getMessage() for record in caplog.records) == 2
    assert str(tmp_path) not in versions.refused["genre-production"]["reason"]

    store.set_alias("genre-production", working)  # rolled back to the version still loaded: nothing refused
    clock.now = 30
    assert get(versions)[1]["version"] == working and not versions.refused

    store.set_alias("genre-production", bad)
    clock.now = 40
    assert get(versions)[1]["version"] == working and versions.refused
    fixed = store.save(folder, kind="genre", config={}, metrics={}, data_fingerprint="d",
                       preprocessing={"key": "k1"}, aliases=["genre-production"]).version  # fmt: skip
    clock.now = 50
    assert get(versions)[1]["version"] == fixed and not versions.refused


@pytest.fixture
def stoppable_store(tmp_path, monkeypatch):
    """A store on a moto S3 server of this test's own, which it may stop: the session's server keeps answering.

    boto3 gives up on a stopped server after about 3 s (1 s timeouts, 2 attempts); versions load into
    a cache folder of the test's own. Yields the server's process and the store.
    """
    with moto_server(tmp_path / "moto.log") as (server, endpoint):
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "ENCORE_S3_CONNECT_TIMEOUT": "1",
            "ENCORE_S3_READ_TIMEOUT": "1",
            "ENCORE_S3_MAX_ATTEMPTS": "2",
            "ENCORE_CACHE_DIR": str(tmp_path / "cache"),
        }.items():
            monkeypatch.setenv(name, value)
        boto3.session.Session().client("s3").create_bucket(Bucket="outage")
        yield server, ModelStore("s3://outage/models")


@contextlib.contextmanager
def stopped(server):
    """The server stopped (SIGSTOP): it holds every connection and answers nothing until it continues."""
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


class Resolutions:
    """Counts the store's resolutions of names: one per refresh a cache starts."""

    def __init__(self, store: ModelStore, monkeypatch):
        self.started = 0
        self._counted = threading.Condition()
        resolve = store.resolve

        def counted(ref: str) -> str:
            with self._counted:
                self.started += 1
                self._counted.notify_all()
            return resolve(ref)

        monkeypatch.setattr(store, "resolve", counted)

    def at_least(self, count: int) -> int:
        """The count once it reaches ``count``: a refresh runs in the cache's own thread, which may
        start after the request that asked for it has answered."""
        with self._counted:
            self._counted.wait_for(lambda: self.started >= count, timeout=30)
            return self.started


def many_gets(versions: VersionCache, count: int, ref: str | None = None) -> list[tuple[object, float]]:
    """``count`` concurrent requests: each one's answer (or error) and its latency in seconds."""

    async def timed():
        started = time.perf_counter()
        try:
            answer = await versions.get(ref)
        except Exception as error:
            answer = error
        return answer, time.perf_counter() - started

    async def all_of_them():
        return await asyncio.gather(*(timed() for _ in range(count)))

    return asyncio.run(all_of_them())


def get_after_refresh(versions: VersionCache, ref: str | None = None) -> tuple[str, dict]:
    """A request that waits for the refresh in flight to end, however long: the test then knows its outcome."""
    bound, versions.refresh_wait_seconds = versions.refresh_wait_seconds, None
    try:
        return get(versions, ref)
    finally:
        versions.refresh_wait_seconds = bound


def test_a_store_outage_leaves_loaded_models_answering_at_their_usual_speed(stoppable_store, tmp_path, monkeypatch):
    server, store = stoppable_store
    first = save(store, tmp_path, "genre", "first", aliases=("genre-production",))
    clock = Clock()
    # As served, a request for a loaded name never waits for its refresh.
    versions = cache(
        store, poll_seconds=10, clock=clock, backoff_seconds=30, max_backoff_seconds=60, refresh_wait_seconds=0
    )
    assert get(versions)[1]["version"] == first
    second = save(store, tmp_path, "genre", "second", aliases=("genre-production",))  # found at a later poll
    resolutions = Resolutions(store, monkeypatch)

    def answers_promptly(expected_resolutions: int) -> None:
        answers = many_gets(versions, 50)
        assert all(answer == ("first", {"kind": "genre", "version": first}) for answer, _ in answers), answers[0]
        assert max(latency for _, latency in answers) < 1.0
        assert resolutions.at_least(expected_resolutions) == expected_resolutions

    with stopped(server):
        clock.now = 10  # a poll is due: one refresh starts, and hangs on the stopped server
        answers_promptly(1)
        answers_promptly(1)  # still in flight: no second one
        assert get_after_refresh(versions)[0] == "first"  # it failed at 10: back-off of 30 s
        clock.now = 39.9
        answers_promptly(1)
        clock.now = 40
        answers_promptly(2)
        assert get_after_refresh(versions)[0] == "first"  # failed again at 40: back-off doubled, 60 s
        clock.now = 99.9
        answers_promptly(2)
    clock.now = 100
    get(versions)
    assert get_after_refresh(versions) == ("second", {"kind": "genre", "version": second})
    assert resolutions.started == 3 and not versions.refused


def test_a_name_never_resolved_is_promptly_unavailable_while_the_store_is_down(stoppable_store, tmp_path, monkeypatch):
    server, store = stoppable_store
    save(store, tmp_path, "genre", "first", aliases=("genre-production", "latest"))
    clock = Clock()
    versions = cache(store, poll_seconds=10, clock=clock)
    resolutions = Resolutions(store, monkeypatch)
    with stopped(server):
        answers = many_gets(versions, 20)  # one resolution for all of them, bounded by boto3's timeouts
        assert all(isinstance(answer, ModelUnavailableError) for answer, _ in answers), answers[0]
        assert max(latency for _, latency in answers) < 15.0
        assert resolutions.started == 1
        clock.now = 5  # backing off: the store is not asked, the answer comes at once
        answers = many_gets(versions, 20) + many_gets(versions, 20, "latest")
        assert all(isinstance(answer, ModelUnavailableError) for answer, _ in answers), answers[0]
        assert max(latency for _, latency in answers) < 1.0
        assert resolutions.started == 1
    clock.now = 60
    assert get(versions)[0] == get(versions, "latest")[0] == "first"
