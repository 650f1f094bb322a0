"""Audio analysis: decoding and the GTZAN feature schema.

``schema`` holds the column names and constants and imports nothing heavy, so a driver can use it
without loading librosa. ``features`` decodes audio bytes and computes the features (librosa,
soundfile). ``isolation`` runs work in a forked child so that a native crash is reported, not fatal.
"""


class AudioDecodeError(ValueError):
    """Audio that cannot be analysed; ``reason`` is one of ``empty``, ``unsupported``, ``corrupt``,
    ``truncated``, ``silent``, ``too_short``, and the message starts with it."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)  # both in args, so that the error pickles
        self.reason, self.detail = reason, detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"
