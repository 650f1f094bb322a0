"""The HTTP API's contract: request and response models, and one JSON shape for every error.

Every error answers ``{"error": {"code", "message", "field"}}``; ``field`` names the offending
request field where there is one. Messages never echo request values, so a user id sent in a
malformed request cannot reach a log through an error.
"""

import asyncio
import logging
import os
import re
import uuid
from collections.abc import Collection
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from encore.core.errors import ServingError
from encore.recsys.bundle import MAX_ANSWER_ITEMS
from encore.serving import telemetry
from encore.serving.versions import MAX_CATALOGUE_VERSIONS, MAX_METRICS

logger = logging.getLogger(__name__)

MAX_ITEMS = MAX_ANSWER_ITEMS
MAX_USER_ID = 256
BODY_TIMEOUT_S = 30.0
# A JSON request's body: the largest valid one is a composition with its primer (MAX_PRIMER_BYTES).
MAX_JSON_BODY_BYTES = 1_000_000
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


MAX_HISTORY = 1000
MODEL_REF = Field(
    None,
    pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
    max_length=200,
    description="the model to answer with: an alias (default: the service's own, usually 'production'), "
    "a version id, or a kind (its newest version)",
)


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    user_id: str = Field(min_length=1, max_length=MAX_USER_ID, description="the user's id as your systems know it")
    n: int = Field(10, ge=1, le=MAX_ITEMS, description="how many items to return")
    exclude_seen: bool = Field(True, description="leave out items the user already played")
    explain: bool = Field(False, description="give each item the history items it is recommended 'because' of")
    model: str | None = MODEL_REF


MAX_BATCH_USERS = 1000


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    users: list[Any] = Field(
        min_length=1,
        max_length=MAX_BATCH_USERS,
        description="user ids as your systems know them; one that is not a valid id gets its own error",
    )
    n: int = Field(10, ge=1, le=MAX_ITEMS, description="how many items to return for each user")
    exclude_seen: bool = Field(True, description="leave out items each user already played")
    model: str | None = MODEL_REF


class HistoryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    items: list[str] = Field(min_length=1, max_length=MAX_HISTORY, description="item ids the listener played")
    n: int = Field(10, ge=1, le=MAX_ITEMS)
    model: str | None = MODEL_REF


class UserTopRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    user_id: str = Field(min_length=1, max_length=MAX_USER_ID, description="the user's id as your systems know it")
    n: int = Field(10, ge=1, le=MAX_ITEMS, description="how many items to return")
    model: str | None = MODEL_REF


class Item(BaseModel):
    item_id: str
    name: str
    score: float
    because: list[str] | None = Field(None, description="with explain: names of the history items behind it")


class ModelInfo(BaseModel):
    kind: str
    version: str


ARM = Field(
    None, description="the arm of the traffic split (an alias) that answered; null when the request named a model"
)


class RecommendResponse(BaseModel):
    items: list[Item]
    model: ModelInfo
    arm: str | None = ARM
    fallback: Literal["popular"] | None = Field(
        description="'popular' when the user is unknown to the model and gets the most popular items"
    )


class PlayedItem(BaseModel):
    item_id: str
    name: str
    plays: float = Field(description="the user's weight for the item in the data the model was fitted on")


class UserTopResponse(BaseModel):
    items: list[PlayedItem] = Field(description="the user's most played items, most played first")
    model: ModelInfo
    arm: str | None = ARM


class SimilarResponse(BaseModel):
    items: list[Item]
    model: ModelInfo


# Bounds of one composition: with the time budget of the Composer deployment, no request holds a replica long.
MAX_BARS = 64
MAX_PRIMER_BYTES = 512_000  # of base64 text: about 380 kB of MIDI


class ComposeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    style: str | None = Field(
        None, max_length=64, description="a style the model knows (an unknown one is refused with the list)"
    )
    key: str = Field("C major", pattern=r"^[A-Ga-g][#b]? (major|minor)$", description="as in 'C major', 'F# minor'")
    tempo: float = Field(100.0, ge=20, le=300, description="quarter notes per minute")
    meter: str = Field("4/4", pattern=r"^([1-9]|1[0-9])/(1|2|4|8|16)$", description="time signature, as in '3/4'")
    bars: int = Field(8, ge=1, le=MAX_BARS, description="length of the new music, after the primer")
    temperature: float | None = Field(
        None,
        gt=0,
        le=3,
        description="below 1 safer, above 1 bolder; default: the composer's own setting (the answer's settings "
        "say which)",
    )
    top_k: int | None = Field(None, ge=1, le=256, description="sample only from the k likeliest tokens")
    top_p: float | None = Field(
        None,
        gt=0,
        le=1,
        description="sample only from the smallest set holding p; with no sampling setting at all in the request, "
        "the composer's own",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="the same seed and settings give the same music")
    constrain_to_key: bool = Field(False, description="only pitches of the key's scale")
    primer_midi: str | None = Field(
        None, max_length=MAX_PRIMER_BYTES, description="base64 MIDI file to continue (its notes open the piece)"
    )
    audio: bool = Field(False, description="also render the music as WAV")
    program: int | None = Field(
        None,
        ge=0,
        le=127,
        description="General MIDI program (0-127, e.g. 19 church organ, 40 violin) the music is written for and "
        "rendered with; default: the one the composer records for the style",
    )
    model: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=200,
        description="the composer to use: an alias (default: the service's own, usually 'composer-production'), "
        "a version id, or 'composer' (the newest)",
    )


class ComposeSettings(BaseModel):
    style: str | None
    key: str
    tempo: float
    meter: str
    bars: int
    steps: int = Field(description="time steps of new music")
    step_beats: float = Field(description="quarter notes per time step")
    primer_steps: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int
    constrain_to_key: bool
    program: int = Field(description="General MIDI program of the MIDI's instrument and the WAV")


class Note(BaseModel):
    pitch: int = Field(description="MIDI pitch, 60 is middle C")
    start: float = Field(description="in quarter notes from the start of the piece")
    end: float


class ComposeResponse(BaseModel):
    midi: str = Field(description="base64 standard MIDI file: the primer, then the new music")
    wav: str | None = Field(description="base64 16-bit mono WAV, when audio was asked for")
    renderer: str | None = Field(description="what rendered the WAV: FluidSynth and its soundfont, or a built-in synth")
    notes: list[Note] = Field(description="the MIDI's notes, primer included, in order of start and pitch")
    settings: ComposeSettings
    seconds: float = Field(description="time spent composing and rendering")
    model: ModelInfo


class ClassifyResponse(BaseModel):
    genres: dict[str, float] = Field(description="probability of each genre for the whole track")
    top_genre: str
    windows: int = Field(description="30-second windows averaged (1 for a track shorter than 30 s)")
    duration: float = Field(description="seconds of audio")
    tempo: float = Field(description="beats per minute, the median of the windows' estimates")
    key: str | None = Field(description="as in 'A minor' (Krumhansl-Schmuckler); none for audio without pitch")
    key_confidence: float | None = Field(description="correlation of the pitch-class profile with the key's, -1 to 1")
    pitch_classes: list[float] = Field(
        min_length=12, max_length=12, description="mean chroma of each pitch class over the windows, C first"
    )
    model: ModelInfo


class Track(BaseModel):
    track_id: str = Field(description="first 16 hex digits of the sha256 of the track's file")
    name: str
    duration: float
    distance: float = Field(description="distance between standardised feature vectors; smaller sounds closer")


class TracksResponse(BaseModel):
    tracks: list[Track]
    model: ModelInfo


class CatalogueAlias(BaseModel):
    alias: str
    version: str
    kind: str
    family: str | None = Field(description="the deployment that serves it: recommender, composer, genre, soundalike")


class CatalogueVersion(BaseModel):
    version: str
    kind: str
    family: str | None
    created_at: str
    aliases: list[str] = Field(description="the aliases that name it")
    metrics: dict[str, float] = Field(
        description=f"its numeric metrics, nested names joined with '.' (as 'test.ndcg@10'), at most {MAX_METRICS}"
    )
    trained_on: str | None = Field(None, description="what it learnt from, where its training recorded it")
    terms: str | None = Field(None, description="the terms of the data it learnt from, which the model inherits")


class ModelsResponse(BaseModel):
    aliases: list[CatalogueAlias]
    versions: list[CatalogueVersion] = Field(
        description=f"the versions aliases name, and the newest others up to {MAX_CATALOGUE_VERSIONS} in all"
    )
    versions_total: int = Field(description="complete versions in the store")


class RefusedVersion(BaseModel):
    alias: str
    version: str
    reason: str


class Arm(BaseModel):
    alias: str
    weight: float = Field(description="its share of the users who name no model, relative to the other arms")
    kind: str
    version: str


class Health(BaseModel):
    status: Literal["ok"]
    model: ModelInfo = Field(description="the version of the first arm of the traffic split")
    arms: list[Arm] = Field(description="the traffic split: each alias, its weight and the version it serves")
    refused: list[RefusedVersion] = Field(
        description="versions an alias names that cannot be served: the version before keeps serving"
    )


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None
    request_id: str | None = Field(description="also in the X-Request-ID header and, for a 500, in the service log")


class UserResult(BaseModel):
    items: list[Item] | None = Field(None, description="null when this user has an error")
    fallback: Literal["popular"] | None = None
    model: ModelInfo | None = None
    arm: str | None = ARM
    error: ErrorBody | None = Field(None, description="this user's own error; the others are answered")


class BatchResponse(BaseModel):
    results: list[UserResult] = Field(description="one per user, in the order of the request")


def batch_result(answer: dict | None, model: dict | None, arm: str | None, error: dict | None = None) -> dict:
    """One user's ``UserResult`` of a batch, every field present: a recommender's ``answer`` (``items`` and
    ``fallback``) with the ``model`` and ``arm`` that gave it, or an ``error``."""
    if answer is None:
        return {"items": None, "fallback": None, "model": model, "arm": arm, "error": error}
    return {"items": answer["items"], "fallback": answer["fallback"], "model": model, "arm": arm, "error": error}


def batch_response(results: list[dict]) -> Response:
    """A ``BatchResponse`` of ``batch_result``s, written to JSON by pydantic's serializer without validating
    them into models first: that validation took half of the time of a 1,000-user batch (benchmarks/RESULTS.md,
    "Bulk"). The results are built whole by ``batch_result``, so they need none."""
    return Response(to_json({"results": results}), media_type="application/json")


class ErrorResponse(BaseModel):
    error: ErrorBody


# What each error status means for a client; every operation lists the ones it can answer.
ERROR_STATUSES = {
    400: "the model cannot do what was asked (not_supported), or the upload is empty or not multipart",
    401: "no valid API key (header X-API-Key or Authorization: Bearer)",
    403: "the key lacks the scope of this operation, or may not select the model asked for",
    404: "unknown model, user, item, track or route",
    405: "the route does not take this method; the Allow header lists those it does",
    408: "the request body did not arrive within the service's deadline (ENCORE_BODY_TIMEOUT_S)",
    411: "an upload without Content-Length",
    413: "the body, an upload, its audio or a MIDI primer is over the service's limits (the message says which)",
    415: "not multipart/form-data, or not a known audio format",
    422: "a field is invalid; `field` names it",
    429: "this key's rate limit is spent; retry after Retry-After seconds",
    500: "the service failed; quote request_id",
    503: "the service is at capacity or the model is unavailable; retry after Retry-After seconds",
}
# Every operation: authentication, rate limits, validation, failures and shedding.
COMMON_STATUSES = (401, 403, 408, 413, 422, 429, 500, 503)
UPLOAD_STATUSES = (400, 411, 415)


def error_statuses(*statuses: int, authenticated: bool = True) -> dict:
    """The ``responses`` of an operation: ``statuses``, and the common ones where it takes an API key."""
    listed = {*statuses, *(COMMON_STATUSES if authenticated else ())}
    return {status: {"model": ErrorResponse, "description": ERROR_STATUSES[status]} for status in sorted(listed)}


def user_error(request: Request, code: str, message: str, field: str | None) -> dict:
    """The error of one part of a request whose other parts are answered (a user of a batch)."""
    return {"code": code, "message": message, "field": field, "request_id": _request_id(request)}


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(
    request: Request, status: int, code: str, message: str, field: str | None = None, headers: dict | None = None
) -> JSONResponse:
    request_id = _request_id(request)
    telemetry.failed(code)
    body = {"error": {"code": code, "message": message, "field": field, "request_id": request_id}}
    return JSONResponse(status_code=status, content=body, headers=headers)


def _field_name(location: tuple) -> str | None:
    # ("body", "n") -> "n", ("query", "n") -> "n"; a body that is not a JSON object has no field.
    parts = [str(part) for part in location if part not in ("body", "query", "path")]
    return ".".join(parts) or None


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    field = _field_name(tuple(first.get("loc", ())))
    message = first.get("msg", "invalid request")
    if first.get("type") == "json_invalid":
        message = "request body is not valid JSON"
    elif first.get("type") == "extra_forbidden":
        message = "unknown field"
    return error_response(request, 422, "invalid_request", f"{field}: {message}" if field else message, field)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed", 408: "body_timeout", 413: "too_large", 503: "unavailable"}
    code = codes.get(exc.status_code, "http_error")
    return error_response(request, exc.status_code, code, str(exc.detail), headers=exc.headers)


async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
    return error_response(request, exc.status, exc.code, exc.message, exc.field, headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("request %s failed", _request_id(request), exc_info=exc)
    return error_response(request, 500, "internal_error", "the server failed to answer; the log has this request_id")


class RequestIds:
    """Gives every request an id: a client quoting it finds the log lines of its request. Behind Serve's
    proxy, the id is the proxy's (``X-Request-ID``, which it also logs and answers); an id that a client
    chose is used only when it is short and plain, since it lands in log lines. Plain ASGI rather than a
    Starlette ``BaseHTTPMiddleware``, which costs a task per request."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = Headers(scope=scope).get("x-request-id")
        request_id = given if given and SAFE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        if given is not None:  # the proxy answers the header itself
            return await self.app(scope, receive, send)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("x-request-id", request_id)
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyBounds:
    """A request's body must arrive within ``ENCORE_BODY_TIMEOUT_S`` seconds (default 30) of its first
    read, or the request is answered 408: a client that sends a byte now and then holds a slot of the
    ingress that long at most. And it may hold at most ``max_bytes`` (413), except on the routes in
    ``own_limits``, which bound their bodies themselves (uploads, by their declared length). The
    deadline is read when the ingress replica builds its middleware, from the replica's environment."""

    def __init__(self, app: ASGIApp, max_bytes: int, own_limits: Collection[str] = ()):
        self.app, self.max_bytes, self.own_limits = app, max_bytes, frozenset(own_limits)
        self.seconds = float(os.environ.get("ENCORE_BODY_TIMEOUT_S", BODY_TIMEOUT_S))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        deadline = asyncio.get_running_loop().time() + self.seconds
        max_bytes = None if scope["path"] in self.own_limits else self.max_bytes
        received, body_done = 0, False

        async def bounded_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # afterwards the app only listens for a disconnect, for as long as it answers
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise StarletteHTTPException(408, f"the body did not arrive within {self.seconds:g} s") from None
            received += len(message.get("body", b""))
            if max_bytes is not None and received > max_bytes:
                raise StarletteHTTPException(413, f"request bodies are limited to {max_bytes:,} bytes")
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, bounded_receive, send)


def create_app(own_body_limits: Collection[str] = ()) -> FastAPI:
    """The API's FastAPI app: error shapes, request ids, body bounds and request metrics
    (:mod:`encore.serving.telemetry`); ``own_body_limits`` are the paths whose routes bound their bodies themselves."""
    app = FastAPI(
        title="Encore",
        version="1",
        description="Music recommendation as a service. User ids are pseudonymised on arrival.",
    )
    app.add_middleware(BodyBounds, max_bytes=MAX_JSON_BODY_BYTES, own_limits=own_body_limits)
    app.add_middleware(RequestIds)  # errors of the deadline carry the id too
    app.add_middleware(telemetry.RequestMetrics)  # added last, so outermost: it times and sees every answer
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(Exception, _unexpected_error)
    return app
