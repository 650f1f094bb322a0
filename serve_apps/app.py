"""Encore's Serve application: a FastAPI ingress in front of an autoscaled, batched recommender and
an autoscaled composer (``POST /v1/compose``, answering from its own alias, ``composer-production``),
a genre classifier (``POST /v1/classify``, alias ``genre-production``) and a sound-alike index
(``/v1/tracks/{id}/similar``, ``POST /v1/similar``, alias ``soundalike-production``). The ingress also
serves the web page (``GET /``, files in ``serve_apps/web``), which calls this same API with the key its
user gives it.

A request may name the model it wants (``"model"``: an alias, a version id, or a kind, meaning
its newest version); without one it gets the service's alias (``production`` by default). The
recommender replica resolves names against the model store at most every ``poll_seconds``, so a
moved alias is picked up without a restart, and keeps the last few versions it loaded in memory.
A version that fails its checksums or was built under another pseudonymisation key is refused;
for the service's own alias, the replica keeps serving the version it has. During a change of key
(``ENCORE_ID_KEY_PREVIOUS`` set, see ``encore.privacy.rotation``) versions built under either key are served:
the ingress pseudonymises a user's id under each key, and the version that answers uses its own.

    serve deploy serve_apps/config.yaml        # on a running cluster (see the README)
"""

import asyncio
import html
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import Depends, Query, Request, Security
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from threadpoolctl import threadpool_limits

from encore.audio.warmup import warm_up_numba
from encore.composer.service import compose_answer
from encore.core.errors import ServingError, UnknownModelError
from encore.genre.data import preprocessing as genre_preprocessing
from encore.privacy.ids import id_keys, pseudonyms
from encore.recsys.bundle import RecommenderBundle, preprocessing
from encore.serving import telemetry
from encore.serving.access import Access, Client
from encore.serving.api import (
    MAX_ITEMS,
    MAX_USER_ID,
    UPLOAD_STATUSES,
    BatchRequest,
    BatchResponse,
    ClassifyResponse,
    ComposeRequest,
    ComposeResponse,
    Health,
    HistoryRequest,
    ModelsResponse,
    RecommendRequest,
    RecommendResponse,
    SimilarResponse,
    TracksResponse,
    UserTopRequest,
    UserTopResponse,
    batch_response,
    batch_result,
    create_app,
    error_response,
    error_statuses,
    user_error,
)
from encore.serving.config import DEFAULT_DASHBOARD_URL, ServeAppArgs
from encore.serving.uploads import (
    UPLOAD_BODY,
    UploadSlots,
    classify_upload,
    read_upload,
    similar_to_upload,
)
from encore.serving.versions import (
    FAMILIES,
    Catalogue,
    Names,
    TrafficSplit,
    VersionCache,
    refusal_reason,
    run_until_cancelled,
)
from encore.soundalike.index import preprocessing as soundalike_preprocessing
from encore.store import ModelStore

MODELS_PER_REPLICA = 4
WEB = Path(__file__).resolve().parent / "web"
# The page runs only its own files; the WAV it plays and the MIDI it offers are blob: URLs it makes.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data:; media-src 'self' blob:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)

app = create_app(own_body_limits=["/v1/classify", "/v1/similar"])  # uploads bound their own
app.mount("/web", StaticFiles(directory=WEB), name="web")
API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="a key from `python -m encore.serving.access`"
)
BEARER = HTTPBearer(auto_error=False, description="the same key as a bearer token")


def requires(scope: str) -> Any:
    """The client a request's API key names, admitted to ``scope`` and within its rate (401, 403, 429).
    Checked before the body is validated, so a caller without a key learns nothing of the API."""

    async def admitted(
        key: Annotated[str | None, Security(API_KEY_HEADER)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    ) -> Client:
        access = serve.get_replica_context().servable_object.access
        return access.admit(key or (bearer.credentials if bearer else None), scope)

    return Depends(admitted)


RecommendClient = Annotated[Client, requires("recommend")]
ComposeClient = Annotated[Client, requires("compose")]
ClassifyClient = Annotated[Client, requires("classify")]
CatalogueClient = Annotated[Client, requires("catalogue")]


def web_page(dashboard_url: str) -> str:
    """The page, with the Ray dashboard's address it links to (escaped: it comes from configuration)."""
    page = (WEB / "index.html").read_text()
    return page.replace(DEFAULT_DASHBOARD_URL, html.escape(dashboard_url, quote=True))


@app.exception_handler(BackPressureError)
async def _overloaded(request: Request, exc: BackPressureError) -> JSONResponse:
    """A deployment behind the ingress has its queue full: shed the request now rather than queue it."""
    return error_response(request, 503, "overloaded", "the service is at capacity", headers={"Retry-After": "1"})


# Fractional CPUs: the whole application at its minimum replicas reserves less than one CPU, so a
# 2-CPU node keeps a whole CPU for the 1-CPU tasks of jobs and Tune trials (tests/test_infra.py).
@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=16, max_queued_requests=32)
class Recommender:
    """The recommender versions requests select by name, beyond the service's own aliases (which the ingress
    answers itself): multiplexed by version id, so a request goes to a replica that has its version loaded,
    and each replica holds at most ``MODELS_PER_REPLICA``, the least recently used unloaded first."""

    def __init__(self, store_uri: str):
        torch.set_num_threads(1)  # replicas share the node's cores: one thread each for the numeric work
        self.models = VersionCache(
            ModelStore(store_uri),
            "production",
            kinds=FAMILIES["recommender"].kinds,
            load=FAMILIES["recommender"].load,
            # Versions built under ENCORE_ID_KEY, or under ENCORE_ID_KEY_PREVIOUS during a change of key.
            expected_preprocessing=[preprocessing(fingerprint) for fingerprint in id_keys()],
        )

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def _version(self, version: str) -> tuple[RecommenderBundle, dict]:
        try:
            return await asyncio.to_thread(self.models.load, version)
        except ServingError:
            raise
        except Exception as error:  # checksums, preprocessing, files: a refusal the client may read
            raise UnknownModelError(f"model {version} could not be loaded: {refusal_reason(error)}", "model") from None

    async def answer(self, method: str, *args) -> tuple[Any, dict]:
        """``method`` of the bundle of the version the request was routed for, with its ``{"kind", "version"}``."""
        bundle, info = await self._version(serve.get_multiplexed_model_id())
        return await asyncio.to_thread(getattr(bundle, method), *args), info


# A composition keeps a core busy for up to its time budget: few at once per replica, and more replicas
# (autoscaling in config.yaml) rather than a long queue.
@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=2, max_queued_requests=8)
class Composer:
    def __init__(self, store_uri: str, model_alias: str, poll_seconds: float, time_budget_s: float):
        torch.set_num_threads(1)  # one core per composition: concurrent requests must not fight over threads
        self.models = VersionCache(
            ModelStore(store_uri),
            model_alias,
            kinds=FAMILIES["composer"].kinds,
            load=FAMILIES["composer"].load,
            poll_seconds=poll_seconds,
            capacity=2,
        )
        self.time_budget_s = time_budget_s

    async def compose(self, request: dict) -> dict:
        bundle, info = await self.models.get(request.pop("model"))
        # Sampling is seconds of CPU: in a thread, so the replica's event loop keeps answering.
        answer = await run_until_cancelled(compose_answer, bundle, request, self.time_budget_s)
        return {**answer, "model": info}


# Uploads are decoded and analysed here, in a thread (seconds of CPU per track), never in the ingress.
@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=4, max_queued_requests=8)
class GenreClassifier:
    def __init__(self, store_uri: str, model_alias: str, poll_seconds: float):
        warm_up_numba()  # librosa's compiled code, before the first upload rather than during it
        self.models = VersionCache(
            ModelStore(store_uri),
            model_alias,
            kinds=FAMILIES["genre"].kinds,
            load=FAMILIES["genre"].load,
            poll_seconds=poll_seconds,
            capacity=2,
            expected_preprocessing=genre_preprocessing(),
        )

    async def classify(self, data: bytes, model: str | None) -> dict:
        classifier, info = await self.models.get(model)
        return {**await run_until_cancelled(classify_upload, classifier, data), "model": info}


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=8, max_queued_requests=16)
class Soundalike:
    def __init__(self, store_uri: str, model_alias: str, poll_seconds: float):
        warm_up_numba()
        self.models = VersionCache(
            ModelStore(store_uri),
            model_alias,
            kinds=FAMILIES["soundalike"].kinds,
            load=FAMILIES["soundalike"].load,
            poll_seconds=poll_seconds,
            capacity=2,
            expected_preprocessing=soundalike_preprocessing(),
        )

    async def similar_to_track(self, track_id: str, n: int, model: str | None) -> dict:
        index, info = await self.models.get(model)
        return {"tracks": index.similar(track_id, n), "model": info}

    async def similar_to_upload(self, data: bytes, n: int, model: str | None) -> dict:
        index, info = await self.models.get(model)
        return {**await asyncio.to_thread(similar_to_upload, index, data, n), "model": info}


# The ingress answers the recommendations of the service's aliases itself, from models it holds: a few
# milliseconds of numeric work each, where another hop to a replica cost more than the work (see
# benchmarks/RESULTS.md, "Serving under load"). It awaits the other deployments and the clients' bodies.
# Load beyond its bound is shed by Serve before the request reaches the app: a request that finds
# max_ongoing_requests at work and max_queued_requests waiting is answered 503 with Retry-After by the
# replica's HTTP server itself, in milliseconds under load, where a check inside the app waited its turn
# behind the requests in progress (a tenth of a second and more, measured).
@serve.deployment(
    ray_actor_options={"num_cpus": 0.05},  # two of them (config.yaml)
    max_ongoing_requests=16,
    max_queued_requests=16,
    backpressure_config=BackpressureConfig(status_code=503, retry_after_s=1),
)
@serve.ingress(app)
class EncoreAPI:
    def __init__(
        self,
        recommender: DeploymentHandle,
        composer: DeploymentHandle,
        genres: DeploymentHandle,
        soundalike: DeploymentHandle,
        args: ServeAppArgs,
    ):
        torch.set_num_threads(1)  # the replicas share the node's cores: one thread each for the numeric work
        threadpool_limits(1)
        self.recommender = recommender
        self.composer = composer
        self.genres, self.soundalike, self.max_upload_bytes = genres, soundalike, args.max_upload_bytes
        self.uploads = UploadSlots(args.max_concurrent_uploads)
        self.keys = id_keys()  # {fingerprint: key}: ENCORE_ID_KEY, and ENCORE_ID_KEY_PREVIOUS during a change
        self.split = TrafficSplit(args.traffic_split)
        store = ModelStore(args.store_uri)
        self.recommenders = VersionCache(
            store,
            self.split.arms[0],
            kinds=FAMILIES["recommender"].kinds,
            load=FAMILIES["recommender"].load,
            poll_seconds=args.poll_seconds,
            capacity=2 * len(self.split.arms),  # each arm's version, and the next one while an alias moves
            # Versions built under ENCORE_ID_KEY, or under ENCORE_ID_KEY_PREVIOUS during a change of key.
            expected_preprocessing=[preprocessing(fingerprint) for fingerprint in self.keys],
        )
        self.names = Names(store, FAMILIES["recommender"].kinds, args.poll_seconds)
        self.catalogue = Catalogue(store, max_age_seconds=args.poll_seconds)
        self.access = Access(args.api_keys_file, args.served_aliases)
        self.page = web_page(args.dashboard_url)

    def _arm(self, ref: str | None, user_key: dict[str, str] | None) -> tuple[str, str | None]:
        """The name that answers, and the arm of the traffic split if the request named no model: drawn by the
        user's pseudonym under the current key, the first arm for a request without a user."""
        if ref is not None:
            return ref, None
        arm = self.split.arm(next(iter(user_key.values()))) if user_key else self.split.arms[0]
        return arm, arm

    async def _answer(self, method: str, ref: str, *args) -> tuple[Any, dict]:
        """``method`` of the recommender ``ref`` names, and its ``{"kind", "version"}``: the arms are answered
        here, other names by the ``Recommender`` replicas, routed by the version the name selects now."""
        if ref in self.split.weights:
            bundle, info = await self.recommenders.get(ref)
            # In a thread: the event loop keeps taking requests while a batch of 1,000 users is scored.
            return await asyncio.to_thread(getattr(bundle, method), *args), info
        version = await self.names.version(ref)
        return await self.recommender.options(multiplexed_model_id=version).answer.remote(method, *args)

    async def _recommender(self, method: str, ref: str | None, user_key: dict[str, str] | None, *args) -> dict:
        ref, arm = self._arm(ref, user_key)
        answer, info = await self._answer(method, ref, *args)
        return telemetry.served({**answer, "model": info, "arm": arm})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        """The web page: it holds no data and asks for a key before it calls the API."""
        return HTMLResponse(self.page, headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/healthz", response_model=Health, responses=error_statuses(500, 503, authenticated=False))
    async def healthz(self) -> dict:
        """The version each arm of the traffic split serves, and the versions refused behind an alias."""
        arms = []
        for alias, weight in self.split.weights.items():
            arms.append({"alias": alias, "weight": weight, **(await self.recommenders.get(alias))[1]})
        model = {"kind": arms[0]["kind"], "version": arms[0]["version"]}
        refused = list(self.recommenders.refused.values())
        return telemetry.served({"status": "ok", "model": model, "arms": arms, "refused": refused})

    @app.post("/v1/recommend", response_model=RecommendResponse, responses=error_statuses(400, 404))
    async def recommend(self, request: RecommendRequest, client: RecommendClient) -> dict:
        """Top-n items for a user; a user the model has never seen gets the most popular items."""
        self.access.check_model(client, request.model)
        user_key = pseudonyms(request.user_id, self.keys)
        return await self._recommender(
            "recommend", request.model, user_key, user_key, request.n, request.exclude_seen, request.explain
        )

    @app.post("/v1/recommend/batch", response_model=BatchResponse, responses=error_statuses(400, 404))
    async def recommend_batch(self, request: BatchRequest, client: RecommendClient, http: Request) -> Response:
        """Top-n items for up to 1,000 users at once, in the order given: each user gets their own answer or
        their own error (an invalid id; an arm that cannot answer now), never another user's."""
        self.access.check_model(client, request.model)
        results: list[dict] = [{}] * len(request.users)
        groups: dict[tuple[str, str | None], list[int]] = {}
        user_keys = {}
        for position, user_id in enumerate(request.users):
            if not isinstance(user_id, str) or not 1 <= len(user_id) <= MAX_USER_ID:
                message = f"a user id is a string of 1 to {MAX_USER_ID} characters"
                error = user_error(http, "invalid_user_id", message, f"users[{position}]")
                results[position] = batch_result(None, None, None, error)
                continue
            user_keys[position] = pseudonyms(user_id, self.keys)
            groups.setdefault(self._arm(request.model, user_keys[position]), []).append(position)
        for (ref, arm), positions in groups.items():
            try:
                answers, info = await self._answer(
                    "recommend_many", ref, [user_keys[p] for p in positions], request.n, request.exclude_seen
                )
            except ServingError as error:
                if arm is None:  # the model the request named: the whole request's error
                    raise
                failed = batch_result(None, None, arm, user_error(http, error.code, error.message, error.field))
                for position in positions:
                    results[position] = failed
                continue
            for position, answer in zip(positions, answers):
                results[position] = batch_result(answer, info, arm)
        return batch_response(results)

    @app.post("/v1/users/top", response_model=UserTopResponse, responses=error_statuses(404))
    async def user_top(self, request: UserTopRequest, client: RecommendClient) -> dict:
        """The items a user played most in the data the model was fitted on; 404 for a user it never saw."""
        self.access.check_model(client, request.model)
        user_key = pseudonyms(request.user_id, self.keys)
        return await self._recommender("top_items", request.model, user_key, user_key, request.n)

    @app.get("/v1/models", response_model=ModelsResponse, responses=error_statuses())
    async def models(self, client: CatalogueClient) -> dict:
        """The store's aliases and versions, with kind, family and metrics (scope ``catalogue``)."""
        return await self.catalogue.get()

    @app.post("/v1/recommend/history", response_model=RecommendResponse, responses=error_statuses(400, 404))
    async def recommend_for_history(self, request: HistoryRequest, client: RecommendClient) -> dict:
        """Top-n items for a listener the model has never seen, from the items they played."""
        self.access.check_model(client, request.model)
        return await self._recommender("recommend_for_history", request.model, None, request.items, request.n)

    @app.get("/v1/items/{item_id}/similar", response_model=SimilarResponse, responses=error_statuses(400, 404))
    async def similar_items(
        self,
        item_id: str,
        client: RecommendClient,
        n: int = Query(10, ge=1, le=MAX_ITEMS),
        model: str | None = Query(None, max_length=200),
    ) -> dict:
        """Items most similar to ``item_id`` according to the model."""
        self.access.check_model(client, model)
        return await self._recommender("similar_items", model, None, item_id, n)

    @app.post("/v1/compose", response_model=ComposeResponse, responses=error_statuses(404))
    async def compose(self, request: ComposeRequest, client: ComposeClient) -> dict:
        """New music in a style and key, optionally continuing a MIDI primer: MIDI, and WAV on request."""
        self.access.check_model(client, request.model)
        return telemetry.served(await self.composer.compose.remote(request.model_dump()))

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        responses=error_statuses(404, *UPLOAD_STATUSES),
        openapi_extra=UPLOAD_BODY,
    )
    async def classify(
        self, request: Request, client: ClassifyClient, model: str | None = Query(None, max_length=200)
    ) -> dict:
        """Genre probabilities of an uploaded audio file (multipart, field ``file``), for the whole track."""
        self.access.check_model(client, model)
        async with self.uploads:
            data = await read_upload(request, self.max_upload_bytes)
        return telemetry.served(await self.genres.classify.remote(data, model))

    @app.get("/v1/tracks/{track_id}/similar", response_model=TracksResponse, responses=error_statuses(404))
    async def similar_tracks(
        self,
        track_id: str,
        client: ClassifyClient,
        n: int = Query(10, ge=1, le=MAX_ITEMS),
        model: str | None = Query(None, max_length=200),
    ) -> dict:
        """Indexed tracks that sound most like ``track_id``, nearest first."""
        self.access.check_model(client, model)
        return telemetry.served(await self.soundalike.similar_to_track.remote(track_id, n, model))

    @app.post(
        "/v1/similar",
        response_model=TracksResponse,
        responses=error_statuses(404, *UPLOAD_STATUSES),
        openapi_extra=UPLOAD_BODY,
    )
    async def similar_to_upload(
        self,
        request: Request,
        client: ClassifyClient,
        n: int = Query(10, ge=1, le=MAX_ITEMS),
        model: str | None = Query(None, max_length=200),
    ) -> dict:
        """Indexed tracks that sound most like an uploaded audio file (multipart, field ``file``), nearest first."""
        self.access.check_model(client, model)
        async with self.uploads:
            data = await read_upload(request, self.max_upload_bytes)
        return telemetry.served(await self.soundalike.similar_to_upload.remote(data, n, model))


def app_builder(args: ServeAppArgs) -> serve.Application:
    """The application; Serve validates ``args`` of config.yaml into ``ServeAppArgs`` (``encore.serving.config``)."""
    return EncoreAPI.bind(
        Recommender.bind(args.store_uri),
        Composer.bind(args.store_uri, args.composer_alias, args.poll_seconds, args.compose_time_budget_s),
        GenreClassifier.bind(args.store_uri, args.genre_alias, args.poll_seconds),
        Soundalike.bind(args.store_uri, args.soundalike_alias, args.poll_seconds),
        args,
    )
