"""The composer's token vocabulary, and pieces as sets of sounding pitches per time step.

A piece's music is a list of time steps (:data:`Steps`); a step is the set of MIDI pitches sounding
at that step (an empty step is a rest). :class:`Piece` is a piece with what is known of it, the one
form music takes in the composer between MIDI (or the music21 corpus, or the prepared table) read
in and MIDI written out. As tokens a piece is::

    BOS [conditioning tokens] p1 p2 ... EOS_STEP p1 ... EOS_STEP ...

with each step's pitches in ascending order followed by one ``EOS_STEP``. Writing a set in one
fixed order is what lets the model give a proper distribution over pitch *sets*: the model may only
follow a pitch with a higher pitch or ``EOS_STEP`` (see :mod:`encore.composer.model`), so each set
has exactly one token sequence.

The vocabulary, in order (``VOCAB_SIZE`` entries):

=================  =====  ===============================================================
tokens             count  meaning
=================  =====  ===============================================================
``PAD``            1      padding of a batch; never predicted, never scored
``BOS``            1      start of a piece
``EOS_STEP``       1      end of the current time step
pitch              128    MIDI pitch 0-127 sounding in the current step (``pitch_token``)
style              32     style or composer slot 0-31 (``style_token``); which name a slot
                          stands for depends on the training corpus and is kept with the model
key                24     tonic pitch class x major/minor (``key_token``)
tempo              16     tempo band, geometric from 40 to 240 BPM (``tempo_token``)
meter              10     a common time signature, or "other" (``meter_token``)
=================  =====  ===============================================================

Conditioning tokens (style, key, tempo, meter) come right after ``BOS`` and are given, never
predicted, so the likelihood of a piece is that of its steps given its labels. The JSB Chorales
benchmark uses none: its figure rests on nothing but each chorale's own past.
"""

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from encore.core.errors import InputError
from encore.core.keys import MODES

TOKENIZER_VERSION = "composer-steps/v1"

PAD = 0
BOS = 1
EOS_STEP = 2
PITCH_OFFSET = 3
N_PITCHES = 128
STYLE_OFFSET = PITCH_OFFSET + N_PITCHES
N_STYLES = 32
KEY_OFFSET = STYLE_OFFSET + N_STYLES
TEMPO_OFFSET = KEY_OFFSET + 12 * len(MODES)
# Geometric bands: a tempo is as far from 60 to 66 BPM as from 120 to 132.
TEMPO_BPMS = tuple(round(40 * 6 ** (band / 15)) for band in range(16))
METER_OFFSET = TEMPO_OFFSET + len(TEMPO_BPMS)
METERS = ((2, 2), (2, 4), (3, 4), (4, 4), (5, 4), (3, 8), (6, 8), (9, 8), (12, 8))
OTHER_METER = METER_OFFSET + len(METERS)
VOCAB_SIZE = OTHER_METER + 1

JSB_SPLITS = ("train", "valid", "test")

Steps = list[list[int]]


@dataclass(frozen=True)
class Piece:
    """A piece of music: its steps and what is known of it (None: unknown)."""

    steps: Steps
    step_beats: float  # quarter notes per step
    source: str = ""  # the file it was read from (``music21:<path>`` in the music21 corpus)
    index: int = 0  # its place among the pieces of that file
    title: str = ""
    style: str | None = None
    key: tuple[int, str] | None = None  # (tonic pitch class, "major" | "minor")
    tempo: float | None = None  # quarter notes per minute
    meter: tuple[int, int] | None = None

    def conditions(self, styles: Sequence[str]) -> list[int]:
        """The conditioning tokens of its labels for a model whose style slot i is ``styles[i]``."""
        return conditioning_tokens(styles.index(self.style) if self.style else None, self.key, self.tempo, self.meter)


class DataError(InputError, ValueError):
    """A data file or a piece that cannot be tokenised; the message names the bad entry."""


def pitch_token(pitch: int) -> int:
    if not 0 <= pitch < N_PITCHES:
        raise ValueError(f"pitch {pitch} is outside MIDI 0-127")
    return PITCH_OFFSET + pitch


def is_pitch(token: int) -> bool:
    return PITCH_OFFSET <= token < STYLE_OFFSET


def is_condition(token: int) -> bool:
    return STYLE_OFFSET <= token < VOCAB_SIZE


def style_token(slot: int) -> int:
    if not 0 <= slot < N_STYLES:
        raise ValueError(f"style slot {slot} is outside 0-{N_STYLES - 1}")
    return STYLE_OFFSET + slot


def key_token(tonic: int, mode: str) -> int:
    """``tonic`` is a pitch class (0 = C), ``mode`` is "major" or "minor"."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    return KEY_OFFSET + MODES.index(mode) * 12 + tonic % 12


def key_pitch_classes(tonic: int, mode: str) -> frozenset[int]:
    """The pitch classes a key constraint allows: the major scale, or for minor the natural minor
    plus the raised seventh, since minor-key music leans on its leading tone."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    degrees = (0, 2, 4, 5, 7, 9, 11) if mode == "major" else (0, 2, 3, 5, 7, 8, 10, 11)
    return frozenset((tonic + degree) % 12 for degree in degrees)


def tempo_token(bpm: float) -> int:
    """The band nearest to ``bpm`` on a log scale."""
    if not bpm > 0:
        raise ValueError(f"tempo {bpm} BPM is not positive")
    band = min(range(len(TEMPO_BPMS)), key=lambda index: abs(math.log(TEMPO_BPMS[index] / bpm)))
    return TEMPO_OFFSET + band


def meter_token(numerator: int, denominator: int) -> int:
    meter = (numerator, denominator)
    return METER_OFFSET + METERS.index(meter) if meter in METERS else OTHER_METER


def _step_pitches(step: Iterable, where: str) -> list[int]:
    """The step as ascending distinct MIDI pitches; integral floats (as some JSON files hold) pass."""
    if isinstance(step, str | bytes) or not isinstance(step, Iterable):
        raise DataError(f"{where}: a step must be a list of MIDI pitches, not {step!r}")
    pitches = set()
    for pitch in step:
        if isinstance(pitch, float) and pitch.is_integer():
            pitch = int(pitch)
        if isinstance(pitch, bool) or not isinstance(pitch, int) or not 0 <= pitch < N_PITCHES:
            raise DataError(f"{where}: {pitch!r} is not a MIDI pitch (an integer 0-127)")
        pitches.add(pitch)
    return sorted(pitches)


def encode(steps: Sequence[Iterable[int]], conditions: Sequence[int] = ()) -> list[int]:
    """Tokens of a piece: BOS, the conditioning tokens, then each step's pitches ascending and EOS_STEP.

    A step is read as a set: order and repeats within it do not matter."""
    for token in conditions:
        if not is_condition(token):
            raise ValueError(f"token {token} is not a conditioning token")
    tokens = [BOS, *conditions]
    for index, step in enumerate(steps):
        tokens.extend(PITCH_OFFSET + pitch for pitch in _step_pitches(step, f"step {index}"))
        tokens.append(EOS_STEP)
    return tokens


def transpose(tokens: Sequence[int], semitones: int) -> list[int]:
    """``tokens`` moved by ``semitones``: every pitch, and a key token's tonic with them; other tokens stay.

    The caller keeps the pitches within MIDI 0-127 (see :func:`pitch_span`)."""
    moved = []
    for token in tokens:
        if is_pitch(token):
            token = pitch_token(token - PITCH_OFFSET + semitones)
        elif KEY_OFFSET <= token < TEMPO_OFFSET:
            mode, tonic = divmod(token - KEY_OFFSET, 12)
            token = KEY_OFFSET + mode * 12 + (tonic + semitones) % 12
        moved.append(token)
    return moved


def pitch_span(tokens: Iterable[int]) -> tuple[int, int] | None:
    """Lowest and highest pitch in ``tokens``; None when they hold no pitch."""
    pitches = [token - PITCH_OFFSET for token in tokens if is_pitch(token)]
    return (min(pitches), max(pitches)) if pitches else None


def decode(tokens: Iterable[int]) -> Steps:
    """The complete steps in ``tokens`` (pitches ascending); other tokens and an unfinished last step are left out."""
    steps, current = [], []
    for token in tokens:
        if is_pitch(token):
            current.append(token - PITCH_OFFSET)
        elif token == EOS_STEP:
            steps.append(sorted(current))
            current = []
    return steps


def load_jsb(path: str | os.PathLike) -> dict[str, list[Steps]]:
    """The JSB Chorales JSON (``{"train": [...], "valid": [...], "test": [...]}``), validated.

    Each chorale is a non-empty list of steps and each step a list of MIDI pitches; steps come
    back as ascending distinct ints. A malformed entry raises :class:`DataError` naming it, as in
    ``train[12] step 7``."""
    try:
        with open(path, encoding="utf-8") as source:
            data = json.load(source)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or set(JSB_SPLITS) - set(data):
        raise DataError(f"{path}: expected a JSON object with the keys {', '.join(JSB_SPLITS)}")
    splits = {}
    for split in JSB_SPLITS:
        if not isinstance(data[split], list) or not data[split]:
            raise DataError(f"{path}: {split} must be a non-empty list of chorales")
        chorales = []
        for index, chorale in enumerate(data[split]):
            if not isinstance(chorale, list) or not chorale:
                raise DataError(f"{path}: {split}[{index}] must be a non-empty list of steps")
            chorales.append(
                [_step_pitches(step, f"{path}: {split}[{index}] step {number}") for number, step in enumerate(chorale)]
            )
        splits[split] = chorales
    return splits


def conditioning_tokens(
    style_slot: int | None = None,
    key: tuple[int, str] | None = None,
    tempo: float | None = None,
    meter: tuple[int, int] | None = None,
) -> list[int]:
    """The conditioning tokens of a piece's labels, in the one order the model sees them: style, key,
    tempo, meter. A label that is None (unknown) has no token."""
    tokens = []
    if style_slot is not None:
        tokens.append(style_token(style_slot))
    if key is not None:
        tokens.append(key_token(*key))
    if tempo is not None:
        tokens.append(tempo_token(tempo))
    if meter is not None:
        tokens.append(meter_token(*meter))
    return tokens
