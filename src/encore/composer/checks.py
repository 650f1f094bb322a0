"""Musical checks of pieces (lists of steps of MIDI pitches), to hold generated music against held-out music.

Every figure counts *note-steps*: a pitch sounding in a step counts once for that step, so a held
half note weighs twice a quarter note, as it does to the ear.

- pitch-class histogram: the share of note-steps on each of the 12 pitch classes; two sets of
  pieces are compared by the total variation distance of their histograms (half the L1
  distance: 0 for the same histogram, 1 for disjoint ones);
- notes per step: the mean number of pitches sounding in a step, rests included;
- pitch range: per piece, highest minus lowest pitch in semitones, averaged over pieces;
- in key: the share of note-steps whose pitch class belongs to the key (:func:`tokens.key_pitch_classes`),
  the piece's requested key if given, else the key :func:`estimate_key` finds in it;
- empty steps: the share of steps in which nothing sounds.

:func:`estimate_key` is the Krumhansl-Schmuckler method: the key whose profile (Krumhansl and
Kessler 1982) correlates best with the piece's pitch-class durations.
"""

from collections.abc import Sequence

import numpy as np

from encore.composer.tokens import MODES, Chorale, key_pitch_classes

# Krumhansl & Kessler (1982) probe-tone ratings, tonic first.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


def key_name(tonic: int, mode: str) -> str:
    return f"{PITCH_NAMES[tonic % 12]} {mode}"


def parse_key(name: str) -> tuple[int, str]:
    """``"C major"``, ``"F# minor"``, ``"Bb major"`` (also ``"c#"``-style lower case) as (tonic, mode)."""
    tonic_name, _, mode = name.strip().partition(" ")
    spellings = {spelled.lower(): index for index, spelled in enumerate(PITCH_NAMES)}
    spellings.update({"db": 1, "d#": 3, "gb": 6, "g#": 8, "a#": 10, "cb": 11, "e#": 5, "fb": 4, "b#": 0})
    if tonic_name.lower() not in spellings or mode not in MODES:
        raise ValueError(f"{name!r} is not a key: write a tonic and a mode, as in 'C major' or 'F# minor'")
    return spellings[tonic_name.lower()], mode


def pitch_class_counts(pieces: Sequence[Chorale]) -> np.ndarray:
    counts = np.zeros(12)
    for piece in pieces:
        for step in piece:
            for pitch in step:
                counts[pitch % 12] += 1
    return counts


def pitch_class_histogram(pieces: Sequence[Chorale]) -> np.ndarray:
    """Share of note-steps on each pitch class (C first); all zeros if nothing sounds."""
    counts = pitch_class_counts(pieces)
    return counts / counts.sum() if counts.sum() else counts


def histogram_distance(first: np.ndarray, second: np.ndarray) -> float:
    """Total variation distance of two pitch-class histograms, in [0, 1]."""
    return float(0.5 * np.abs(first - second).sum())


def estimate_key(piece: Chorale) -> tuple[int, str]:
    """The likeliest key of ``piece`` as (tonic pitch class, "major" | "minor"); C major when silent."""
    counts = pitch_class_counts([piece])
    if not counts.any() or np.all(counts == counts[0]):
        return 0, "major"
    best, best_score = (0, "major"), -np.inf
    for mode, profile in zip(MODES, (MAJOR_PROFILE, MINOR_PROFILE)):
        for tonic in range(12):
            score = np.corrcoef(counts, np.roll(profile, tonic))[0, 1]
            if score > best_score:
                best, best_score = (tonic, mode), score
    return best


def in_key_share(piece: Chorale, tonic: int, mode: str) -> float:
    """Share of ``piece``'s note-steps in the key; NaN if nothing sounds."""
    allowed = key_pitch_classes(tonic, mode)
    pitches = [pitch for step in piece for pitch in step]
    return sum(pitch % 12 in allowed for pitch in pitches) / len(pitches) if pitches else float("nan")


def statistics(pieces: Sequence[Chorale], keys: Sequence[tuple[int, str] | None] | None = None) -> dict:
    """The checks of the module docstring over ``pieces`` (``keys[i]`` is piece i's key, or None to estimate it)."""
    pieces = list(pieces)
    keys = keys or [None] * len(pieces)
    sounding = [(piece, key) for piece, key in zip(pieces, keys) if any(piece)]
    if not sounding:
        raise ValueError("nothing sounds in these pieces: no checks to make")
    steps = [step for piece in pieces for step in piece]
    pitches = [[pitch for step in piece for pitch in step] for piece, _ in sounding]
    in_key = [in_key_share(piece, *(key or estimate_key(piece))) for piece, key in sounding]
    return {
        "pieces": len(pieces),
        "steps": len(steps),
        "notes_per_step": sum(map(len, steps)) / len(steps),
        "pitch_range": float(np.mean([max(notes) - min(notes) for notes in pitches])),
        "in_key": float(np.average(in_key, weights=list(map(len, pitches)))),
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
