"""Audio uploads as served: reading them in the ingress, classifying and matching them in the replicas.

The ingress only reads the upload's bytes, bounded by ``max_bytes`` (``read_upload``); decoding and
feature computation happen in the genre and sound-alike replicas, in a thread. Before a sample is
decoded, the file's header is held to ``UPLOAD_LIMITS`` (``decode_upload``): at most
``MAX_TRACK_SECONDS`` long, ``MAX_CHANNELS`` channels at ``MAX_SAMPLE_RATE``, so a small file that
declares hours of many channels is refused in milliseconds, and the largest admitted decodes to a
bounded array. Every problem with an upload is an ``UploadError`` naming the ``file`` field: 400 empty
or malformed, 408 not received within the body deadline, 411 without a length, 413 too large or too
long, 415 not multipart or not audio, 422 corrupt, truncated, silent, too short, or of more channels
or a higher sample rate than decoded, 503 when the replica is already receiving its limit of uploads.
"""

import threading

import pandas as pd
from fastapi import Request
from starlette.exceptions import HTTPException

from encore.audio import AudioDecodeError, AudioLimits
from encore.audio.schema import WINDOW_SECONDS
from encore.core.errors import ServingError

MAX_UPLOAD_BYTES = 20_000_000
MAX_TRACK_SECONDS = 600.0
# A longer track is classified from this many 30-second windows spread over it: about 3 s of CPU each.
MAX_CLASSIFY_WINDOWS = 6
# Audio is analysed as mono at 22,050 Hz: more channels are only averaged away, a higher rate only resampled
# down. With these, the largest track decodes 115 M samples, a block at a time (the mono track: 230 MB).
MAX_CHANNELS = 2
MAX_SAMPLE_RATE = 96_000
# A sound-alike query is the middle of the upload, as long as a track of the index (GTZAN's 30-s clips):
# its features cost one window however long the upload.
SIMILAR_EXCERPT_SECONDS = WINDOW_SECONDS
UPLOAD_LIMITS = AudioLimits(seconds=MAX_TRACK_SECONDS, channels=MAX_CHANNELS, sample_rate=MAX_SAMPLE_RATE)
UPLOAD_FIELD = "file"
# Room for the multipart boundaries and part headers around the file itself.
MULTIPART_OVERHEAD = 16_384

# The OpenAPI description of an upload body: the route reads the request itself, so that it can
# refuse an oversize body by its declared length before reading it.
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [UPLOAD_FIELD],
                    "properties": {UPLOAD_FIELD: {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


class UploadError(ServingError):
    """A problem with the uploaded file; each kind is a subclass declaring its status and code."""

    def __init__(self, message: str):
        super().__init__(message, UPLOAD_FIELD)


class EmptyUpload(UploadError, status=400, code="empty_file"): ...


class InvalidMultipart(UploadError, status=400, code="invalid_multipart"): ...


class LengthRequired(UploadError, status=411, code="length_required"): ...


class TooLarge(UploadError, status=413, code="too_large"): ...


class TooLong(UploadError, status=413, code="too_long"): ...


class NotMultipart(UploadError, status=415, code="unsupported_media_type"): ...


class NotAudio(UploadError, status=415, code="not_audio"): ...


class InvalidAudio(UploadError, status=422, code="invalid_audio"): ...


class UnsupportedAudio(UploadError, status=422, code="unsupported_audio"): ...


class MissingFile(UploadError, status=422, code="invalid_request"): ...


class UploadTimeout(UploadError, status=408, code="body_timeout"): ...


class UploadsBusy(UploadError, status=503, code="busy", headers={"Retry-After": "1"}): ...


class UploadSlots:
    """At most ``limit`` uploads read at once by one ingress replica. One more is refused at once
    (503 with Retry-After) rather than queued: uploads arrive at the client's pace, and however slow
    they are, they must not hold the slots that recommendations need."""

    def __init__(self, limit: int):
        self.limit, self.reading = limit, 0

    async def __aenter__(self) -> None:
        if self.reading >= self.limit:
            raise UploadsBusy(f"{self.limit} uploads are being received; retry in a second")
        self.reading += 1

    async def __aexit__(self, *exc_info) -> None:
        self.reading -= 1


# AudioDecodeError.reason -> the error answered; corrupt, truncated, silent and too short audio: InvalidAudio
_DECODE_ERRORS = {
    "empty": EmptyUpload,
    "unsupported": NotAudio,
    "too_long": TooLong,
    "too_many_channels": UnsupportedAudio,
    "sample_rate_too_high": UnsupportedAudio,
}


async def read_upload(request: Request, max_bytes: int = MAX_UPLOAD_BYTES) -> bytes:
    """The bytes of the ``file`` part of a multipart request, at most ``max_bytes``; raises UploadError."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise NotMultipart(f"send the audio as multipart/form-data, field {UPLOAD_FIELD!r}")
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        raise LengthRequired("the request must declare its Content-Length")
    if int(declared) > max_bytes + MULTIPART_OVERHEAD:
        raise TooLarge(f"uploads are limited to {max_bytes:,} bytes, this one declares {declared}")
    try:
        form = await request.form(max_files=1, max_fields=8)
    except HTTPException as error:
        if error.status_code == 408:
            raise UploadTimeout(error.detail) from None
        raise InvalidMultipart(f"the multipart body cannot be parsed: {error.detail}") from None
    upload = form.get(UPLOAD_FIELD)
    if upload is None or isinstance(upload, str):
        raise MissingFile(f"{UPLOAD_FIELD}: an uploaded file is required")
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLarge(f"uploads are limited to {max_bytes:,} bytes")
    return data


def decode_upload(data: bytes, excerpt: float | None = None):
    """Decoded audio of an upload (``encore.audio.features.DecodedAudio``), the middle ``excerpt`` seconds
    only if given; raises UploadError, before decoding for a file over the upload limits."""
    from encore.audio.features import decode  # librosa: in the replicas only

    try:
        return decode(data, limits=UPLOAD_LIMITS, excerpt=excerpt)
    except AudioDecodeError as error:
        raise _DECODE_ERRORS.get(error.reason, InvalidAudio)(f"the file is not usable audio: {error}") from None


def classify_upload(model, data: bytes, cancelled: threading.Event | None = None) -> dict:
    """Genre probabilities of a whole uploaded track: the mean over its 30-second windows, at most
    ``MAX_CLASSIFY_WINDOWS`` of them spread over the track; with its tempo, key and pitch classes, which
    the same analysis finds at no extra cost."""
    from encore.audio.features import analyse_windows

    audio = decode_upload(data)
    track = analyse_windows(audio, max_windows=MAX_CLASSIFY_WINDOWS, cancelled=cancelled)
    genres = model.predict_track(pd.DataFrame(track.windows))
    has_key = bool(track.key)
    return {
        "genres": genres,
        "top_genre": max(genres, key=genres.get),
        "windows": len(track.windows),
        "duration": audio.duration,
        "tempo": track.tempo,
        "key": track.key if has_key else None,
        "key_confidence": track.key_confidence if has_key else None,
        "pitch_classes": track.pitch_classes,
    }


def similar_to_upload(index, data: bytes, n: int) -> dict:
    """The indexed tracks nearest to an uploaded one, by the GTZAN features of its middle
    ``SIMILAR_EXCERPT_SECONDS`` (the whole upload if shorter): only those are decoded and analysed."""
    from encore.audio.features import gtzan_features

    audio = decode_upload(data, excerpt=SIMILAR_EXCERPT_SECONDS)
    features = pd.DataFrame([gtzan_features(audio.samples, audio.sample_rate)])
    return {"tracks": index.similar_to_features(features, n)}
