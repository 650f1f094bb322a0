"""Encore's Serve application: a FastAPI ingress in front of an autoscaled, batched recommender.

A request may name the model it wants (``"model"``: an alias, a version id, or a kind, meaning
its newest version); without one it gets the service's alias (``production`` by default). The
recommender replica resolves names against the model store at most every ``poll_seconds``, so a
moved alias is picked up without a restart, and keeps the last few versions it loaded in memory.
A version that fails its checksums or was built under another pseudonymisation key is refused;
for the service's own alias, the replica keeps serving the version it has.

    serve deploy serve_apps/config.yaml        # on a running cluster (see the README)
"""

import os
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
from encore.serving import RecommenderBundle, VersionCache, preprocessing
from encore.store import ModelStore

DEFAULT_STORE = Path(__file__).resolve().parents[1] / "artifacts"
MODELS_PER_REPLICA = 4

app = create_app()


# Fractional CPUs: on a small cluster the replicas must leave room for training jobs.
@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class Recommender:
    def __init__(self, store_uri: str, model_alias: str, poll_seconds: float):
        self.models = VersionCache(
            ModelStore(store_uri),
            model_alias,
            kinds=MODELS,
            load=lambda loaded: RecommenderBundle.load(loaded.path, loaded.manifest.kind),
            poll_seconds=poll_seconds,
            capacity=MODELS_PER_REPLICA,
            expected_preprocessing=preprocessing(key_fingerprint(id_key())),
        )

    async def info(self) -> dict:
        return (await self.models.get(None))[1]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def recommend(self, requests: list[dict]) -> list[dict]:
        answers = []
        for r in requests:
            bundle, info = await self.models.get(r["model"])
            answers.append({**bundle.recommend(r["user_key"], r["n"], r["exclude_seen"], r["explain"]), "model": info})
        return answers

    async def recommend_for_history(self, item_ids: list[str], n: int, model: str | None) -> dict:
        bundle, info = await self.models.get(model)
        return {**bundle.recommend_for_history(item_ids, n), "model": info}

    async def similar_items(self, item_id: str, n: int, model: str | None) -> dict:
        bundle, info = await self.models.get(model)
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
