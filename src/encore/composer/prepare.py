"""MIDI files, or the corpus shipped with music21, made into pieces the composer trains on, on Ray Data.

The input is a folder or ``s3://`` prefix of MIDI files (``.mid``, ``.midi``), or
``music21:STYLE,STYLE`` for the music21 corpus (styles in ``encore.composer.corpus.STYLES``;
``music21:all`` for every one). Ray Data tasks parse the files, several per task, spread over the
cluster's workers. A MIDI file's style is the style given, else the name of the folder it sits
in under the input (``jazz/tune.mid`` is "jazz"; a file at the top has none). Keys are estimated
from the notes; tempo and meter are read from the file where it has them.

Written under the output: ``pieces.parquet`` (see ``encore.composer.data``), ``errors.parquet``
(every file that could not be read, with the reason) and ``manifest.json`` (counts, step length,
styles, fingerprint). A file that fails never stops the job and is never dropped silently: it is
an errors row, logged with its reason, and counted in the summary.

``jobs.prepare_music`` is the command line.
"""

import hashlib
import json
import logging
import time
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from encore.composer.corpus import CORPUS_PREFIX, STYLES, corpus_files, parse_corpus_file
from encore.composer.data import ERROR_SCHEMA, ERRORS_FILE, PIECE_SCHEMA, PIECES_FILE, piece_row
from encore.composer.midi import read_midi
from encore.composer.tokens import DataError
from encore.core import fs

logger = logging.getLogger(__name__)

MIDI_SUFFIXES = (".mid", ".midi")
FILES_PER_TASK = 8
ERRORS_SHOWN = 10
# One row per piece, or per failed file (error set, piece -1): fixed types whatever happened, so no
# batch gives Ray Data a column typed null.
RESULT_SCHEMA = pa.schema([*PIECE_SCHEMA, pa.field("error", pa.string())])


def _error_row(source: str, style: str, step_beats: float, reason: str) -> dict:
    return {
        **{name: "" for name in ("source", "title", "style", "key", "meter", "error")},
        "source": source,
        "piece": -1,
        "style": style,
        "tempo": float("nan"),
        "step_beats": step_beats,
        "n_steps": 0,
        "steps": [],
        "error": reason,
    }


def parse_file(source: str, style: str, step_beats: float) -> list[dict]:
    """Result rows of one file: its pieces, or one error row saying why it could not be read."""
    try:
        if source.startswith(CORPUS_PREFIX):
            pieces = parse_corpus_file(source, step_beats)
        else:
            pieces = [read_midi(fs.read_bytes(source), step_beats, name=source)]
    except DataError as error:
        return [_error_row(source, style, step_beats, str(error))]
    except OSError as error:
        return [_error_row(source, style, step_beats, f"{source}: unreadable ({error})")]
    except Exception as error:  # any other failure of one file is that file's error, not the job's
        return [_error_row(source, style, step_beats, f"{source}: {type(error).__name__}: {error}")]
    return [{**piece_row(replace(piece, style=style or None)), "error": ""} for piece in pieces]


def _parse_batch(batch: dict[str, np.ndarray], step_beats: float) -> pa.Table:
    rows = []
    for source, style in zip(batch["source"], batch["style"]):
        rows += parse_file(str(source), str(style), step_beats)
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


def list_sources(input_uri: str, style: str | None, limit: int | None) -> list[tuple[str, str]]:
    """``(source, style)`` of every file to parse."""
    if input_uri.startswith(CORPUS_PREFIX):
        names = input_uri.removeprefix(CORPUS_PREFIX)
        styles = list(STYLES) if names == "all" else [name for name in names.split(",") if name]
        return corpus_files(styles, limit)
    root = fs.absolute(input_uri)
    files = fs.list_files(root, MIDI_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{input_uri}: no MIDI files ({', '.join(MIDI_SUFFIXES)})")
    files = files[:limit] if limit else files

    def folder_style(path: str) -> str:
        parts = path.removeprefix(root).strip("/").split("/")
        return parts[0] if len(parts) > 1 else ""

    return [(path, style if style is not None else folder_style(path)) for path in files]


def fingerprint(pieces: pa.Table) -> str:
    digest = hashlib.sha256()
    for row in pieces.select(["source", "piece", "style", "key", "tempo", "meter", "steps"]).to_pylist():
        digest.update(json.dumps(row, sort_keys=True).encode())
    return "sha256:" + digest.hexdigest()


def prepare(
    input_uri: str, output_uri: str, *, step_beats: float = 0.5, style: str | None = None, limit: int | None = None
) -> dict:
    """Parse every file on Ray Data, write the pieces, errors and manifest; returns the summary."""
    started = time.perf_counter()
    output_uri = fs.absolute(output_uri)
    sources = list_sources(input_uri, style, limit)
    logger.info("parsing %d file(s) from %s in steps of %g beats", len(sources), input_uri, step_beats)
    items = [{"source": source, "style": source_style} for source, source_style in sources]
    results = (
        ray.data.from_items(items, override_num_blocks=max(1, len(items) // FILES_PER_TASK))
        .map_batches(
            _parse_batch, fn_kwargs={"step_beats": step_beats}, batch_size=FILES_PER_TASK, batch_format="numpy"
        )
        .to_arrow_refs()
    )
    results = pa.concat_tables([table.cast(RESULT_SCHEMA) for table in ray.get(results)])
    failed = results.filter(pc.not_equal(results["error"], ""))
    pieces = results.filter(pc.equal(results["error"], "")).select(PIECE_SCHEMA.names)
    pieces = pieces.sort_by([("source", "ascending"), ("piece", "ascending")])
    errors = failed.select(["source", "error"]).rename_columns(ERROR_SCHEMA.names).sort_by("source")

    filesystem, path = fs.resolve(output_uri)
    filesystem.create_dir(path, recursive=True)
    pq.write_table(errors, f"{path}/{ERRORS_FILE}", filesystem=filesystem)
    pq.write_table(pieces, f"{path}/{PIECES_FILE}", filesystem=filesystem)
    styles = pieces["style"].to_pylist()
    summary = {
        "input": input_uri,
        "files": len(sources),
        "files_read": len(sources) - len(errors),
        "errors": len(errors),
        "pieces": len(pieces),
        "steps": int(pc.sum(pieces["n_steps"]).as_py() or 0),
        "step_beats": step_beats,
        "pieces_per_style": {name: styles.count(name) for name in sorted(set(styles))},
        "fingerprint": fingerprint(pieces),
        "wall_s": round(time.perf_counter() - started, 2),
        "pieces_uri": fs.join(output_uri, PIECES_FILE),
        "errors_uri": fs.join(output_uri, ERRORS_FILE),
    }
    fs.write_bytes(fs.join(output_uri, "manifest.json"), (json.dumps(summary, indent=2) + "\n").encode())
    logger.info(
        "%(files)d file(s): %(files_read)d read into %(pieces)d pieces (%(steps)d steps), %(errors)d error(s), "
        "in %(wall_s).1f s",
        summary,
    )
    for source, reason in list(zip(errors["source"].to_pylist(), errors["reason"].to_pylist()))[:ERRORS_SHOWN]:
        logger.warning("error: %s", reason if reason.startswith(source) else f"{source}: {reason}")
    if len(errors) > ERRORS_SHOWN:
        logger.warning("... and %d more errors in %s", len(errors) - ERRORS_SHOWN, summary["errors_uri"])
    return summary
