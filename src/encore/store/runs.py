"""Retention of Ray Train runs: the checkpoints training jobs leave in their storage folder.

A Ray Train run is a folder ``<storage>/<run name>/`` (a local folder or an S3 prefix) holding its
checkpoints. Checkpoints of recommenders hold factors of every user, learnt from listening data,
so they are personal data and must not outlive their use. A run is *finished* when the job that
trained it saved the result to the model store: the job then writes ``encore-saved.json`` (the
version saved and when) into the run folder, and starting the run again removes it, so a resumed
run counts as unfinished until its job saves again.

:func:`collect_runs` (``python -m encore.store gc``) removes

- finished runs whose marker is older than ``checkpoint_days`` (default 7): the model is in the
  store, the checkpoints are only good for resuming a run that is over;
- unfinished runs (no marker) whose newest file is older than ``unfinished_days`` (default 90): a
  run that crashed can be resumed, by running its job again, for that long.

Every other folder is kept, and each decision is reported with its reason. Names read from the
storage are never trusted as paths: a folder whose name is not a run name Encore writes is left
alone, and the local backend refuses any path that leads out of the storage folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from encore.store.backends import Backend, open_backend, shown
from encore.store.errors import StoreError

logger = logging.getLogger(__name__)

MARKER_NAME = "encore-saved.json"
DEFAULT_CHECKPOINT_DAYS = 7.0
DEFAULT_UNFINISHED_DAYS = 90.0
DAY_SECONDS = 86_400.0
# The run names Encore's jobs write and gc manages: one path segment, no leading dot (so no '.' or '..').
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")


def check_run_name(name: str) -> str:
    """``name`` if it is a run name gc can manage; ValueError otherwise (jobs check it before training)."""
    if not isinstance(name, str) or not _RUN_NAME.fullmatch(name):
        raise ValueError(
            f"invalid Ray Train run name {shown(name)}: use letters, digits, '_', '-' and '.' (at most 200), "
            "starting with a letter or digit"
        )
    return name


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def mark_saved(storage_uri: str | os.PathLike, name: str, version: str, now: datetime | None = None) -> str:
    """Record in run ``name`` under ``storage_uri`` that its result was saved as ``version``; returns the marker's URI.

    Called by a training job once the store holds the model: from then on the run's checkpoints
    count down to their removal by ``gc``.
    """
    check_run_name(name)
    backend = open_backend(storage_uri)
    record = {"version": version, "saved_at": _utc(now).isoformat(), "run": name}
    backend.write_bytes(f"{name}/{MARKER_NAME}", json.dumps(record, indent=2).encode() + b"\n")
    logger.info("run %s in %s is finished: its result is %s", name, backend.uri, version)
    return f"{backend.uri}/{name}/{MARKER_NAME}"


def mark_started(storage_uri: str | os.PathLike, name: str) -> None:
    """Forget that run ``name`` was finished, if it was: a job is about to train it (again)."""
    check_run_name(name)
    backend = open_backend(storage_uri)
    if backend.read_bytes(f"{name}/{MARKER_NAME}") is not None:
        backend.delete(f"{name}/{MARKER_NAME}")
        logger.info("run %s in %s is resumed: unfinished until its job saves again", name, backend.uri)


@dataclass(frozen=True)
class RunDecision:
    """What gc did (or, dry, would do) with one folder of the storage, and why."""

    name: str
    remove: bool
    reason: str

    def describe(self, dry_run: bool = False) -> str:
        verb = ("would remove" if dry_run else "removed") if self.remove else "kept"
        return f"{verb} run {shown(self.name)}: {self.reason}"


def _days(seconds: float) -> str:
    return f"{max(seconds, 0.0) / DAY_SECONDS:.1f} days"  # a clock a little behind the storage's: 0


def _read_marker(backend: Backend, name: str) -> tuple[str, datetime] | None:
    """The version and time a run's marker records; None if it has none. ValueError if unreadable."""
    raw = backend.read_bytes(f"{name}/{MARKER_NAME}")
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        version, saved_at = record["version"], datetime.fromisoformat(record["saved_at"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(shown(str(exc))) from None
    if not isinstance(version, str) or saved_at.tzinfo is None:
        raise ValueError("no version or no timezone")
    return version, saved_at


def _decide(backend: Backend, name: str, now: datetime, checkpoint_days: float, unfinished_days: float) -> RunDecision:
    if not _RUN_NAME.fullmatch(name):
        return RunDecision(name, False, "not a run name Encore writes; left alone")
    try:
        marker = _read_marker(backend, name)
        unreadable = None
    except ValueError as exc:
        marker, unreadable = None, f"its {MARKER_NAME} is unreadable ({exc}), so "
    if marker is not None:
        version, saved_at = marker
        age = (now - saved_at).total_seconds()
        saved = f"finished, saved as {shown(version)} {_days(age)} ago"
        if age >= checkpoint_days * DAY_SECONDS:
            return RunDecision(name, True, f"{saved} (checkpoints kept {checkpoint_days:g} days after saving)")
        return RunDecision(name, False, f"{saved}; removed {checkpoint_days:g} days after saving")
    newest = backend.newest_mtime(name)
    if newest is None:
        return RunDecision(name, True, "empty")
    age = now.timestamp() - newest
    written = f"{unreadable or ''}unfinished, last written {_days(age)} ago"
    if age >= unfinished_days * DAY_SECONDS:
        return RunDecision(name, True, f"{written} (unfinished runs kept {unfinished_days:g} days to resume)")
    return RunDecision(name, False, f"{written}; resumable until {unfinished_days:g} days without writes")


def _remove(backend: Backend, name: str) -> None:
    """Delete run ``name``, its marker last: a gc cut short leaves a run it removes next time, not one
    that looks unfinished and would be kept for months."""
    for child in backend.children(name):
        if child != MARKER_NAME:
            backend.delete_tree(f"{name}/{child}")
            backend.delete(f"{name}/{child}")
    backend.delete_tree(name)


def collect_runs(
    storage_uri: str | os.PathLike,
    *,
    checkpoint_days: float = DEFAULT_CHECKPOINT_DAYS,
    unfinished_days: float = DEFAULT_UNFINISHED_DAYS,
    now: datetime | None = None,
    dry_run: bool = False,
) -> list[RunDecision]:
    """Remove the runs under ``storage_uri`` that are past retention (see the module docstring).

    Returns a decision for every folder there, removed or kept, with its reason. ``now`` (timezone-aware,
    default: the current time) is when ages are measured from; ``dry_run`` removes nothing.
    """
    for setting, value in (("checkpoint_days", checkpoint_days), ("unfinished_days", unfinished_days)):
        if not value >= 0:
            raise ValueError(f"{setting} must be >= 0, got {value}")
    now = _utc(now)
    backend = open_backend(storage_uri)
    decisions = []
    for name in backend.folders(""):
        decision = None
        try:
            decision = _decide(backend, name, now, checkpoint_days, unfinished_days)
            if decision.remove and not dry_run:
                _remove(backend, name)
        except (StoreError, OSError) as exc:  # e.g. a link out of the folder, which the local backend refuses
            failed = "removal failed" if decision is not None and decision.remove else "left alone"
            decision = RunDecision(name, False, f"{failed}: {shown(str(exc), 200)}")
        logger.info("%s", decision.describe(dry_run))
        decisions.append(decision)
    return decisions
