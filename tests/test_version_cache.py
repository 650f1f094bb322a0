"""VersionCache: how a deployment finds, loads, reloads and keeps model versions (no cluster)."""

import asyncio
from pathlib import Path

import pytest

from encore.serving import ModelUnavailableError, UnknownModelError, VersionCache
from encore.store import ModelStore


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


def cache(store: ModelStore, poll_seconds: float = 0.0, clock=None) -> VersionCache:
    return VersionCache(
        store,
        "genre-production",
        kinds={"genre"},
        load=lambda loaded: (loaded.path / "model.txt").read_text(),
        poll_seconds=poll_seconds,
        capacity=2,
        clock=clock or Clock(),
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
    with caplog.at_level("ERROR", logger="encore.serving"):
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
