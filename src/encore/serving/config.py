"""The arguments of the Serve application (``args`` of ``serve_apps/config.yaml``), with their defaults.

Serve validates them against :class:`ServeAppArgs` before it builds the application, so a value of the
wrong type, out of range or misspelt fails the deployment with an error naming the argument.
"""

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from encore.serving.access import DEFAULT_KEYS_FILE
from encore.serving.versions import TrafficSplit
from encore.store import DEFAULT_STORE_URI

# The address the web page links to as it is written; the application puts dashboard_url in its place.
DEFAULT_DASHBOARD_URL = "http://127.0.0.1:8265"


class ServeAppArgs(BaseModel):
    """The arguments of ``serve_apps.app:app_builder``."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    store_uri: str = Field(DEFAULT_STORE_URI, description="model store: a local path or s3://bucket/prefix")
    model_alias: str = Field("production", description="the recommender of a request that names no model")
    poll_seconds: float = Field(10, ge=0, description="how often a replica looks up the names it serves")
    traffic_split: dict[str, float] | None = Field(
        None,
        description="aliases and their weights, as {production: 90, candidate: 10}: a user who names no model "
        "is answered by one arm, drawn by a hash of their pseudonym; by default model_alias alone",
    )
    composer_alias: str = "composer-production"
    compose_time_budget_s: float = Field(20, gt=0, description="a composition that takes longer is stopped (503)")
    genre_alias: str = "genre-production"
    soundalike_alias: str = "soundalike-production"
    max_upload_mb: float = Field(20, gt=0, description="POST /v1/classify and /v1/similar answer 413 above this")
    max_concurrent_uploads: int = Field(4, ge=1, description="uploads an ingress replica receives at once")
    api_keys_file: str = Field(DEFAULT_KEYS_FILE, description="the clients' keys (python -m encore.serving.access)")
    dashboard_url: str = Field(
        default_factory=lambda: os.environ.get("ENCORE_DASHBOARD_URL") or DEFAULT_DASHBOARD_URL,
        pattern=r"^https?://",
        description="the Ray dashboard the web page links to",
    )

    @field_validator("store_uri", "api_keys_file")
    @classmethod
    def _absolute(cls, location: str) -> str:
        # Made absolute where the application is built (the directory `ray start` ran in): the replicas
        # that open it may run in another.
        return location if "://" in location else str(Path(location).resolve())

    @field_validator("traffic_split")
    @classmethod
    def _valid_split(cls, weights: dict[str, float] | None) -> dict[str, float] | None:
        if weights is not None:
            TrafficSplit(weights)
        return weights

    @model_validator(mode="after")
    def _split_defaults_to_model_alias(self) -> "ServeAppArgs":
        self.traffic_split = self.traffic_split or {self.model_alias: 1}
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    @property
    def served_aliases(self) -> list[str]:
        """The service's own aliases: those a client's key selects unless it lists its models."""
        return sorted(
            {self.model_alias, self.composer_alias, self.genre_alias, self.soundalike_alias, *self.traffic_split}
        )
