"""A composer as it is stored and served: the model, the style names of its slots, and its step length.

A bundle folder holds the model's files (``model.pt``, ``config.json``) and ``composer.json``:
``styles`` (slot i is ``styles[i]``), ``default_style`` (the commonest in training), ``step_beats``
(quarter notes per step), ``conditioned`` (whether the model was trained with conditioning
tokens; a JSB Chorales model was not, and is then asked with no prefix at all) and ``programs``
(the General MIDI instrument each style is rendered with, fixed when the model is trained so a
version always sounds the same; a bundle saved before programs were recorded has none, and its
styles get :func:`~encore.composer.corpus.style_program`) and ``sampling`` (the temperature and
top-p a request gets unless it asks for others: chosen for the model by its musical checks on
validation pieces, since a model's best settings depend on how well it is trained).

:meth:`ComposerBundle.compose` turns a request's musical settings into a piece: conditioning
tokens, an optional primer to continue, a length in bars, sampling settings, an optional key
constraint and a time budget.
"""

import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from encore.composer.corpus import style_program
from encore.composer.data import parse_meter, thin
from encore.composer.model import Composer
from encore.composer.tokens import TOKENIZER_VERSION, Steps, conditioning_tokens, decode, encode, key_pitch_classes
from encore.core.errors import InputError
from encore.core.keys import key_name, parse_key

BUNDLE_FILE = "composer.json"
#: Sampling of a bundle that records none: the model's own distribution.
DEFAULT_SAMPLING = {"temperature": 1.0, "top_k": None, "top_p": None}


class CompositionError(InputError, ValueError):
    """A composition request the model cannot honour; ``field`` names the request field at fault."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


@dataclass
class Composition:
    steps: Steps  # the primer's steps, then the new ones
    settings: dict  # everything that decided the music, so it can be asked for again


@dataclass
class ComposerBundle:
    model: Composer
    styles: list[str] = field(default_factory=list)
    default_style: str | None = None
    step_beats: float = 1.0
    conditioned: bool = False
    programs: dict[str, int] = field(default_factory=dict)  # style -> General MIDI program
    sampling: dict = field(default_factory=lambda: dict(DEFAULT_SAMPLING))

    def __post_init__(self):
        unknown = set(self.sampling) - set(DEFAULT_SAMPLING)
        if unknown:
            raise ValueError(f"unknown sampling settings {sorted(unknown)}; known: {sorted(DEFAULT_SAMPLING)}")
        self.sampling = {**DEFAULT_SAMPLING, **self.sampling}
        temperature, top_k, top_p = (self.sampling[name] for name in ("temperature", "top_k", "top_p"))
        if not temperature > 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
            raise ValueError(f"sampling {self.sampling} needs temperature > 0, top_k >= 1 and top_p in (0, 1]")

    def save(self, folder: str | os.PathLike) -> None:
        self.model.save(folder)
        described = {
            "styles": self.styles,
            "default_style": self.default_style,
            "step_beats": self.step_beats,
            "conditioned": self.conditioned,
            "programs": self.programs,
            "sampling": self.sampling,
            "tokenizer": TOKENIZER_VERSION,
        }
        (Path(folder) / BUNDLE_FILE).write_text(json.dumps(described, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "ComposerBundle":
        """The bundle in ``folder``. One without ``composer.json`` was saved before bundles existed,
        when composers were trained on JSB Chorales only: unconditioned, in quarter-note steps."""
        if not (Path(folder) / BUNDLE_FILE).is_file():
            return cls(Composer.load(folder), step_beats=1.0, conditioned=False)
        described = json.loads((Path(folder) / BUNDLE_FILE).read_text())
        if described.pop("tokenizer") != TOKENIZER_VERSION:
            raise ValueError(f"{folder}: made with another tokenizer than {TOKENIZER_VERSION}")
        return cls(Composer.load(folder), **described)

    def program(self, style: str | None) -> int:
        """The General MIDI program the music of ``style`` is rendered with."""
        return self.programs.get(style, style_program(style))

    def steps_for_bars(self, bars: int, meter: tuple[int, int]) -> int:
        """Steps of ``bars`` bars of ``meter`` (a 6/8 bar is 3 quarter notes)."""
        return max(1, round(bars * meter[0] * 4 / meter[1] / self.step_beats))

    def compose(
        self,
        *,
        style: str | None = None,
        key: str = "C major",
        tempo: float = 100.0,
        meter: str = "4/4",
        bars: int = 8,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        primer: Steps | None = None,
        constrain_to_key: bool = False,
        time_budget_s: float | None = None,
        max_seconds: float | None = None,
        cancelled: threading.Event | None = None,
    ) -> Composition:
        """A new piece: ``primer`` (steps, optional) continued by ``bars`` bars.

        Sampling: a request that sets none of ``temperature``, ``top_k`` and ``top_p`` gets the
        bundle's ``sampling``; one that sets any gets its own cuts, and the bundle's temperature if
        it sets none. The settings of the answer say what was used.

        Raises :class:`CompositionError` naming the field for a style the model does not know, a
        malformed key or meter, a primer the model cannot read, a length beyond what the model
        covers, or a piece lasting over ``max_seconds`` at ``tempo`` (refused before sampling, so a
        render's bound costs no work); :class:`TimeoutError` if sampling outruns ``time_budget_s`` or is
        ``cancelled``."""
        config = self.model.config
        if temperature is None and top_k is None and top_p is None:
            temperature, top_k, top_p = (self.sampling[name] for name in ("temperature", "top_k", "top_p"))
        elif temperature is None:
            temperature = self.sampling["temperature"]
        style = style or self.default_style
        if style is not None and style not in self.styles:
            known = ", ".join(self.styles) if self.styles else "none (this model is not conditioned on style)"
            raise CompositionError(f"unknown style {style!r}; this model knows: {known}", "style")
        try:
            tonic, mode = parse_key(key)
        except ValueError as error:
            raise CompositionError(str(error), "key") from None
        try:
            numerator_denominator = parse_meter(meter)
        except ValueError as error:
            raise CompositionError(str(error), "meter") from None
        if numerator_denominator is None:
            raise CompositionError("meter is empty: write it as in '4/4'", "meter")
        # A primer's chords are thinned as the training data's were; its pitches must be ones the model sounds.
        primer = [thin(sorted(set(step)), config.max_notes) for step in (primer or [])]
        outside = [pitch for step in primer for pitch in step if not config.pitch_low <= pitch <= config.pitch_high]
        if outside:
            raise CompositionError(
                f"primer pitches {sorted(set(outside))} are outside the model's {config.pitch_low}-{config.pitch_high}",
                "primer_midi",
            )
        if len(primer) >= config.max_steps:
            raise CompositionError(
                f"the primer is {len(primer)} steps; the model covers {config.max_steps} with the new music",
                "primer_midi",
            )
        new_steps = self.steps_for_bars(bars, numerator_denominator)
        room = config.max_steps - len(primer)
        if new_steps > room:
            bars_room = math.floor(room * self.step_beats * numerator_denominator[1] / 4 / numerator_denominator[0])
            where = f" after a primer of {len(primer)} steps" if primer else ""
            raise CompositionError(
                f"{bars} bars of {meter} are {new_steps} steps; {bars_room} bars fit the model{where}", "bars"
            )
        seconds = (len(primer) + new_steps) * self.step_beats * 60.0 / tempo
        if max_seconds is not None and seconds > max_seconds:
            where = " after the primer" if primer else ""
            raise CompositionError(
                f"{bars} bars of {meter} at tempo {tempo:g}{where} last {seconds:.0f} s; audio is rendered for "
                f"at most {max_seconds:g} s: ask for fewer bars or a faster tempo",
                "bars",
            )
        prefix = []
        if self.conditioned:
            slot = self.styles.index(style) if style is not None else None
            prefix = conditioning_tokens(slot, (tonic, mode), tempo, numerator_denominator)
        tokens = self.model.generate(
            encode(primer, prefix),
            new_steps,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            pitch_classes=key_pitch_classes(tonic, mode) if constrain_to_key else None,
            deadline=None if time_budget_s is None else time.monotonic() + time_budget_s,
            cancelled=cancelled,
        )
        settings = {
            "style": style,
            "key": key_name(tonic, mode),
            "tempo": tempo,
            "meter": meter,
            "bars": bars,
            "steps": new_steps,
            "step_beats": self.step_beats,
            "primer_steps": len(primer),
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "seed": seed,
            "constrain_to_key": constrain_to_key,
        }
        return Composition(decode(tokens), settings)
