"""Recommendation models, by kind."""

from encore.models.base import NotSupportedError, Recommender
from encore.models.popularity import Popularity

MODELS: dict[str, type[Recommender]] = {model.kind: model for model in (Popularity,)}


def model_class(kind: str) -> type[Recommender]:
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[kind]


__all__ = ["MODELS", "NotSupportedError", "Popularity", "Recommender", "model_class"]
