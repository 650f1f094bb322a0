"""Recommendation models, by kind."""

import pandas as pd
import scipy.sparse as sp

from encore.recsys.models.als import ALS
from encore.recsys.models.base import Recommender
from encore.recsys.models.blend import Blend
from encore.recsys.models.content import ContentBased, Hybrid
from encore.recsys.models.ease import EASE
from encore.recsys.models.knn import ItemKNN, UserKNN
from encore.recsys.models.popularity import Popularity
from encore.recsys.models.rp3beta import RP3beta

MODELS: dict[str, type[Recommender]] = {
    model.kind: model for model in (Popularity, ALS, EASE, ItemKNN, UserKNN, RP3beta, ContentBased, Hybrid, Blend)
}


def model_class(kind: str) -> type[Recommender]:
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[kind]


def fit_model(kind: str, params: dict, user_items: sp.csr_matrix, items: pd.DataFrame | None = None) -> Recommender:
    """Fit a model by kind; ``items`` is the item catalogue (id, name, tags, audio features...)."""
    return model_class(kind)(**params).fit(user_items, items)


__all__ = [
    "ALS", "Blend", "EASE", "MODELS", "ContentBased", "Hybrid", "ItemKNN", "Popularity",
    "RP3beta", "Recommender", "UserKNN", "fit_model", "model_class",
]  # fmt: skip
