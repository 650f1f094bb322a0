"""A composition request answered: primer in, MIDI (and WAV) out, with errors the HTTP API can name.

:func:`compose_answer` is the blocking work of one ``POST /v1/compose``; the Serve replica runs it
in a thread so its event loop stays free. Every failure the caller can fix becomes a
:class:`~encore.serving.ServingError` naming the request field.
"""

import base64
import binascii
import time

from encore.composer.compose import ComposerBundle, CompositionError
from encore.composer.midi import MAX_RENDER_SECONDS, MidiError, midi_bytes, read_midi, render_wav, steps_to_midi
from encore.serving import ServingError


class CompositionRequestError(ServingError):
    status, code = 422, "invalid_request"


class UnknownStyleError(ServingError):
    status, code = 422, "unknown_style"


class CompositionTimeout(ServingError):
    status, code = 503, "generation_timeout"


def decode_primer(primer_midi: str, step_beats: float) -> list[list[int]]:
    """The steps of a base64 MIDI primer."""
    try:
        data = base64.b64decode(primer_midi, validate=True)
    except (binascii.Error, ValueError):
        raise CompositionRequestError("primer_midi: not valid base64", "primer_midi") from None
    try:
        return read_midi(data, step_beats, name="primer_midi").steps
    except MidiError as error:
        raise CompositionRequestError(str(error), "primer_midi") from None


def compose_answer(bundle: ComposerBundle, request: dict, time_budget_s: float) -> dict:
    """Compose what ``request`` asks (the fields of ``encore.api.ComposeRequest`` but ``model``).

    Returns ``{"midi", "wav", "renderer", "settings", "seconds"}``, MIDI and WAV in base64. The
    music is written for ``program`` (a General MIDI instrument), by default the one the composer
    records for the style, and rendered with it; with audio, music longer than
    :data:`~encore.composer.midi.MAX_RENDER_SECONDS` is refused before it is composed."""
    began = time.perf_counter()
    request = dict(request)
    primer_midi, audio = request.pop("primer_midi", None), request.pop("audio", False)
    program = request.pop("program", None)
    primer = decode_primer(primer_midi, bundle.step_beats) if primer_midi else None
    try:
        composition = bundle.compose(
            **request,
            primer=primer,
            time_budget_s=time_budget_s,
            max_seconds=MAX_RENDER_SECONDS if audio else None,
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
    answer = {"midi": base64.b64encode(midi_bytes(midi)).decode(), "wav": None, "renderer": None}
    if audio:
        wav, answer["renderer"] = render_wav(midi)
        answer["wav"] = base64.b64encode(wav).decode()
    return {**answer, "settings": settings, "seconds": time.perf_counter() - began}
