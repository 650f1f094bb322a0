"""Encore's Serve application: a FastAPI ingress in front of an autoscaled, batched recommender.

A request may name the model it wants (``"model"``: an alias, a version id, or a kind, meaning
its newest version); without one it gets the service's alias (``production`` by default). The
recommender replica resolves names against the model store at most every ``poll_seconds``, so a
moved alias is picked up without a restart, and keeps the last few versions it loaded in memory.
A version that fails its checksums or was built under another pseudonymisation key is refused;
for the service's own alias, the replica keeps serving the version it has.

    serve deploy serve_apps/config.yaml        # on a running cluster (see the README)
"""

import asyncio
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path

from fastapi import Query
from ray import serve
from ray.serve.handle import DeploymentHandle

from encore.api import (
    MAX_ITEMS,
    Health,
    HistoryRequest,
    RecommendRequest,
    RecommendResponse,
    SimilarResponse,
    create_app,
)
from encore.ids import id_key, key_fingerprint, pseudonymize
from encore.models import MODELS
from encore.serving import RecommenderBundle, UnknownModelError, preprocessing
from encore.store import ModelStore, StoreError, VersionNotFound

logger = logging.getLogger("ray.serve")

DEFAULT_STORE = Path(__file__).resolve().parents[1] / "artifacts"
MODELS_PER_REPLICA = 4

app = create_app()


# Fractional CPUs: on a small cluster the replicas must leave room for training jobs.
@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class Recommender:
    def __init__(self, store_uri: str, model_alias: str, poll_seconds: float):
        self.store = ModelStore(store_uri)
        self.alias = model_alias
        self.poll_seconds = poll_seconds
        self.expected = preprocessing(key_fingerprint(id_key()))
        self.resolved: dict[str, tuple[str, float]] = {}
        self.bundles: OrderedDict[str, tuple[RecommenderBundle, dict]] = OrderedDict()
        self._load(self._resolve_now(model_alias))

    def _resolve_now(self, ref: str) -> str:
        try:
            version = self.store.resolve(ref)
        except VersionNotFound:
            newest = self.store.list(kind=ref)
            if not newest:
                raise UnknownModelError(
                    f"no model {ref!r}: not an alias, version or kind in the store", "model"
                ) from None
            version = newest[0].version
        self.resolved[ref] = (version, time.monotonic())
        return version

    def _load(self, version: str) -> tuple[RecommenderBundle, dict]:
        if version in self.bundles:
            self.bundles.move_to_end(version)
            return self.bundles[version]
        started = time.perf_counter()
        kind = self.store.show(version).kind
        if kind not in MODELS:
            raise UnknownModelError(f"{version} is a {kind} model, not a recommender", "model")
        loaded = self.store.load(version, expected_preprocessing=self.expected)
        entry = (
            RecommenderBundle.load(loaded.path, loaded.manifest.kind),
            {"kind": loaded.manifest.kind, "version": loaded.manifest.version},
        )
        self.bundles[version] = entry
        while len(self.bundles) > MODELS_PER_REPLICA:
            self.bundles.popitem(last=False)
        logger.info("loaded %s in %.0f ms", version, 1000 * (time.perf_counter() - started))
        return entry

    async def _model(self, ref: str | None) -> tuple[RecommenderBundle, dict]:
        """The bundle a request asks for, re-resolving its name once ``poll_seconds`` have passed."""
        ref = ref or self.alias
        version, resolved_at = self.resolved.get(ref, (None, 0.0))
        if time.monotonic() - resolved_at >= self.poll_seconds:
            try:
                version = await asyncio.to_thread(self._resolve_now, ref)
            except StoreError as error:
                if version is None:
                    raise UnknownModelError(str(error), "model") from None
                logger.error("keeping %s for %r: %s", version, ref, error)
        if version in self.bundles:  # the common case: no thread hop
            self.bundles.move_to_end(version)
            return self.bundles[version]
        try:
            return await asyncio.to_thread(self._load, version)
        except StoreError as error:
            if ref == self.alias and self.bundles:
                logger.error("keeping the loaded model for %r: %s could not be loaded: %s", ref, version, error)
                return next(reversed(self.bundles.values()))
            raise UnknownModelError(f"model {ref!r} ({version}) could not be loaded: {error}", "model") from None

    async def info(self) -> dict:
        return (await self._model(None))[1]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def recommend(self, requests: list[dict]) -> list[dict]:
        answers = []
        for r in requests:
            bundle, info = await self._model(r["model"])
            answers.append({**bundle.recommend(r["user_key"], r["n"], r["exclude_seen"], r["explain"]), "model": info})
        return answers

    async def recommend_for_history(self, item_ids: list[str], n: int, model: str | None) -> dict:
        bundle, info = await self._model(model)
        return {**bundle.recommend_for_history(item_ids, n), "model": info}

    async def similar_items(self, item_id: str, n: int, model: str | None) -> dict:
        bundle, info = await self._model(model)
        return {**bundle.similar_items(item_id, n), "model": info}


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(app)
class EncoreAPI:
    def __init__(self, recommender: DeploymentHandle):
        self.recommender = recommender
        self.key = id_key()

    @app.get("/healthz", response_model=Health)
    async def healthz(self) -> dict:
        return {"status": "ok", "model": await self.recommender.info.remote()}

    @app.post("/v1/recommend", response_model=RecommendResponse)
    async def recommend(self, request: RecommendRequest) -> dict:
        """Top-n items for a user; a user the model has never seen gets the most popular items."""
        user_key = pseudonymize(request.user_id, self.key)
        return await self.recommender.recommend.remote(
            {
                "user_key": user_key,
                "n": request.n,
                "exclude_seen": request.exclude_seen,
                "explain": request.explain,
                "model": request.model,
            }
        )

    @app.post("/v1/recommend/history", response_model=RecommendResponse)
    async def recommend_for_history(self, request: HistoryRequest) -> dict:
        """Top-n items for a listener the model has never seen, from the items they played."""
        return await self.recommender.recommend_for_history.remote(request.items, request.n, request.model)

    @app.get("/v1/items/{item_id}/similar", response_model=SimilarResponse)
    async def similar_items(
        self, item_id: str, n: int = Query(10, ge=1, le=MAX_ITEMS), model: str | None = Query(None, max_length=200)
    ) -> dict:
        """Items most similar to ``item_id`` according to the model."""
        return await self.recommender.similar_items.remote(item_id, n, model)


def app_builder(args: dict) -> serve.Application:
    """Build the application; ``args``: ``store_uri`` (default ``$ENCORE_STORE_URI`` or the
    repository's ``artifacts`` folder), ``model_alias`` (default ``production``), ``poll_seconds``."""
    store_uri = args.get("store_uri") or os.environ.get("ENCORE_STORE_URI") or str(DEFAULT_STORE)
    recommender = Recommender.bind(
        store_uri, args.get("model_alias", "production"), float(args.get("poll_seconds", 10))
    )
    return EncoreAPI.bind(recommender)
