"""Retention of Ray Train runs (``encore.store.runs`` and ``python -m encore.store gc``), in a local
folder and under an S3 prefix (moto). Ages are measured from an explicit ``now``: nothing sleeps."""

import functools
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from encore.store import backends, runs
from encore.store.__main__ import main as store_cli

CHECKPOINT = "checkpoint_2026-12-01_10-00-00.000000"
# The tests' own view of the storage, one client per location (making an S3 client takes a while).
open_backend = functools.cache(backends.open_backend)


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "ray-train")
    return f"s3://{request.getfixturevalue('s3_bucket')}/store/ray-train"


def write_run(storage: str, name: str) -> None:
    """The files Ray Train leaves in a run folder (checkpoint, its record, the storage probe)."""
    backend = open_backend(storage)
    backend.write_bytes(f"{name}/{CHECKPOINT}/factors.npz", b"user factors: personal data")
    backend.write_bytes(f"{name}/checkpoint_manager_snapshot.json", b'{"checkpoint_results": []}')
    backend.write_bytes(f"{name}/.validate_storage_marker", b"")


def runs_left(storage: str) -> list[str]:
    return open_backend(storage).folders("")


def decisions_by_name(decisions) -> dict[str, runs.RunDecision]:
    return {decision.name: decision for decision in decisions}


def test_gc_removes_finished_runs_after_retention_and_unfinished_ones_much_later(storage):
    written = datetime.now(UTC)  # the files' own times come from the storage's clock: now
    for name in ("als-1-train", "als-1-train-validation", "als-2-train", "composer-crashed", "composer-resumed"):
        write_run(storage, name)
    runs.mark_saved(storage, "als-1-train", "als-20261201T100000.000000Z-aaaaaaaaaaaa", now=written - timedelta(days=8))
    runs.mark_saved(storage, "als-1-train-validation", "als-v1", now=written - timedelta(days=8))
    runs.mark_saved(storage, "als-2-train", "als-v2", now=written - timedelta(days=2))
    # Finished long ago, then started again (e.g. to add epochs) and not saved since: unfinished.
    runs.mark_saved(storage, "composer-resumed", "composer-v0", now=written - timedelta(days=30))
    runs.mark_started(storage, "composer-resumed")
    assert not open_backend(storage).exists("composer-resumed/" + runs.MARKER_NAME)
    open_backend(storage).write_bytes("notes.txt", b"a file beside the runs, not a run")

    dry = runs.collect_runs(storage, now=written, dry_run=True)
    assert {d.name for d in dry if d.remove} == {"als-1-train", "als-1-train-validation"}
    assert len(runs_left(storage)) == 5  # a dry run removes nothing

    decided = decisions_by_name(runs.collect_runs(storage, now=written))
    assert {name for name, d in decided.items() if d.remove} == {"als-1-train", "als-1-train-validation"}
    assert "saved as 'als-20261201T100000.000000Z-aaaaaaaaaaaa' 8.0 days ago" in decided["als-1-train"].reason
    assert "saved as 'als-v2' 2.0 days ago" in decided["als-2-train"].reason
    assert decided["composer-crashed"].reason.startswith("unfinished, last written 0.0 days ago")
    assert decided["composer-resumed"].reason.startswith("unfinished")
    assert decided["als-1-train"].describe().startswith("removed run 'als-1-train': finished")
    assert decided["als-2-train"].describe().startswith("kept run 'als-2-train': finished")
    assert runs_left(storage) == ["als-2-train", "composer-crashed", "composer-resumed"]
    assert open_backend(storage).read_bytes("notes.txt") is not None

    # A month on, the finished run is past its 7 days; unfinished runs stay resumable for 90.
    decided = decisions_by_name(runs.collect_runs(storage, now=written + timedelta(days=30)))
    assert {name for name, d in decided.items() if d.remove} == {"als-2-train"}
    assert runs_left(storage) == ["composer-crashed", "composer-resumed"]
    decided = decisions_by_name(runs.collect_runs(storage, now=written + timedelta(days=91)))
    assert {name for name, d in decided.items() if d.remove} == {"composer-crashed", "composer-resumed"}
    assert "unfinished runs kept 90 days to resume" in decided["composer-crashed"].reason
    assert runs_left(storage) == []
    assert open_backend(storage).read_bytes("notes.txt") is not None


def test_retention_settings_and_the_marker_a_job_writes(storage):
    now = datetime(2026, 12, 3, 5, 0, tzinfo=UTC)
    write_run(storage, "run-a")
    marker = runs.mark_saved(storage, "run-a", "composer-v1", now=now - timedelta(hours=30))
    assert marker == f"{open_backend(storage).uri}/run-a/{runs.MARKER_NAME}"
    assert json.loads(open_backend(storage).read_bytes(f"run-a/{runs.MARKER_NAME}")) == {
        "version": "composer-v1",
        "saved_at": "2026-12-01T23:00:00+00:00",
        "run": "run-a",
    }
    assert not runs.collect_runs(storage, now=now, checkpoint_days=2)[0].remove
    assert runs.collect_runs(storage, now=now, checkpoint_days=1.25)[0].remove
    assert runs.collect_runs(storage, now=now) == []

    write_run(storage, "run-b")  # unfinished, written just now: only a zero retention removes it
    assert not runs.collect_runs(storage, unfinished_days=1)[0].remove
    assert runs.collect_runs(storage, unfinished_days=0)[0].remove
    with pytest.raises(ValueError, match="checkpoint_days must be >= 0"):
        runs.collect_runs(storage, checkpoint_days=-1)
    with pytest.raises(ValueError, match="timezone-aware"):
        runs.collect_runs(storage, now=datetime(2026, 12, 3))


def test_names_read_from_storage_are_not_trusted(storage):
    now = datetime.now(UTC)
    backend = open_backend(storage)
    backend.write_bytes("not a run (space)/checkpoint/x.bin", b"x")  # no name a job writes
    write_run(storage, "torn")  # an unreadable marker: unfinished, aged by its files
    backend.write_bytes(f"torn/{runs.MARKER_NAME}", b'{"version": "v", "saved_at": "yesterday"')

    decided = decisions_by_name(runs.collect_runs(storage, now=now + timedelta(days=30)))
    assert not decided["not a run (space)"].remove
    assert "not a run name Encore writes" in decided["not a run (space)"].reason
    assert not decided["torn"].remove and "is unreadable" in decided["torn"].reason
    decided = decisions_by_name(runs.collect_runs(storage, now=now + timedelta(days=91)))
    assert decided["torn"].remove and not decided["not a run (space)"].remove  # "torn" goes as unfinished

    for hostile in ("..", "../escape", "/etc", ".hidden", "a/b", ""):
        with pytest.raises(ValueError, match="invalid Ray Train run name"):
            runs.mark_saved(storage, hostile, "v")
        with pytest.raises(ValueError, match="invalid Ray Train run name"):
            runs.mark_started(storage, hostile)


def test_local_links_out_of_the_storage_are_never_followed(tmp_path):
    storage, outside = tmp_path / "ray-train", tmp_path / "precious"
    (outside / "run").mkdir(parents=True)
    (outside / "keep.txt").write_text("not the storage's")
    write_run(str(storage), "linked-run")
    (storage / "escape").symlink_to(outside, target_is_directory=True)  # a folder link: not a run
    (storage / "linked-run" / "out").symlink_to(outside, target_is_directory=True)
    runs.mark_saved(str(storage), "linked-run", "v", now=datetime.now(UTC) - timedelta(days=8))

    decided = decisions_by_name(runs.collect_runs(str(storage)))
    assert set(decided) == {"linked-run"}
    assert not decided["linked-run"].remove and decided["linked-run"].reason.startswith("removal failed")
    assert (outside / "keep.txt").read_text() == "not the storage's" and (outside / "run").is_dir()


def test_store_gc_command_removes_runs_past_retention_and_says_why(tmp_path, capsys):
    store = tmp_path / "store"
    checkpoints = store / "ray-train"  # the training jobs' default storage under the store
    for name in ("als-old-train", "als-new-train", "composer-crashed", "composer-ancient"):
        write_run(str(checkpoints), name)
    runs.mark_saved(str(checkpoints), "als-old-train", "als-v1", now=datetime.now(UTC) - timedelta(days=8))
    runs.mark_saved(str(checkpoints), "als-new-train", "als-v2", now=datetime.now(UTC) - timedelta(days=6))
    long_ago = time.time() - 100 * 86_400
    for path in [checkpoints / "composer-ancient", *(checkpoints / "composer-ancient").rglob("*")]:
        os.utime(path, (long_ago, long_ago))

    assert store_cli(["--uri", str(store), "gc", "--dry-run"]) == 0
    dry = capsys.readouterr().out.splitlines()
    assert dry[:2] == [
        "would remove run 'als-old-train': finished, saved as 'als-v1' 8.0 days ago "
        "(checkpoints kept 7 days after saving)",
        "would remove run 'composer-ancient': unfinished, last written 100.0 days ago "
        "(unfinished runs kept 90 days to resume)",
    ]
    assert dry[2].startswith("kept run 'als-new-train': finished, saved as 'als-v2' 6.0 days ago")
    assert dry[3].startswith("kept run 'composer-crashed': unfinished, last written 0.0 days ago")
    assert len(dry) == 4 and len(list(checkpoints.iterdir())) == 4

    assert store_cli(["--uri", str(store), "gc", "--checkpoint-days", "5", "--unfinished-days", "120"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == [
        "removed run 'als-new-train'",
        "removed run 'als-old-train'",
        "kept run 'composer-ancient'",
        "kept run 'composer-crashed'",
    ]
    assert sorted(path.name for path in checkpoints.iterdir()) == ["composer-ancient", "composer-crashed"]

    elsewhere = tmp_path / "elsewhere"
    write_run(str(elsewhere), "run")
    runs.mark_saved(str(elsewhere), "run", "v", now=datetime.now(UTC) - timedelta(days=8))
    assert store_cli(["--uri", str(store), "gc", "--checkpoints", str(elsewhere)]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("removed run 'run'")
    assert not Path(elsewhere, "run").exists()

    assert store_cli(["--uri", str(tmp_path / "empty"), "gc"]) == 0
    assert capsys.readouterr().out.strip() == "nothing to remove"
    assert store_cli(["--uri", str(store), "gc", "--unfinished-days", "-1"]) == 1
    assert "error: --unfinished-days must be >= 0, got -1.0" in capsys.readouterr().err
