"""Encore's Serve application: a FastAPI ingress in front of an autoscaled, batched recommender.

The recommender replica loads the version an alias of the model store points at (``production``
by default), checks the alias every ``poll_seconds`` and swaps in a new version without a
restart; a version that fails its checksums or was built under another pseudonymisation key is
refused and the replica keeps serving the one it has.

    serve deploy serve_apps/config.yaml        # on a running cluster (see the README)
"""

import asyncio
import logging
import os
import time
from pathlib import Path

from ray import serve
from ray.serve.handle import DeploymentHandle

from encore.api import Health, RecommendRequest, RecommendResponse, create_app
from encore.ids import id_key, key_fingerprint, pseudonymize
from encore.serving import RecommenderBundle, preprocessing
from encore.store import ModelStore, StoreError

logger = logging.getLogger("ray.serve")

DEFAULT_STORE = Path(__file__).resolve().parents[1] / "artifacts"

app = create_app()


# Fractional CPUs: on a small cluster the replicas must leave room for training jobs.
@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class Recommender:
    def __init__(self, store_uri: str, model_alias: str, poll_seconds: float):
        self.store = ModelStore(store_uri)
        self.alias = model_alias
        self.poll_seconds = poll_seconds
        self.expected = preprocessing(key_fingerprint(id_key()))
        self._load(self.store.resolve(model_alias))
        self._checked_at = time.monotonic()

    def _load(self, version: str) -> None:
        started = time.perf_counter()
        loaded = self.store.load(version, expected_preprocessing=self.expected)
        self.bundle = RecommenderBundle.load(loaded.path, loaded.manifest.kind)
        self.model_info = {"kind": loaded.manifest.kind, "version": loaded.manifest.version}
        logger.info("serving %s (alias %r) loaded in %.0f ms", version, self.alias, 1000 * (time.perf_counter() - started))

    async def _reload_if_moved(self) -> None:
        if time.monotonic() - self._checked_at < self.poll_seconds:
            return
        self._checked_at = time.monotonic()
        try:
            version = await asyncio.to_thread(self.store.resolve, self.alias)
            if version != self.model_info["version"]:
                await asyncio.to_thread(self._load, version)
        except StoreError as error:
            logger.error("keeping %s: alias %r could not be loaded: %s", self.model_info["version"], self.alias, error)

    async def info(self) -> dict:
        await self._reload_if_moved()
        return self.model_info

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def recommend(self, requests: list[dict]) -> list[dict]:
        await self._reload_if_moved()
        return [
            {**self.bundle.recommend(r["user_key"], r["n"], r["exclude_seen"]), "model": self.model_info}
            for r in requests
        ]


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
            {"user_key": user_key, "n": request.n, "exclude_seen": request.exclude_seen}
        )


def app_builder(args: dict) -> serve.Application:
    """Build the application; ``args``: ``store_uri`` (default ``$ENCORE_STORE_URI`` or the
    repository's ``artifacts`` folder), ``model_alias`` (default ``production``), ``poll_seconds``."""
    store_uri = args.get("store_uri") or os.environ.get("ENCORE_STORE_URI") or str(DEFAULT_STORE)
    recommender = Recommender.bind(store_uri, args.get("model_alias", "production"), float(args.get("poll_seconds", 10)))
    return EncoreAPI.bind(recommender)
