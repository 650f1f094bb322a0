"""A composition request answered: primer in, MIDI (and WAV) out, with errors the HTTP API can name.

:func:`compose_answer` is the blocking work of one ``POST /v1/compose``; the Serve replica runs it
in a thread so its event loop stays free. Every failure the caller can fix becomes a
:class:`~encore.core.errors.ServingError` naming the request field.

The time budget counts from the start of the request: reading the primer spends it too, and what is
left bounds sampling. Reading the primer is itself bounded before it starts (:data:`PRIMER_LIMITS`,
and no more steps than the model covers), so the largest primer the API admits is refused in about a
second of parsing rather than decoded for minutes.
"""

import base64
import binascii
import dataclasses
import threading
import time

from encore.composer.compose import ComposerBundle, CompositionError
from encore.composer.midi import (
    MAX_RENDER_SECONDS,
    MidiError,
    MidiLimits,
    MidiTooLarge,
    midi_bytes,
    read_midi,
    render_wav,
    steps_to_midi,
    steps_to_notes,
)
from encore.core.errors import ServingError

# A primer is the opening of a piece the model continues: a few hundred steps of a few voices. These bound
# pretty_midi's work to a fraction of a second; the length in steps is the model's own (see decode_primer).
PRIMER_LIMITS = MidiLimits(tracks=64, events=50_000, notes=20_000)


class CompositionRequestError(ServingError, status=422, code="invalid_request"): ...


class UnknownStyleError(ServingError, status=422, code="unknown_style"): ...


class PrimerTooLarge(ServingError, status=413, code="too_large"): ...


class CompositionTimeout(ServingError, status=503, code="generation_timeout"): ...


def decode_primer(primer_midi: str, step_beats: float, max_steps: int = PRIMER_LIMITS.steps) -> list[list[int]]:
    """The steps of a base64 MIDI primer of fewer than ``max_steps`` steps (the model's length: the new
    music needs a step at least), within :data:`PRIMER_LIMITS`; over a limit it is refused with a 413."""
    try:
        data = base64.b64decode(primer_midi, validate=True)
    except (binascii.Error, ValueError):
        raise CompositionRequestError("primer_midi: not valid base64", "primer_midi") from None
    limits = dataclasses.replace(PRIMER_LIMITS, steps=max_steps - 1)
    try:
        return read_midi(data, step_beats, name="primer_midi", limits=limits).steps
    except MidiTooLarge as error:
        raise PrimerTooLarge(str(error), "primer_midi") from None
    except MidiError as error:
        raise CompositionRequestError(str(error), "primer_midi") from None


def compose_answer(
    bundle: ComposerBundle, request: dict, time_budget_s: float, cancelled: threading.Event | None = None
) -> dict:
    """Compose what ``request`` asks (the fields of ``encore.serving.api.ComposeRequest`` but ``model``).

    Returns ``{"midi", "wav", "renderer", "notes", "settings", "seconds"}``, MIDI and WAV in base64, the
    MIDI's notes as ``{"pitch", "start", "end"}`` in beats (a client draws them without parsing MIDI). The
    music is written for ``program`` (a General MIDI instrument), by default the one the composer
    records for the style, and rendered with it; with audio, music longer than
    :data:`~encore.composer.midi.MAX_RENDER_SECONDS` is refused before it is composed."""
    began = time.perf_counter()
    request = dict(request)
    primer_midi, audio = request.pop("primer_midi", None), request.pop("audio", False)
    program = request.pop("program", None)
    max_steps = bundle.model.config.max_steps
    primer = decode_primer(primer_midi, bundle.step_beats, max_steps) if primer_midi else None
    try:
        composition = bundle.compose(
            **request,
            primer=primer,
            time_budget_s=time_budget_s - (time.perf_counter() - began),
            max_seconds=MAX_RENDER_SECONDS if audio else None,
            cancelled=cancelled,
        )
    except CompositionError as error:
        kind = UnknownStyleError if error.field == "style" else CompositionRequestError
        raise kind(str(error), error.field) from None
    except TimeoutError as error:
        raise CompositionTimeout(f"{error} ({time_budget_s:g} s); ask for fewer bars", "bars") from None
    program = bundle.program(composition.settings["style"]) if program is None else program
    settings = {**composition.settings, "program": program}
    meter = tuple(int(part) for part in settings["meter"].split("/"))
    midi = steps_to_midi(composition.steps, settings["tempo"], bundle.step_beats, meter, program)
    notes = [
        {"pitch": pitch, "start": start, "end": end}
        for pitch, start, end in steps_to_notes(composition.steps, bundle.step_beats)
    ]
    answer = {"midi": base64.b64encode(midi_bytes(midi)).decode(), "wav": None, "renderer": None, "notes": notes}
    if audio:
        wav, answer["renderer"] = render_wav(midi)
        answer["wav"] = base64.b64encode(wav).decode()
    return {**answer, "settings": settings, "seconds": time.perf_counter() - began}
