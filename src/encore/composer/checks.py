"""Musical checks of pieces (lists of steps of MIDI pitches), to hold generated music against held-out music.

Every figure counts *note-steps*: a pitch sounding in a step counts once for that step, so a held
half note weighs twice a quarter note, as it does to the ear.

- pitch-class histogram: the share of note-steps on each of the 12 pitch classes; two sets of
  pieces are compared by the total variation distance of their histograms (half the L1
  distance: 0 for the same histogram, 1 for disjoint ones);
- notes per step: the mean number of pitches sounding in a step, rests included;
- pitch range: per piece, highest minus lowest pitch in semitones, averaged over pieces;
- in key: the share of note-steps whose pitch class belongs to the key (:func:`tokens.key_pitch_classes`),
  the piece's requested key if given, else the key :func:`estimate_key` finds in it (a piece in
  which every pitch class sounds as often has none and is left out);
- empty steps: the share of steps in which nothing sounds.

:func:`estimate_key` is :func:`encore.core.keys.find_key` over the piece's note-steps per pitch class.
"""

from collections.abc import Sequence

import numpy as np

from encore.composer.tokens import Steps, key_pitch_classes
from encore.core.keys import find_key


def pitch_class_counts(pieces: Sequence[Steps]) -> np.ndarray:
    counts = np.zeros(12)
    for piece in pieces:
        for step in piece:
            for pitch in step:
                counts[pitch % 12] += 1
    return counts


def pitch_class_histogram(pieces: Sequence[Steps]) -> np.ndarray:
    """Share of note-steps on each pitch class (C first); all zeros if nothing sounds."""
    counts = pitch_class_counts(pieces)
    return counts / counts.sum() if counts.sum() else counts


def histogram_distance(first: np.ndarray, second: np.ndarray) -> float:
    """Total variation distance of two pitch-class histograms, in [0, 1]."""
    return float(0.5 * np.abs(first - second).sum())


def estimate_key(piece: Steps) -> tuple[int, str] | None:
    """The likeliest key of ``piece`` as (tonic pitch class, "major" | "minor"); None when every pitch
    class sounds as often (nothing sounds, for one)."""
    found = find_key(pitch_class_counts([piece]))
    return None if found is None else (found.tonic, found.mode)


def in_key_share(piece: Steps, tonic: int, mode: str) -> float:
    """Share of ``piece``'s note-steps in the key; NaN if nothing sounds."""
    allowed = key_pitch_classes(tonic, mode)
    pitches = [pitch for step in piece for pitch in step]
    return sum(pitch % 12 in allowed for pitch in pitches) / len(pitches) if pitches else float("nan")


def statistics(pieces: Sequence[Steps], keys: Sequence[tuple[int, str] | None] | None = None) -> dict:
    """The checks of the module docstring over ``pieces`` (``keys[i]`` is piece i's key, or None to estimate it)."""
    pieces = list(pieces)
    keys = keys or [None] * len(pieces)
    sounding = [(piece, key) for piece, key in zip(pieces, keys) if any(piece)]
    if not sounding:
        raise ValueError("nothing sounds in these pieces: no checks to make")
    steps = [step for piece in pieces for step in piece]
    pitches = [[pitch for step in piece for pitch in step] for piece, _ in sounding]
    keyed = [(piece, key or estimate_key(piece)) for piece, key in sounding]
    keyed = [(piece, key) for piece, key in keyed if key is not None]
    in_key = [in_key_share(piece, *key) for piece, key in keyed]
    in_key_weights = [sum(map(len, piece)) for piece, _ in keyed]
    return {
        "pieces": len(pieces),
        "steps": len(steps),
        "notes_per_step": sum(map(len, steps)) / len(steps),
        "pitch_range": float(np.mean([max(notes) - min(notes) for notes in pitches])),
        "in_key": float(np.average(in_key, weights=in_key_weights)) if keyed else float("nan"),
        "empty_steps": sum(not step for step in steps) / len(steps),
        "pitch_class_histogram": pitch_class_histogram(pieces).tolist(),
    }


def compare(generated: dict, reference: dict) -> dict:
    """Each check of ``generated`` beside ``reference`` (both from :func:`statistics`), and the histogram distance."""
    rows = {
        name: {"generated": generated[name], "reference": reference[name]}
        for name in ("notes_per_step", "pitch_range", "in_key", "empty_steps")
    }
    distance = histogram_distance(
        np.array(generated["pitch_class_histogram"]), np.array(reference["pitch_class_histogram"])
    )
    return {"pitch_class_distance": distance, **rows}
