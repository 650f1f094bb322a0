"""Prepared pieces: the table ``jobs/prepare_music.py`` writes and ``jobs/train_composer.py`` reads.

``pieces.parquet`` has one row per piece: ``source`` (the file, or ``music21:<path>`` in the music21
corpus), ``piece`` (its index in the file), ``title``, ``style`` ("" when unknown), ``key`` (e.g.
"F# minor"), ``tempo`` (quarter notes per minute, NaN when unknown), ``meter`` (e.g. "3/4", ""
when unknown), ``step_beats`` and ``steps`` (the pitches of each step): a
:class:`~encore.composer.tokens.Piece` a row (:func:`piece_row`, :func:`read_pieces`). Steps rather
than tokens: which style slot a style name gets is decided by the model trained on the table (its
styles, sorted), and the tokens follow from steps and labels by :meth:`Piece.conditions`.

The split is by piece and depends on nothing but the source name and index: a hash puts 10% of
the pieces in valid and 10% in test, the same on every machine and run.
"""

import hashlib
import math
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from encore.composer.corpus import CORPUS_PREFIX, TERMS
from encore.composer.tokens import N_STYLES, DataError, Piece, Steps, load_jsb
from encore.core import fs
from encore.core.keys import key_name, parse_key

PIECES_FILE = "pieces.parquet"
ERRORS_FILE = "errors.parquet"
PIECE_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("piece", pa.int32()),
        pa.field("title", pa.string()),
        pa.field("style", pa.string()),
        pa.field("key", pa.string()),
        pa.field("tempo", pa.float64()),
        pa.field("meter", pa.string()),
        pa.field("step_beats", pa.float64()),
        pa.field("n_steps", pa.int32()),
        pa.field("steps", pa.list_(pa.list_(pa.int16()))),
    ]
)
ERROR_SCHEMA = pa.schema([pa.field("source", pa.string()), pa.field("reason", pa.string())])
SPLIT_BUCKETS = 20  # 2 of 20 to valid, 2 to test


def split_of(source: str, piece: int) -> str:
    bucket = int(hashlib.sha256(f"{source}#{piece}".encode()).hexdigest(), 16) % SPLIT_BUCKETS
    return "valid" if bucket < 2 else "test" if bucket < 4 else "train"


def parse_meter(text: str) -> tuple[int, int] | None:
    """``"3/4"`` as (3, 4); ``""`` as None."""
    if not text:
        return None
    numerator, _, denominator = text.partition("/")
    if not (numerator.isdigit() and denominator.isdigit() and int(numerator) > 0 and int(denominator) > 0):
        raise ValueError(f"{text!r} is not a meter: write it as in '3/4'")
    return int(numerator), int(denominator)


def piece_row(piece: Piece) -> dict:
    """The row of ``pieces.parquet`` that holds ``piece``."""
    return {
        "source": piece.source,
        "piece": piece.index,
        "title": piece.title,
        "style": piece.style or "",
        "key": key_name(*piece.key) if piece.key else "",
        "tempo": float("nan") if piece.tempo is None else float(piece.tempo),
        "meter": f"{piece.meter[0]}/{piece.meter[1]}" if piece.meter else "",
        "step_beats": piece.step_beats,
        "n_steps": len(piece.steps),
        "steps": piece.steps,
    }


def row_piece(row: dict) -> Piece:
    """The piece a row of ``pieces.parquet`` holds."""
    return Piece(
        [list(map(int, step)) for step in row["steps"]],
        float(row["step_beats"]),
        source=row["source"],
        index=int(row["piece"]),
        title=row["title"],
        style=row["style"] or None,
        key=parse_key(row["key"]) if row["key"] else None,
        tempo=None if math.isnan(row["tempo"]) else float(row["tempo"]),
        meter=parse_meter(row["meter"]),
    )


def read_pieces(uri: str) -> list[Piece]:
    """The pieces of ``pieces.parquet`` under ``uri`` (a prepared folder or prefix), checked for one step length."""
    path = fs.join(fs.absolute(uri), PIECES_FILE)
    if not fs.exists(path):
        raise FileNotFoundError(f"{path}: no such file; prepare it with jobs.prepare_music")
    filesystem, inner = fs.resolve(path)
    table = pq.read_table(inner, filesystem=filesystem)
    missing = set(PIECE_SCHEMA.names) - set(table.column_names)
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    rows = table.select(PIECE_SCHEMA.names).to_pylist()
    if not rows:
        raise DataError(f"{path}: holds no pieces")
    step_lengths = sorted({row["step_beats"] for row in rows})
    if len(step_lengths) != 1:
        raise DataError(f"{path}: pieces of several step lengths {step_lengths}")
    return [row_piece(row) for row in rows]


def thin(step: list[int], max_notes: int) -> list[int]:
    """At most ``max_notes`` pitches of ``step``: the bass and the highest ones, which carry the harmony and tune."""
    return step if len(step) <= max_notes else [step[0], *step[len(step) - max_notes + 1 :]]


@dataclass
class Corpus:
    """Training data: steps and conditioning tokens per split, and what a served model must know of them."""

    steps: dict[str, list[Steps]]
    conditions: dict[str, list[list[int]]] | None  # None: unconditioned (JSB Chorales)
    fingerprint: str
    labels: dict[str, list[dict]] | None = None  # style, key, tempo, meter of each window, as a request gives them
    styles: list[str] = field(default_factory=list)  # slot i is styles[i]
    default_style: str | None = None  # the commonest
    step_beats: float = 1.0
    described: dict = field(default_factory=dict)  # for the model's manifest


def load_corpus(data: str, max_steps: int, max_notes: int, min_steps: int = 8) -> Corpus:
    """JSB Chorales from a ``.json`` file, or pieces prepared by ``jobs.prepare_music`` from a folder or prefix.

    Prepared pieces are split (:func:`split_of`), cut into windows of at most ``max_steps`` steps (a
    shorter last window is kept if it has ``min_steps``), and their chords thinned to ``max_notes``."""
    if data.endswith(".json"):
        splits = load_jsb(data)
        fingerprint = "sha256:" + hashlib.sha256(fs.read_bytes(data)).hexdigest()
        # The quarter-note benchmark's steps are quarter notes.
        return Corpus(splits, None, fingerprint, step_beats=1.0, described={"data": data, "format": "jsb"})
    pieces = read_pieces(data)
    named = [piece.style for piece in pieces if piece.style]
    styles = sorted(set(named))
    if len(styles) > N_STYLES:
        raise DataError(f"{data}: {len(styles)} styles; the vocabulary has {N_STYLES} style slots")
    steps, conditions, labels = ({split: [] for split in ("train", "valid", "test")} for _ in range(3))
    thinned = 0
    for piece in pieces:
        split = split_of(piece.source, piece.index)
        tokens = piece.conditions(styles)
        label = {  # what is unknown gets the default a request gets
            "style": piece.style,
            "key": key_name(*piece.key) if piece.key else "C major",
            "tempo": 100.0 if piece.tempo is None else piece.tempo,
            "meter": f"{piece.meter[0]}/{piece.meter[1]}" if piece.meter else "4/4",
        }
        for begin in range(0, len(piece.steps), max_steps):
            window = piece.steps[begin : begin + max_steps]
            if len(window) < min(min_steps, len(piece.steps)):
                continue
            thinned += sum(len(step) > max_notes for step in window)
            steps[split].append([thin(step, max_notes) for step in window])
            conditions[split].append(tokens)
            labels[split].append(label)
    for split, windows in steps.items():
        if not windows:
            raise DataError(f"{data}: no {split} pieces; {len(pieces)} pieces are too few to split 80/10/10")
    described = {
        "data": fs.absolute(data),
        "format": "pieces",
        "pieces": len(pieces),
        "windows": {split: len(windows) for split, windows in steps.items()},
        "thinned_steps": thinned,  # steps that had more pitches than the model sounds at once
    }
    if any(piece.source.startswith(CORPUS_PREFIX) for piece in pieces):
        described["terms"] = TERMS
    fingerprint = "sha256:" + hashlib.sha256(fs.read_bytes(fs.join(fs.absolute(data), PIECES_FILE))).hexdigest()
    return Corpus(
        steps,
        conditions,
        fingerprint,
        labels,
        styles,
        max(styles, key=named.count) if named else None,  # the commonest; of a tie, the first by name
        pieces[0].step_beats,
        described,
    )
