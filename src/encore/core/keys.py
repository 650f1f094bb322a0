"""Musical keys: their names, and the Krumhansl-Schmuckler estimate of the key of pitch-class weights.

Audio analysis (a chromagram's energy per pitch class) and the composer (a piece's note-steps per
pitch class) both find keys here, so a key is found and written the same way wherever it is shown.

Spelling: a key is written as the key signature with fewer accidentals spells it, as musicians
write it: D♭ major (five flats), not C♯ major (seven sharps), but C♯ minor (four sharps), not
D♭ minor (eight flats). Of the keys with six accidentals either way, F♯ major and E♭ minor are the
spellings most often met. ``#`` and ``b`` stand for the sharp and the flat; :func:`parse_key` reads
any spelling.

Silence: weights that are all equal (nothing sounds, or all twelve pitch classes alike) are no
evidence of any key, so :func:`find_key` returns None and the caller shows "unknown" its own way.
A default such as C major would read as a finding.
"""

from dataclasses import dataclass

import numpy as np

MODES = ("major", "minor")
# Krumhansl and Kessler (1982) probe-tone ratings, tonic first; the method correlates the weights
# with the 24 rotations of these.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
TONIC_NAMES = {
    "major": ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"),
    "minor": ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B"),
}
_NATURALS = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
_ACCIDENTALS = {"": 0, "#": 1, "b": -1}


@dataclass(frozen=True)
class KeyEstimate:
    tonic: int  # pitch class, 0 = C
    mode: str  # "major" | "minor"
    correlation: float  # Pearson correlation of the weights with the key's profile, -1 to 1

    @property
    def name(self) -> str:
        return key_name(self.tonic, self.mode)


def key_name(tonic: int, mode: str) -> str:
    """As in ``"Eb major"``, spelled as the module docstring says."""
    return f"{TONIC_NAMES[mode][tonic % 12]} {mode}"


def parse_key(name: str) -> tuple[int, str]:
    """``"C major"``, ``"F# minor"``, ``"Bb major"`` (in any case, any enharmonic spelling) as (tonic, mode)."""
    tonic_name, _, mode = name.strip().lower().partition(" ")
    natural, accidental = tonic_name[:1], tonic_name[1:]
    if natural not in _NATURALS or accidental not in _ACCIDENTALS or mode not in MODES:
        raise ValueError(f"{name!r} is not a key: write a tonic and a mode, as in 'C major' or 'F# minor'")
    return (_NATURALS[natural] + _ACCIDENTALS[accidental]) % 12, mode


def find_key(weights: np.ndarray) -> KeyEstimate | None:
    """The key whose profile correlates best with ``weights`` (12 pitch-class weights, C first); None
    when every pitch class weighs the same."""
    weights = np.asarray(weights, dtype=float)
    if np.ptp(weights) == 0:
        return None
    best = None
    for mode, profile in zip(MODES, (MAJOR_PROFILE, MINOR_PROFILE)):
        for tonic in range(12):
            correlation = float(np.corrcoef(weights, np.roll(profile, tonic))[0, 1])
            if best is None or correlation > best.correlation:
                best = KeyEstimate(tonic, mode, correlation)
    return best
