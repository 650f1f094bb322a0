"""The HTTP API's contract: request and response models, and one JSON shape for every error.

Every error answers ``{"error": {"code", "message", "field"}}``; ``field`` names the offending
request field where there is one. Messages never echo request values, so a user id sent in a
malformed request cannot reach a log through an error.
"""

from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from encore.serving import ServingError

MAX_ITEMS = 100


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

    user_id: str = Field(min_length=1, max_length=256, description="the user's id as your systems know it")
    n: int = Field(10, ge=1, le=MAX_ITEMS, description="how many items to return")
    exclude_seen: bool = Field(True, description="leave out items the user already played")
    explain: bool = Field(False, description="give each item the history items it is recommended 'because' of")
    model: str | None = MODEL_REF


class HistoryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    items: list[str] = Field(min_length=1, max_length=MAX_HISTORY, description="item ids the listener played")
    n: int = Field(10, ge=1, le=MAX_ITEMS)
    model: str | None = MODEL_REF


class Item(BaseModel):
    item_id: str
    name: str
    score: float
    because: list[str] | None = Field(None, description="with explain: names of the history items behind it")


class ModelInfo(BaseModel):
    kind: str
    version: str


class RecommendResponse(BaseModel):
    items: list[Item]
    model: ModelInfo
    fallback: Literal["popular"] | None = Field(
        description="'popular' when the user is unknown to the model and gets the most popular items"
    )


class SimilarResponse(BaseModel):
    items: list[Item]
    model: ModelInfo


class Health(BaseModel):
    status: Literal["ok"]
    model: ModelInfo


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_response(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message, "field": field}})


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
    return error_response(422, "invalid_request", f"{field}: {message}" if field else message, field)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 503: "unavailable"}
    return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))


async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message, exc.field)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(500, "internal_error", "the server failed to answer; see the service logs")


def create_app() -> FastAPI:
    app = FastAPI(
        title="Encore",
        version="1",
        description="Music recommendation as a service. User ids are pseudonymised on arrival.",
        responses={
            400: {"model": ErrorResponse},
            404: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
            500: {"model": ErrorResponse},
        },
    )
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(Exception, _unexpected_error)
    return app
