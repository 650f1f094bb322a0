"""Audio features of a folder or bucket of audio files, extracted on Ray Data (``jobs.extract_features``).

Lists the audio files (wav, flac, ogg, mp3, au) under a local folder or ``s3://`` prefix; Ray Data
actors read, hash, decode and analyse them (the GTZAN feature schema of the whole track and of each
3-second segment, key, tempo and beats: ``encore.audio.features``). The driver never decodes audio.
Written under the output folder or prefix:

- ``tracks.parquet``: one row per track (path, size, sha256, duration, sample rate, key, beats, features);
- ``segments.parquet``: one row per whole 3-second segment of a track (``--segment-seconds``; the
  classification job asks for the 30-second windows its models were trained on);
- ``errors.parquet``: every file that could not be analysed, with its path, size and reason.

A rerun skips files whose path and content hash already have a track row, retries the files that
failed, and rewrites the three tables without duplicates.

Results are written as they come, not held until the end: each batch of result rows is a Parquet part
under ``OUTPUT/_parts/<run id>/``, written in one step (a rename, or one S3 upload). The run id follows
from the input location and the settings, so running the same command again after a crash finds the
parts, analyses only the files they lack (or whose content changed since), then writes the three
tables as an uninterrupted run would and removes the parts. Each batch of files is analysed in a forked
child of the actor, so a worker crash in native code (a bad numba cache did that here) is caught:
the files of the batch are retried one by one and the ones that still crash are reported by name.
The workers keep librosa's numba cache in a folder of their own on each node, built under a lock and
rebuilt if it crashes a warm-up (``--numba-cache-dir``).

:func:`read_tracks` reads the track table back.
"""

import contextlib
import functools
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from encore.audio import AudioDecodeError
from encore.audio.isolation import ChildCrashed, ChildTimedOut, run_forked
from encore.audio.schema import (
    AUDIO_SUFFIXES,
    ERRORS_SCHEMA,
    FEATURE_VERSION,
    GTZAN_FEATURES,
    SAMPLE_RATE,
    SEGMENT_SECONDS,
    SEGMENT_TYPE,
    SEGMENTS_SCHEMA,
    TRACKS_SCHEMA,
)
from encore.audio.warmup import default_numba_cache_dir, warm_up_numba
from encore.core import fs

if TYPE_CHECKING:
    from encore.audio.features import TrackAnalysis

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 2
DEFAULT_FILE_TIMEOUT_S = 1800.0
ERRORS_SHOWN = 5
PARTS_FOLDER = "_parts"
# Names of parts: the attempt (its start in UTC, then a random part) and the part's number in it, so that
# names sort in the order the parts were written and two attempts never write the same name.
_PART_NAME = re.compile(r"part-\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}-\d{5,}\.parquet")

# One row per file out of the actors. Every column has a fixed type whatever happened to the file
# (NaN, 0, "" and empty lists on errors), so no batch can give Ray Data a column typed null.
RESULT_SCHEMA = pa.schema(
    [
        *TRACKS_SCHEMA,
        pa.field("segments", pa.list_(SEGMENT_TYPE)),
        pa.field("ok", pa.bool_()),
        pa.field("skipped", pa.bool_()),
        pa.field("in_part", pa.bool_()),  # done by an earlier attempt of this run: its row is in a part
        pa.field("error", pa.string()),
        pa.field("warmup_s", pa.float64()),
        pa.field("started_at", pa.float64()),
        pa.field("finished_at", pa.float64()),
    ]
)


def analyze_track(
    path: str, data: bytes, sample_rate: int, segment_seconds: float = SEGMENT_SECONDS
) -> "TrackAnalysis":
    """The default ``process_file``: decode and analyse one file (``path`` is only for other callables)."""
    from encore.audio.features import analyze_bytes  # in the worker only, like _warm_up_librosa

    return analyze_bytes(data, sample_rate, segment_seconds)


def _result_row(
    path: str, size: int, sha256: str, *, skipped: bool = False, in_part: bool = False, error: str = ""
) -> dict:
    return {
        "path": path,
        "size": size,
        "sha256": sha256,
        "duration": float("nan"),
        "sample_rate": 0,
        "length": 0,
        "key": "",
        "key_confidence": float("nan"),
        "pitch_classes": [],
        "beat_times": [],
        **dict.fromkeys(GTZAN_FEATURES, float("nan")),
        "segments": [],
        "ok": False,
        "skipped": skipped,
        "in_part": in_part,
        "error": error,
    }


def _analysis_row(path: str, size: int, sha256: str, analysis: "TrackAnalysis") -> dict:
    segment_seconds = analysis.segment_seconds
    segment_samples = int(segment_seconds * analysis.analysis_sample_rate)
    return {
        **_result_row(path, size, sha256),
        "duration": analysis.duration,
        "sample_rate": analysis.sample_rate,
        "length": analysis.length,
        "key": analysis.key,
        "key_confidence": analysis.key_confidence,
        "pitch_classes": analysis.pitch_classes,
        "beat_times": analysis.beat_times,
        **analysis.features,
        "segments": [
            {"segment": index, "start_s": index * segment_seconds, "length": segment_samples, **values}
            for index, values in enumerate(analysis.segments)
        ],
        "ok": True,
    }


def _analyze_files(files: list[tuple[str, bytes, str]], sample_rate: int, process_file: Callable) -> list[dict]:
    """Result rows of ``files`` (path, bytes, sha256); an exception becomes that file's error row."""
    rows = []
    for path, data, sha256 in files:
        try:
            rows.append(_analysis_row(path, len(data), sha256, process_file(path, data, sample_rate)))
        except Exception as error:  # any failure of one file is that file's error row, not the batch's
            reason = str(error) if isinstance(error, AudioDecodeError) else f"{type(error).__name__}: {error}"
            rows.append(_result_row(path, len(data), sha256, error=reason))
    return rows


class FeatureExtractor:
    """Ray Data actor: reads, hashes and analyses a batch of files named by URI.

    librosa's numba code is made ready once per actor, in ``__init__``; each batch then runs in a
    forked child that inherits the compiled code. When the child dies, each file of the batch is
    retried in a child of its own, and a file that kills that one too becomes an error row.
    """

    def __init__(
        self,
        sample_rate: int,
        done: dict[str, str],
        process_file: Callable,
        file_timeout_s: float,
        in_parts: dict[str, str] | None = None,
    ):
        started = time.perf_counter()
        warm_up_numba(sample_rate)
        self.warmup_s = time.perf_counter() - started
        self.sample_rate = sample_rate
        self.done = done
        self.in_parts = in_parts or {}
        self.process_file = process_file
        self.file_timeout_s = file_timeout_s

    def _in_child(self, files: list[tuple[str, bytes, str]]) -> list[dict]:
        return run_forked(
            _analyze_files, files, self.sample_rate, self.process_file, timeout_s=self.file_timeout_s * len(files)
        )

    def _analyze(self, files: list[tuple[str, bytes, str]]) -> list[dict]:
        try:
            return self._in_child(files)
        except ChildCrashed as crash:
            logger.warning("a batch of %d file(s) crashed (%s); retrying them one by one", len(files), crash)
        rows = []
        for path, data, sha256 in files:
            try:
                rows += self._in_child([(path, data, sha256)])
            except ChildTimedOut as timeout:
                rows.append(_result_row(path, len(data), sha256, error=f"{timeout} while decoding/processing"))
            except ChildCrashed as crash:
                reason = f"worker crashed while decoding/processing ({crash})"
                rows.append(_result_row(path, len(data), sha256, error=reason))
        return rows

    def __call__(self, batch: pa.Table) -> pa.Table:
        started_at = time.time()
        rows, todo = [], []
        for path in batch["path"].to_pylist():
            try:
                data = fs.read_bytes(path)
            except OSError as error:
                rows.append(_result_row(path, 0, "", error=f"unreadable: {error}"))
                continue
            sha256 = hashlib.sha256(data).hexdigest()
            if self.in_parts.get(path) == sha256:
                rows.append(_result_row(path, len(data), sha256, in_part=True))
            elif self.done.get(path) == sha256:
                rows.append(_result_row(path, len(data), sha256, skipped=True))
            else:
                todo.append((path, data, sha256))
        if todo:
            rows += self._analyze(todo)
        timing = {"warmup_s": self.warmup_s, "started_at": started_at, "finished_at": time.time()}
        for row in rows:
            row.update(timing)
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


def _metadata(sample_rate: int, segment_seconds: float) -> dict[str, str]:
    return {
        "encore.feature_version": FEATURE_VERSION,
        "encore.sample_rate": str(sample_rate),
        "encore.segment_seconds": str(segment_seconds),
    }


def _read_previous(output_uri: str, sample_rate: int, segment_seconds: float) -> dict[str, pa.Table]:
    """The tables of an earlier run into ``output_uri``, if it computed the same features; else empty ones."""
    filesystem, path = fs.resolve(output_uri)
    names = {"tracks": TRACKS_SCHEMA, "segments": SEGMENTS_SCHEMA, "errors": ERRORS_SCHEMA}
    empty = {name: schema.empty_table() for name, schema in names.items()}
    if not fs.exists(fs.join(output_uri, "tracks.parquet")):
        return empty
    stored = pq.read_schema(f"{path}/tracks.parquet", filesystem=filesystem).metadata or {}
    metadata = {key.decode(): value.decode() for key, value in stored.items()}
    if metadata != _metadata(sample_rate, segment_seconds):
        logger.warning("%s holds features of another version (%s): recomputing every file", output_uri, metadata)
        return empty
    return {
        name: pq.read_table(f"{path}/{name}.parquet", filesystem=filesystem, schema=schema)
        for name, schema in names.items()
    }


def _split_results(results: pa.Table) -> dict[str, pa.Table]:
    """This run's tracks, segments and errors out of the actors' result rows."""
    analysed = results.filter(pc.invert(results["skipped"]))
    ok = analysed.filter(analysed["ok"])
    failed = analysed.filter(pc.invert(analysed["ok"]))
    segments = ok["segments"].combine_chunks()
    parents = pc.list_parent_indices(segments)
    segment_table = pa.Table.from_struct_array(pc.list_flatten(segments))
    segment_table = segment_table.add_column(0, "track_sha256", pc.take(ok["sha256"], parents))
    segment_table = segment_table.add_column(0, "track_path", pc.take(ok["path"], parents))
    return {
        "tracks": ok.select(TRACKS_SCHEMA.names).cast(TRACKS_SCHEMA),
        "segments": segment_table.cast(SEGMENTS_SCHEMA),
        "errors": failed.select(["path", "size", "sha256", "error"])
        .rename_columns(ERRORS_SCHEMA.names)
        .cast(ERRORS_SCHEMA),
    }


def _merge(previous: pa.Table, new: pa.Table, path_column: str, replaced: pa.Array, sort_by: list[str]) -> pa.Table:
    kept = previous.filter(pc.invert(pc.is_in(previous[path_column], value_set=replaced)))
    merged = pa.concat_tables([kept.cast(new.schema), new])
    return merged.sort_by([(column, "ascending") for column in sort_by])


def run_id(input_uri: str, sample_rate: int, segment_seconds: float) -> str:
    """The id of an extraction run: the same for the same input location and settings, so a rerun of a
    command that crashed finds the parts it wrote."""
    settings = json.dumps([input_uri, sample_rate, segment_seconds, FEATURE_VERSION])
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


class ResultParts:
    """The result rows of one run, written as they come: ``OUTPUT/_parts/<run id>/part-*.parquet``.

    A part is written in one step (a local file is renamed into place, an S3 object appears when its
    upload completes), so a crash leaves whole parts only. Names read back that are not part names
    are ignored, never opened.
    """

    def __init__(self, output_uri: str, run: str):
        self.uri = fs.join(output_uri, PARTS_FOLDER, run)
        self.attempt = f"{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4().hex[:8]}"
        self.written = 0

    def _names(self) -> list[str]:
        try:
            listed = fs.list_files(self.uri, (".parquet",))
        except FileNotFoundError:
            return []
        prefix = ("s3://" if fs.is_s3(self.uri) else "") + fs.resolve(self.uri)[1] + "/"
        names = []
        for uri in listed:
            name = uri.removeprefix(prefix)
            if _PART_NAME.fullmatch(name):
                names.append(name)
            else:
                logger.warning("ignoring %r in %s: not a part this job writes", name, self.uri)
        return sorted(names)

    def write(self, rows: pa.Table) -> str:
        """Write ``rows`` as the next part; returns its URI."""
        uri = fs.join(self.uri, f"part-{self.attempt}-{self.written:05d}.parquet")
        sink = pa.BufferOutputStream()
        pq.write_table(rows, sink)
        fs.write_bytes(uri, sink.getvalue().to_pybytes())
        self.written += 1
        return uri

    def read(self, paths: set[str], columns: list[str] | None = None) -> pa.Table:
        """The rows of every part for files in ``paths``; for a file in several parts, the latest part's row."""
        filesystem, root = fs.resolve(self.uri)
        schema = RESULT_SCHEMA if columns is None else pa.schema([RESULT_SCHEMA.field(name) for name in columns])
        wanted = pa.array(sorted(paths), pa.string())
        tables, seen = [], set()
        for name in reversed(self._names()):  # newest first
            try:
                table = pq.read_table(f"{root}/{name}", filesystem=filesystem, schema=schema, columns=columns)
            except (OSError, pa.ArrowInvalid) as error:
                logger.warning("ignoring the part %s/%s, unreadable (%s): its files are analysed again", self.uri,
                               name, error)  # fmt: skip
                continue
            newer = pa.array(sorted(seen), pa.string())
            table = table.filter(
                pc.and_(pc.is_in(table["path"], value_set=wanted), pc.invert(pc.is_in(table["path"], value_set=newer)))
            )
            seen.update(table["path"].to_pylist())
            tables.append(table)
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def remove(self) -> None:
        filesystem, root = fs.resolve(self.uri)
        try:
            filesystem.delete_dir(root)
        except FileNotFoundError:
            return
        if not fs.is_s3(self.uri):  # S3 has no folders; a local one left empty goes too
            with contextlib.suppress(OSError):
                Path(root).parent.rmdir()


def extract_features(
    input_uri: str,
    output_uri: str,
    *,
    sample_rate: int = SAMPLE_RATE,
    segment_seconds: float = SEGMENT_SECONDS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    file_timeout_s: float = DEFAULT_FILE_TIMEOUT_S,
    numba_cache_dir: str | None = None,
    process_file: Callable | None = None,
    on_part: Callable[[int, str, pa.Table], None] | None = None,
) -> dict:
    """Run the extraction and return its summary. ``process_file(path, data, sample_rate)`` returns
    a ``TrackAnalysis`` (default: ``analyze_track`` with ``segment_seconds``); ``on_part(number, uri,
    rows)`` is called after each part is written (numbered from 0 in this attempt). Only the Python API
    can set them (tests inject failures and crashes through them)."""
    started = time.perf_counter()
    process_file = process_file or functools.partial(analyze_track, segment_seconds=segment_seconds)
    input_uri, output_uri = fs.absolute(input_uri), fs.absolute(output_uri)
    files = fs.list_files(input_uri, AUDIO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{input_uri}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    previous = _read_previous(output_uri, sample_rate, segment_seconds)
    done = dict(zip(previous["tracks"]["path"].to_pylist(), previous["tracks"]["sha256"].to_pylist()))
    parts = ResultParts(output_uri, run_id(input_uri, sample_rate, segment_seconds))
    earlier = parts.read(set(files), columns=["path", "sha256"])
    in_parts = dict(zip(earlier["path"].to_pylist(), earlier["sha256"].to_pylist()))
    if in_parts:
        logger.info("resuming from %s: %d of %d file(s) done by an earlier attempt", parts.uri, len(in_parts),
                    len(files))  # fmt: skip
    else:
        logger.info("writing results as they come to %s (the same command resumes from there)", parts.uri)
    workers = min(workers or int(ray.cluster_resources().get("CPU", 1)), len(files))
    logger.info("analysing %d file(s) from %s with %d worker(s)", len(files), input_uri, workers)

    # One file per block and one batch in flight per actor: an idle actor takes the next batch, so
    # the work shares out evenly to the last file.
    dataset = ray.data.from_items([{"path": path} for path in files], override_num_blocks=len(files)).map_batches(
        FeatureExtractor,
        fn_constructor_kwargs={
            "sample_rate": sample_rate,
            "done": done,
            "process_file": process_file,
            "file_timeout_s": file_timeout_s,
            "in_parts": in_parts,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
        num_cpus=1,
        runtime_env={"env_vars": {"NUMBA_CACHE_DIR": numba_cache_dir or default_numba_cache_dir()}},
    )
    fresh = _write_parts(dataset, parts, len(files), on_part)
    # This run's rows, of this attempt and of earlier ones: what an uninterrupted run would have computed.
    results = parts.read(set(files)).sort_by("path")
    missing = set(files) - set(results["path"].to_pylist())
    if missing:
        raise RuntimeError(
            f"{len(missing)} file(s) have no result in {parts.uri}, e.g. {sorted(missing)[0]}: were the parts "
            "removed while this ran (another run of the same command)? Run it again."
        )

    new = _split_results(results)
    analysed = pc.filter(results["path"], pc.invert(results["skipped"]))
    tables = {
        "tracks": _merge(previous["tracks"], new["tracks"], "path", analysed, ["path"]),
        "segments": _merge(previous["segments"], new["segments"], "track_path", analysed, ["track_path", "segment"]),
        "errors": _merge(previous["errors"], new["errors"], "path", results["path"], ["path"]),
    }
    filesystem, path = fs.resolve(output_uri)
    filesystem.create_dir(path, recursive=True)
    written = {}
    # Tracks last: they decide what a rerun skips, so a run cut short here is redone, not half kept.
    for name in ("segments", "errors", "tracks"):
        written[f"{name}_uri"] = fs.join(output_uri, f"{name}.parquet")
        table = tables[name].replace_schema_metadata(_metadata(sample_rate, segment_seconds))
        pq.write_table(table, f"{path}/{name}.parquet", filesystem=filesystem)
    # Published: the parts have served. A crash before this line leaves them, and a rerun ends here again.
    parts.remove()
    wall_s = time.perf_counter() - started

    audio_s = float(pc.sum(new["tracks"]["duration"]).as_py() or 0.0)
    summary = {
        "files": len(files),
        "skipped": int(pc.sum(results["skipped"]).as_py()),
        "analysed": len(new["tracks"]),
        "errors": len(new["errors"]),
        "segments": len(new["segments"]),
        "resumed": len(files) - fresh["files"],  # files whose rows an earlier attempt wrote
        "parts": fresh["parts"],
        "audio_hours": audio_s / 3600,
        "wall_s": wall_s,
        # This attempt's audio: what an earlier attempt analysed took none of this wall time.
        "audio_s_per_s": fresh["audio_s"] / wall_s,
        # From the first batch begun to the last one done: the rate once the workers are up.
        "analysis_s": fresh["analysis_s"],
        "worker_warmup_s": fresh["warmup_s"],
        "first_errors": list(zip(new["errors"]["path"].to_pylist(), new["errors"]["reason"].to_pylist()))[
            :ERRORS_SHOWN
        ],
        "feature_version": FEATURE_VERSION,
        **written,
    }
    _log_summary(summary, tables)
    return summary


def _write_parts(
    dataset: ray.data.Dataset, parts: ResultParts, total: int, on_part: Callable[[int, str, pa.Table], None] | None
) -> dict:
    """Write the rows of ``dataset`` as parts as the actors produce them; returns figures of this attempt."""
    fresh = {"files": 0, "parts": 0, "audio_s": 0.0, "warmup_s": 0.0, "analysis_s": 0.0}
    begun, ended, resumed = float("inf"), float("-inf"), 0
    batches = iter(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    try:
        for batch in batches:
            rows = batch.filter(pc.invert(batch["in_part"]))
            resumed += len(batch) - len(rows)
            if not len(rows):
                continue
            uri = parts.write(rows)
            fresh["files"] += len(rows)
            fresh["parts"] += 1
            analysed = rows.filter(pc.and_(rows["ok"], pc.invert(rows["skipped"])))
            fresh["audio_s"] += float(pc.sum(analysed["duration"]).as_py() or 0.0)
            fresh["warmup_s"] = max(fresh["warmup_s"], float(pc.max(rows["warmup_s"]).as_py()))
            begun = min(begun, float(pc.min(rows["started_at"]).as_py()))
            ended = max(ended, float(pc.max(rows["finished_at"]).as_py()))
            logger.info("wrote %s: %d file(s), %d of %d done", uri, len(rows), fresh["files"] + resumed, total)
            if on_part is not None:
                on_part(fresh["parts"] - 1, uri, rows)
    finally:
        # Stops the actors at once if the loop failed, rather than when the iterator is collected.
        if hasattr(batches, "close"):
            batches.close()
    if fresh["parts"]:
        fresh["analysis_s"] = ended - begun
    return fresh


def _log_summary(summary: dict, tables: dict[str, pa.Table]) -> None:
    logger.info("%(files)d file(s): %(analysed)d analysed, %(skipped)d already done, %(errors)d error(s)", summary)
    if summary["resumed"]:
        logger.info("%(resumed)d file(s) of them were done by an earlier attempt of this run", summary)
    logger.info(
        "%.3f h of audio in %.1f s: %.1f s of audio per second (worker warm-up %.1f s, analysis %.1f s)",
        summary["audio_hours"],
        summary["wall_s"],
        summary["audio_s_per_s"],
        summary["worker_warmup_s"],
        summary["analysis_s"],
    )
    for path, reason in summary["first_errors"]:
        logger.warning("error: %s: %s", path, reason)
    if summary["errors"] > ERRORS_SHOWN:
        logger.warning("... and %d more errors", summary["errors"] - ERRORS_SHOWN)
    for name in ("tracks", "segments", "errors"):
        logger.info("wrote %s (%d rows)", summary[f"{name}_uri"], len(tables[name]))


def read_tracks(features_uri: str):
    """The extraction job's track table under ``features_uri``; raises ValueError if its features are of
    another version than this code computes (queries would be compared with other numbers)."""
    uri = fs.join(features_uri, "tracks.parquet")
    if not fs.exists(uri):
        raise FileNotFoundError(f"{uri}: no track table; run jobs.extract_features with --output {features_uri}")
    filesystem, path = fs.resolve(uri)
    table = pq.read_table(path, filesystem=filesystem)
    version = (table.schema.metadata or {}).get(b"encore.feature_version", b"").decode()
    if version != FEATURE_VERSION:
        raise ValueError(f"{uri} holds features of version {version!r}, this code computes {FEATURE_VERSION!r}")
    return table.to_pandas()
