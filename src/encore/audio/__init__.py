"""Audio analysis: decoding and the GTZAN feature schema.

``schema`` holds the column names and constants and imports nothing heavy, so a driver can use it
without loading librosa. ``features`` decodes audio bytes and computes the features (librosa,
soundfile). ``isolation`` runs work in a forked child so that a native crash is reported, not fatal.
Here: the error of unusable audio and the limits of decoding, which a caller sets without loading librosa.
"""

import math
from dataclasses import dataclass

from encore.core.errors import InputError


class AudioDecodeError(InputError, ValueError):
    """Audio that cannot be analysed; ``reason`` is one of ``empty``, ``unsupported``, ``corrupt``,
    ``truncated``, ``silent``, ``too_short``, or a limit of its header: ``too_many_channels``,
    ``sample_rate_too_high``, ``too_long``; the message starts with it."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)  # both in args, so that the error pickles
        self.reason, self.detail = reason, detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class AudioLimits:
    """What decoding one file may cost, read from its header before decoding: the samples decoded are
    at most ``seconds * sample_rate * channels``. The defaults (the extraction job's) bound nothing."""

    seconds: float = math.inf
    channels: float = math.inf
    sample_rate: float = math.inf


NO_LIMITS = AudioLimits()
