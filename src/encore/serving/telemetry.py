"""Encore's operational metrics, through ``ray.util.metrics``: Ray exports them from every process that
records them, on the node's Prometheus endpoint and the dashboard's Metrics tab, with the prefix
``ray_`` (a counter also gains the suffix ``_total``: ``encore_requests`` is scraped as
``ray_encore_requests_total``).

- per request, by the ingress's middleware :class:`RequestMetrics`: ``encore_requests`` (endpoint,
  status, model_version), ``encore_request_seconds`` (endpoint, model_version), ``encore_errors`` (endpoint,
  code) and ``encore_shed`` (endpoint, reason: ``overloaded`` for a 503 of a full queue, ``rate_limited``
  for a 429);
- per model version a replica's :class:`encore.serving.versions.VersionCache` resolves: ``encore_model_cache``
  (family, result: ``hit`` when the version was already loaded, ``miss`` when it had to be loaded,
  ``refused`` when it could not be served) and ``encore_model_load_seconds`` (family, kind, version).

Tags are bounded: ``endpoint`` is the route's template (``/v1/items/{item_id}/similar``, never the path
a client sent), ``unmatched`` for a path no route takes; ``model_version`` is the version that answered
(:func:`served`), ``none`` for an answer no model gave; error codes are the service's own. A version or
code beyond the first :data:`MAX_TAG_VALUES` a process saw, or not shaped like one, is ``other``. No
user id, request value or raw path reaches a tag.

The metric objects are made lazily, in the process that records first (a Serve replica), and only
while Ray is initialised: elsewhere (a test without Ray, a command-line tool) recording does nothing.
"""

import asyncio
import contextvars
import re
import sys
import threading
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Seconds: a recommendation takes milliseconds, a composition or an upload's analysis up to its budget.
REQUEST_SECONDS_BOUNDARIES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60]
LOAD_SECONDS_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300]
NONE, OTHER, UNMATCHED = "none", "other", "unmatched"
MAX_TAG_VALUES = 64  # distinct versions (or error codes) one process tags, the others counted as "other"
SHED = {"overloaded": "overloaded", "rate_limited": "rate_limited"}  # error code -> shed reason
CLIENT_GONE = 499  # the status tagged, and code client_gone, when the client went away before an answer (nginx's)
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_CODE = re.compile(r"[a-z][a-z0-9_]{0,47}")

# name -> (kind, description, tag keys, histogram boundaries): the names the Grafana dashboard may query.
METRICS = {
    "encore_requests": (
        "counter",
        "HTTP requests answered by the ingress, by route template, status code and the model version that answered",
        ("endpoint", "status", "model_version", "arm"),
        None,
    ),
    "encore_request_seconds": (
        "histogram",
        "seconds from a request's arrival at the ingress to the end of its answer",
        ("endpoint", "model_version", "arm"),
        REQUEST_SECONDS_BOUNDARIES,
    ),
    "encore_errors": ("counter", "error answers of the ingress, by error code", ("endpoint", "code"), None),
    "encore_shed": (
        "counter",
        "requests refused to protect the service: overloaded (503, a queue is full) or rate_limited (429)",
        ("endpoint", "reason"),
        None,
    ),
    "encore_model_load_seconds": (
        "histogram",
        "seconds a replica took to load a model version from the store (read, verify, build)",
        ("family", "kind", "version"),
        LOAD_SECONDS_BOUNDARIES,
    ),
    "encore_model_cache": (
        "counter",
        "a replica's lookups of the version a name resolves to among its loaded versions: hit, miss (loaded) "
        "or refused (it cannot be served)",
        ("family", "result"),
        None,
    ),
}


def exported_names() -> set[str]:
    """The names Prometheus scrapes for :data:`METRICS`, as Ray exports them."""
    names = set()
    for name, (kind, *_) in METRICS.items():
        if kind == "counter":
            names.add(f"ray_{name}_total")
        else:
            names |= {f"ray_{name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    return names


_metrics: dict[str, Any] | None = None
_lock = threading.Lock()
_seen_versions: set[str] = set()
_seen_codes: set[str] = set()
_seen_arms: set[str] = set()


def _instruments() -> dict[str, Any] | None:
    """This process's metric objects, made at the first use while Ray is initialised; None otherwise."""
    global _metrics
    if _metrics is not None:
        return _metrics
    ray = sys.modules.get("ray")  # never imported for this: a process without Ray records nothing
    if ray is None or not ray.is_initialized():
        return None
    from ray.util.metrics import Counter, Histogram

    with _lock:
        if _metrics is None:
            made = {}
            for name, (kind, description, tags, boundaries) in METRICS.items():
                if kind == "counter":
                    made[name] = Counter(name, description=description, tag_keys=tags)
                else:
                    made[name] = Histogram(name, description=description, boundaries=boundaries, tag_keys=tags)
            _metrics = made
    return _metrics


def _bounded(value: Any, shape: re.Pattern, seen: set[str]) -> str:
    """``value`` as a tag: itself when shaped as expected and among the first few seen, else ``other``."""
    if value in seen:
        return value
    if not isinstance(value, str) or not value:
        return NONE
    if len(seen) >= MAX_TAG_VALUES or not shape.fullmatch(value):
        return OTHER
    seen.add(value)
    return value


class _Request:
    """What the handling of one request tells its metrics."""

    __slots__ = ("version", "arm", "error")

    def __init__(self):
        self.version: str | None = None
        self.arm: str | None = None  # the traffic split's arm (an alias) that answered
        self.error: str | None = None


_current: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("encore_request", default=None)


def served(answer: Any) -> Any:
    """``answer``, unchanged, its model's version noted as the request's ``model_version`` (an answer's
    ``{"model": {"version": ...}}``). A handler returns ``served(await ...)``."""
    request = _current.get()
    if request is not None:
        try:
            request.version = answer["model"]["version"]
            request.arm = answer.get("arm")
        except (KeyError, TypeError, AttributeError):
            pass
    return answer


def failed(code: str) -> None:
    """Note the request's error code (called by ``encore.serving.api.error_response``)."""
    request = _current.get()
    if request is not None:
        request.error = code


class RequestMetrics:
    """Counts and times every HTTP request by route template, status and the model version that answered.
    Plain ASGI (a Starlette ``BaseHTTPMiddleware`` costs a task per request); installed outermost, so the
    time includes the other middleware and the status is the one the client gets. An exception that no
    handler answered reaches Starlette's 500 handler outside this middleware: it is counted as a 500
    ``internal_error`` here."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 0
        request = _Request()
        token = _current.set(request)

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        except asyncio.CancelledError:  # Serve cancels a request whose client went away
            if not status:
                status, request.error = CLIENT_GONE, "client_gone"
            raise
        except Exception:
            if not status:  # Starlette's handler outside answers 500
                status, request.error = 500, "internal_error"
            raise
        finally:
            _current.reset(token)
            record_request(scope, status, request, time.perf_counter() - started)


def _endpoint(scope: Scope) -> str:
    """The template of the route that took the request: FastAPI names its own routes in the scope; a plain
    Starlette route (``/docs``) or a mount (``/web/{path}``) is found among the router's by the app it ran."""
    path = getattr(scope.get("route"), "path", None)
    if path is not None:
        return path
    ran = scope.get("endpoint")
    if ran is not None:
        for route in getattr(scope.get("router"), "routes", ()):
            if getattr(route, "endpoint", None) is ran:
                return route.path
            if getattr(route, "app", None) is ran and hasattr(route, "routes"):  # a Mount
                return route.path + "/{path}"
    return UNMATCHED


def record_request(scope: Scope, status: int, request: _Request, seconds: float) -> None:
    metrics = _instruments()
    if metrics is None:
        return
    endpoint = _endpoint(scope)
    version = _bounded(request.version, _VERSION, _seen_versions)
    arm = _bounded(request.arm, _VERSION, _seen_arms)
    tags = {"endpoint": endpoint, "model_version": version, "arm": arm}
    metrics["encore_requests"].inc(tags={**tags, "status": str(status)})
    metrics["encore_request_seconds"].observe(seconds, tags=tags)
    if status >= 400:
        code = _bounded(request.error, _CODE, _seen_codes)  # "none": an error answered by no handler of ours
        metrics["encore_errors"].inc(tags={"endpoint": endpoint, "code": code})
        reason = SHED.get(request.error)
        if reason is not None:
            metrics["encore_shed"].inc(tags={"endpoint": endpoint, "reason": reason})


def model_cache(family: str, result: str) -> None:
    """One lookup of a resolved version among a replica's loaded ones: ``hit``, ``miss`` or ``refused``."""
    metrics = _instruments()
    if metrics is not None:
        metrics["encore_model_cache"].inc(tags={"family": family, "result": result})


def model_loaded(family: str, kind: str, version: str, seconds: float) -> None:
    metrics = _instruments()
    if metrics is not None:
        tags = {"family": family, "kind": kind, "version": _bounded(version, _VERSION, _seen_versions)}
        metrics["encore_model_load_seconds"].observe(seconds, tags=tags)
