"""Pieces to and from MIDI (with pretty_midi), and MIDI to audio.

A piece's steps (:class:`~encore.composer.tokens.Piece`) each hold the set of MIDI pitches sounding
in it, and every step lasts ``step_beats`` quarter notes. Written as MIDI, a pitch that sounds in
consecutive steps is one held note, so the file reads like music in a DAW. Read from MIDI, note
times are taken in beats (ticks over the file's resolution, so the tempo map does not matter) and a
step holds the pitches that sound at its midpoint, plus any note that starts inside it, so short
notes are never lost. The two directions are exact inverses for pieces: steps -> MIDI -> steps
gives the same steps.

Reading is bounded before any work that grows with the music: mido's parse of the raw messages (linear
in the file's bytes) is counted against :class:`MidiLimits` (tracks, events, notes, length in steps)
before pretty_midi builds notes or steps are made, so a small file cannot declare hours of stacked
notes. A step's length in beats does not depend on the tempo, so the length is bounded in beats, not
seconds; a render bounds seconds itself.

Audio: :func:`render_wav` plays the MIDI's instrument (its General MIDI program) with FluidSynth
and a General MIDI soundfont when the ``fluidsynth`` module (pyfluidsynth, over libfluidsynth) can
be imported, and otherwise with a small additive synthesiser built in here, so that any machine
renders sound. The project's setup installs libfluidsynth and the FluidR3 GM soundfont where it
can (``scripts/install_fluidsynth.sh``). The soundfont is ``$ENCORE_SOUNDFONT``, else the first of
:data:`SOUNDFONT_PATHS` that exists (the system's default GM soundfont first), else the small GM
soundfont shipped inside pretty_midi. A render is bounded before any work: at most
:data:`MAX_RENDER_SECONDS` of music, at a sample rate of at most :data:`MAX_SAMPLE_RATE`.
"""

import io
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import mido
import numpy as np
import pretty_midi
import soundfile

from encore.composer.checks import estimate_key
from encore.composer.tokens import DataError, Piece, Steps

SOUNDFONT_PATHS = (
    "/usr/share/sounds/sf2/default-GM.sf2",  # Debian's choice among installed GM soundfonts (update-alternatives)
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
)
RESOLUTION = 480  # ticks per quarter note: every step length down to a 32nd triplet is a whole number of ticks
SAMPLE_RATE = 22_050
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8_000, 48_000
MAX_RENDER_SECONDS = 300.0  # of music: 13 MB of WAV at SAMPLE_RATE, rendered by FluidSynth in about 3 s
# The renders ring on this long after the last note ends: FluidSynth's releases and reverb have died away
# by then (an organ or a choir is still loud a quarter of a second after its note ends).
RELEASE_SECONDS = 1.0
# General MIDI program numbers (0-based: the GM list's number minus one).
PIANO, CHURCH_ORGAN, VIOLIN, STRING_ENSEMBLE, CHOIR_AAHS, FLUTE = 0, 19, 40, 48, 52, 73
MAX_MIDI_STEPS = 100_000  # a primer longer than this is not a primer


class MidiError(DataError):
    """A MIDI file that cannot be read as a piece; the message names the file and what is wrong."""


class MidiTooLarge(MidiError):
    """A MIDI file over one of its :class:`MidiLimits`: refused from the scan, before it is read as music."""


@dataclass(frozen=True)
class MidiLimits:
    """What one MIDI file may hold. A corpus file gets the defaults, well beyond any real piece (a symphony
    in one file is some 100,000 events); a primer gets tighter ones (``encore.composer.service``).

    pretty_midi's work grows with ``events`` and ``tracks``, sorting notes with ``notes``, and the
    steps made with ``steps`` (times the 128 pitches a step can hold)."""

    tracks: int = 256
    events: int = 500_000
    notes: int = 200_000
    steps: int = MAX_MIDI_STEPS


@dataclass(frozen=True)
class MidiScan:
    """What mido's parse of a file's messages says, before any note is built."""

    tracks: int
    events: int
    notes: int  # note-ons with a velocity
    ticks_per_beat: int
    end_tick: int  # of the last note-off (or note-on of velocity 0): where the music ends


def scan_midi(midi: mido.MidiFile) -> MidiScan:
    """Count a parsed file's tracks, events and notes, and find where its last note ends (one pass, no notes built)."""
    events = notes = end_tick = 0
    for track in midi.tracks:
        tick = 0
        events += len(track)
        for message in track:
            tick += message.time
            if message.type == "note_on" and message.velocity > 0:
                notes += 1
            elif message.type in ("note_on", "note_off"):
                end_tick = max(end_tick, tick)
    return MidiScan(len(midi.tracks), events, notes, midi.ticks_per_beat, end_tick)


def check_limits(scan: MidiScan, limits: MidiLimits, step_beats: float, name: str) -> None:
    """Raise :class:`MidiTooLarge`, naming the first limit the file is over and the limit."""
    if scan.ticks_per_beat < 1:
        raise MidiError(f"{name}: not a readable MIDI file (its time division is {scan.ticks_per_beat} ticks a beat)")
    beats = scan.end_tick / scan.ticks_per_beat
    over = [
        (scan.tracks, limits.tracks, "tracks"),
        (scan.events, limits.events, "events"),
        (scan.notes, limits.notes, "notes"),
        (math.ceil(beats / step_beats - 1e-9), limits.steps, f"steps of {step_beats:g} beats ({beats:.0f} beats)"),
    ]
    for count, limit, what in over:
        if count > limit:
            raise MidiTooLarge(f"{name}: {count:,} {what}, over the limit of {limit:,}")


def parse_midi(source: str | os.PathLike | bytes, name: str) -> mido.MidiFile:
    """mido's parse of a file's raw messages: linear in its bytes. Raises :class:`MidiError` naming the file."""
    try:
        if isinstance(source, bytes):
            return mido.MidiFile(file=io.BytesIO(source))
        return mido.MidiFile(str(source))
    except FileNotFoundError:
        raise MidiError(f"{name}: no such file") from None
    except EOFError:
        raise MidiError(f"{name}: not a readable MIDI file (it ends in the middle of a chunk: truncated?)") from None
    except Exception as error:  # mido raises many types for damaged files; all mean the same here
        raise MidiError(f"{name}: not a readable MIDI file ({type(error).__name__}: {error})") from None


def steps_to_midi(
    steps: Sequence[Iterable[int]],
    tempo: float,
    step_beats: float = 1.0,
    meter: tuple[int, int] | None = None,
    program: int = PIANO,
    velocity: int = 80,
) -> pretty_midi.PrettyMIDI:
    """A one-track MIDI of ``steps`` at ``tempo`` quarter notes per minute, each step ``step_beats`` long."""
    if not tempo > 0 or not step_beats > 0:
        raise ValueError(f"tempo ({tempo}) and step_beats ({step_beats}) must be positive")
    midi = pretty_midi.PrettyMIDI(resolution=RESOLUTION, initial_tempo=float(tempo))
    if meter is not None:
        midi.time_signature_changes.append(pretty_midi.TimeSignature(meter[0], meter[1], 0.0))
    instrument = pretty_midi.Instrument(program=program)
    seconds_per_beat = 60.0 / tempo
    instrument.notes = [
        pretty_midi.Note(velocity, pitch, start * seconds_per_beat, end * seconds_per_beat)
        for pitch, start, end in steps_to_notes(steps, step_beats)
    ]
    midi.instruments.append(instrument)
    return midi


def steps_to_notes(steps: Sequence[Iterable[int]], step_beats: float = 1.0) -> list[tuple[int, float, float]]:
    """The notes ``(pitch, start, end)`` in beats of ``steps``, each ``step_beats`` long, in order of start
    and pitch: a pitch held over consecutive steps is one note, as :func:`steps_to_midi` writes it."""
    notes = []
    sounding: dict[int, int] = {}  # pitch -> the step its note began in
    for index, step in enumerate([*steps, []]):  # the empty step at the end closes every note
        pitches = set(step)
        for pitch in sorted(set(sounding) - pitches):
            notes.append((pitch, sounding.pop(pitch) * step_beats, index * step_beats))
        for pitch in sorted(pitches - set(sounding)):
            if not 0 <= pitch < 128:
                raise ValueError(f"step {index}: {pitch} is not a MIDI pitch")
            sounding[pitch] = index
    return sorted(notes, key=lambda note: (note[1], note[0]))


def midi_bytes(midi: pretty_midi.PrettyMIDI) -> bytes:
    buffer = io.BytesIO()
    midi.write(buffer)
    return buffer.getvalue()


def read_midi(
    source: str | os.PathLike | bytes,
    step_beats: float = 1.0,
    name: str | None = None,
    limits: MidiLimits = MidiLimits(),
) -> Piece:
    """The piece in a MIDI file (a path, or the file's bytes with ``name`` for messages and its source).

    Every non-drum track counts. The tempo is the file's at its start, the meter its first time
    signature, the key the one :func:`~encore.composer.checks.estimate_key` hears in the notes, and
    the title the file's name. Raises :class:`MidiError` naming the file when it is not MIDI,
    is damaged or holds no notes, and :class:`MidiTooLarge` when it is over ``limits``, found
    from the scan of its messages before it is read as music."""
    origin = name or ("" if isinstance(source, bytes) else str(source))
    name = origin or "MIDI data"
    if not step_beats > 0:
        raise ValueError(f"step_beats must be positive, not {step_beats}")
    parsed = parse_midi(source, name)
    check_limits(scan_midi(parsed), limits, step_beats, name)
    try:
        midi = pretty_midi.PrettyMIDI(mido_object=parsed)
    except Exception as error:  # pretty_midi raises many types for damaged files; all mean the same here
        raise MidiError(f"{name}: not a readable MIDI file ({type(error).__name__}: {error})") from None
    notes = [
        (note.pitch, midi.time_to_tick(note.start) / midi.resolution, midi.time_to_tick(note.end) / midi.resolution)
        for instrument in midi.instruments
        if not instrument.is_drum
        for note in instrument.notes
    ]
    if not notes:
        raise MidiError(f"{name}: holds no notes (drum tracks aside)")
    _, tempi = midi.get_tempo_changes()
    signatures = midi.time_signature_changes
    meter = (signatures[0].numerator, signatures[0].denominator) if signatures else None
    steps = notes_to_steps(notes, step_beats)
    return Piece(
        steps,
        step_beats,
        source=origin,
        title=PurePosixPath(origin).stem,
        key=estimate_key(steps),
        tempo=float(tempi[0]) if len(tempi) else 120.0,
        meter=meter,
    )


def notes_to_steps(notes: Iterable[tuple[int, float, float]], step_beats: float) -> Steps:
    """Steps of ``step_beats`` from notes ``(pitch, start, end)`` in beats (quarter notes).

    A step holds the pitches sounding at its midpoint and those of notes that start inside it. The
    piece starts at beat 0 and ends with the step holding the last note's end.

    A note fills the steps from the one it starts in to the last whose midpoint it sounds at. The
    spans of each pitch are merged before they fill steps, so the work is the notes plus the steps
    each pitch sounds in, however many notes are stacked on one another."""
    notes = [(pitch, start, end) for pitch, start, end in notes if end > start]
    if not notes:
        return []
    eps = 1e-9  # tick arithmetic in floats: a note ending exactly on a step boundary must not leak into it
    n_steps = math.ceil(max(end for _, _, end in notes) / step_beats - eps)
    spans = defaultdict(list)  # pitch -> (first, last) step of each of its notes
    for pitch, start, end in notes:
        first = max(0, math.floor(start / step_beats + eps))
        last = math.ceil(end / step_beats - 0.5 - eps) - 1  # the last step whose midpoint is before the end
        spans[pitch].append((first, max(first, last)))
    steps = [set() for _ in range(n_steps)]
    for pitch, pitch_spans in spans.items():
        filled = -1  # the steps up to this one hold the pitch already
        for first, last in sorted(pitch_spans):
            for index in range(max(first, filled + 1), last + 1):
                steps[index].add(pitch)
            filled = max(filled, last)
    return [sorted(step) for step in steps]


def find_soundfont() -> Path:
    """The General MIDI soundfont FluidSynth renders with (see the module docstring)."""
    configured = os.environ.get("ENCORE_SOUNDFONT")
    if configured:
        if not Path(configured).is_file():
            raise FileNotFoundError(f"ENCORE_SOUNDFONT={configured}: no such file")
        return Path(configured)
    for candidate in SOUNDFONT_PATHS:
        if Path(candidate).is_file():
            return Path(candidate)
    return Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"


def fluidsynth_available() -> bool:
    """Whether libfluidsynth can be loaded: pyfluidsynth is always installed, the system library may not be."""
    try:
        import fluidsynth  # noqa: F401
    except (ImportError, OSError):  # ImportError: no libfluidsynth found; OSError: one found that does not load
        return False
    return True


def render_wav(midi: pretty_midi.PrettyMIDI, sample_rate: int = SAMPLE_RATE) -> tuple[bytes, str]:
    """The MIDI rendered as a 16-bit mono WAV, and the name of what rendered it.

    The audio lasts the MIDI's end time plus :data:`RELEASE_SECONDS`, its peak at 0.8 of full scale.
    Raises ValueError, before rendering, for music longer than :data:`MAX_RENDER_SECONDS` or a sample
    rate outside :data:`MIN_SAMPLE_RATE`-:data:`MAX_SAMPLE_RATE`: a render's time and size follow from
    both."""
    seconds = midi.get_end_time()
    if seconds > MAX_RENDER_SECONDS:
        raise ValueError(f"{seconds:.0f} s of music; at most {MAX_RENDER_SECONDS:g} s are rendered")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"sample rate {sample_rate} is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
    length = int(round((seconds + RELEASE_SECONDS) * sample_rate))
    if fluidsynth_available():
        soundfont = find_soundfont()
        audio = midi.fluidsynth(fs=sample_rate, synthesizer=str(soundfont))
        renderer = f"fluidsynth ({soundfont.resolve().name})"
    else:
        audio = synthesize(midi, sample_rate)
        renderer = "built-in additive synthesiser"
    audio = np.pad(audio[:length], (0, max(0, length - len(audio))))
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    if peak > 0:
        audio = 0.8 * audio / peak
    buffer = io.BytesIO()
    soundfile.write(buffer, audio.astype(np.float32), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue(), renderer


# A plucked-string-like tone: a few harmonics whose amplitudes fall off, a quick attack, an exponential
# decay that is faster for high notes (as on a piano), and a short release so no note ends in a click.
HARMONICS = (1.0, 0.5, 0.25, 0.12, 0.06)
ATTACK_SECONDS = 0.008
NOTE_RELEASE_SECONDS = 0.25


def synthesize(midi: pretty_midi.PrettyMIDI, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The built-in synthesiser: every non-drum note as decaying harmonics, summed (float64, unnormalised)."""
    audio = np.zeros(int(math.ceil((midi.get_end_time() + RELEASE_SECONDS) * sample_rate)) + 1)
    for instrument in midi.instruments:
        if instrument.is_drum:
            continue
        for note in instrument.notes:
            begin = int(note.start * sample_rate)
            held = max(1, int((note.end - note.start) * sample_rate))
            t = np.arange(held + int(NOTE_RELEASE_SECONDS * sample_rate)) / sample_rate
            frequency = 440.0 * 2 ** ((note.pitch - 69) / 12)
            tone = sum(
                weight * np.sin(2 * np.pi * frequency * number * t)
                for number, weight in enumerate(HARMONICS, start=1)
                if frequency * number < sample_rate / 2
            )
            envelope = np.minimum(t / ATTACK_SECONDS, 1.0) * np.exp(-t * (1.0 + frequency / 500.0))
            release = np.clip(1.0 - (t - held / sample_rate) / NOTE_RELEASE_SECONDS, 0.0, 1.0)
            piece = (note.velocity / 127.0) * tone * envelope * release
            end = min(len(audio), begin + len(piece))
            audio[begin:end] += piece[: end - begin]
    return audio
