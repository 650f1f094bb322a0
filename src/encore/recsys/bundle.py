"""A recommender as it is stored and served: the model with its id maps.

A bundle folder holds the model's own files (``config.json``, ``state.npz``), ``users.parquet``
(dense index to pseudonymised user key) and ``items.parquet`` (dense index to item id, name and
training popularity, which answers users the model has never seen). It is the unit saved in the
model store, and its ``preprocessing`` record makes a serving process refuse a bundle made
under a pseudonymisation key it does not hold. During a change of key (``encore.privacy.rotation``) a process
holds two: a request carries its user's pseudonym under each, and each bundle answers with the one made
under its own key.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from encore.core.errors import ModelUnavailableError, NotSupportedError, ServingError
from encore.recsys.interactions import SCHEMA_VERSION, InteractionDataset
from encore.recsys.models import Recommender, model_class

logger = logging.getLogger(__name__)
T = TypeVar("T")


def preprocessing(id_key_fingerprint: str) -> dict:
    """What a serving process must share with the data a recommender was trained on."""
    return {"id_key_fingerprint": id_key_fingerprint, "interactions_schema": SCHEMA_VERSION}


def summarise_ids(ids: list[str], shown: int = 3, length: int = 40) -> str:
    """A bounded description of request values: how many, and the first few cut short. An error that
    echoed a thousand ids back would cost more to build and carry than the request that caused it."""
    first = ", ".join(repr(i if len(i) <= length else i[:length] + "…") for i in ids[:shown])
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return f"{len(ids)}: {first}{more}"


class UnknownItemError(ServingError, status=404, code="unknown_item"):
    def __init__(self, item_ids: list[str], field: str = "items"):
        super().__init__(f"unknown item ids, {summarise_ids(item_ids)}", field)


class UnknownUserError(ServingError, status=404, code="unknown_user"):
    def __init__(self):
        super().__init__("the model has no history for this user", "user_id")


EXPLANATION_ITEMS = 3
MAX_ANSWER_ITEMS = 100  # the most items one answer holds (encore.serving.api.MAX_ITEMS)
BULK_CHUNK = 256  # users scored together by recommend_many: 256 x 17,632 scores are 18 MB in float32


@dataclass
class RecommenderBundle:
    model: Recommender
    users: pd.DataFrame
    items: pd.DataFrame
    # The pseudonymisation key its user keys were made under (the store's manifest records it), which picks
    # a request's pseudonym among those made under each key the ingress holds.
    id_key_fingerprint: str | None = None

    @classmethod
    def from_dataset(cls, model: Recommender, dataset: InteractionDataset, *splits: str) -> "RecommenderBundle":
        """Bundle a model fitted on ``splits`` of ``dataset`` with its id maps and item popularity."""
        plays = dataset.matrix(*splits)
        items = dataset.items[["item_idx", "item_id", "name"]].assign(
            popularity=np.asarray((plays > 0).sum(axis=0)).ravel().astype(np.int64)
        )
        return cls(model, dataset.users[["user_idx", "user_key"]], items)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.model.save(folder)
        pq.write_table(pa.Table.from_pandas(self.users, preserve_index=False), folder / "users.parquet")
        pq.write_table(pa.Table.from_pandas(self.items, preserve_index=False), folder / "items.parquet")

    @classmethod
    def load(cls, folder: str | Path, kind: str) -> "RecommenderBundle":
        folder = Path(folder)
        return cls(
            model_class(kind).load(folder),
            pq.read_table(folder / "users.parquet").to_pandas(),
            pq.read_table(folder / "items.parquet").to_pandas(),
        )

    def __post_init__(self):
        self._user_rows = dict(zip(self.users["user_key"].tolist(), self.users["user_idx"].tolist()))
        self._item_index = pd.Index(self.items["item_id"])
        self._items_by_index = self.items.set_index("item_idx")
        by_index = self.items.sort_values("item_idx")
        if not np.array_equal(by_index["item_idx"].to_numpy(), np.arange(len(by_index))):
            raise ValueError("items.parquet must number its items 0..n-1")
        self._item_ids = by_index["item_id"].to_numpy(dtype=object)
        self._item_names = by_index["name"].to_numpy(dtype=object)
        popularity = by_index["popularity"].to_numpy()
        self._popular = np.argsort(-popularity, kind="stable")[:MAX_ANSWER_ITEMS]  # once: users it never saw
        self._popular_scores = popularity[self._popular].astype(float)

    def own_pseudonym(self, user_key: str | Mapping[str, str]) -> str:
        """The pseudonym of a request's user under this bundle's key: ``user_key`` is one pseudonym (made under
        the only key its sender holds) or ``{key fingerprint: pseudonym}`` (``encore.privacy.ids.pseudonyms``).

        Raises ModelUnavailableError when the request has no pseudonym under this bundle's key: its sender does
        not hold the key (replicas configured with different keys, for the moment of a redeployment)."""
        if isinstance(user_key, str):
            return user_key
        pseudonym = user_key.get(self.id_key_fingerprint)
        if pseudonym is None:
            raise ModelUnavailableError(
                "this model was built under a pseudonymisation key the service's ingress does not hold; ask again",
                "model",
            )
        return pseudonym

    def user_index(self, user_key: str | Mapping[str, str]) -> int | None:
        """Dense index of a pseudonymised user, or None if the model has never seen them."""
        return self._user_rows.get(self.own_pseudonym(user_key))

    def item_indices(self, item_ids: list[str], field: str = "items") -> np.ndarray:
        positions = self._item_index.get_indexer(item_ids)
        unknown = [item for item, position in zip(item_ids, positions) if position < 0]
        if unknown:
            raise UnknownItemError(unknown, field)
        return self.items["item_idx"].to_numpy()[positions]

    def recommend(
        self, user_key: str | Mapping[str, str], n: int = 10, exclude_seen: bool = True, explain: bool = False
    ) -> dict:
        """``{"items": [{"item_id", "name", "score", "because"}], "fallback": None | "popular"}``.

        A user the model has never seen gets the most popular items, marked as the fallback; with
        ``explain``, each item of a known user has ``because``: the names of the history items
        that contribute most to its score.
        """
        user = self.user_index(user_key)
        if user is None:
            return self._most_popular(n)
        ids, scores = self.model.recommend(user, n, exclude_seen=exclude_seen)
        items = self._describe(ids, scores)
        if explain:
            for item, item_idx in zip(items, ids):
                item["because"] = self._because(user, int(item_idx))
        return {"items": items, "fallback": None}

    def recommend_many(
        self, user_keys: list[str | Mapping[str, str]], n: int = 10, exclude_seen: bool = True
    ) -> list[dict]:
        """:meth:`recommend` (without explanations) for many users at once, in the order given: the users the
        model knows are scored together, ``BULK_CHUNK`` at a time, so memory stays bounded."""
        rows = [self._user_rows.get(self.own_pseudonym(key), -1) for key in user_keys]
        answers: list[dict] = [self._most_popular(n)] * len(user_keys)  # shared: answers are only read
        known = [position for position, row in enumerate(rows) if row >= 0]
        for start in range(0, len(known), BULK_CHUNK):
            chunk = known[start : start + BULK_CHUNK]
            ids, scores = self.model.recommend(np.array([rows[p] for p in chunk]), n, exclude_seen=exclude_seen)
            for answer_at, row_ids, row_scores in zip(chunk, ids, scores):
                answers[answer_at] = {"items": self._describe(row_ids, row_scores), "fallback": None}
        return answers

    def _most_popular(self, n: int) -> dict:
        return {"items": self._describe(self._popular[:n], self._popular_scores[:n]), "fallback": "popular"}

    def top_items(self, user_key: str | Mapping[str, str], n: int = 10) -> dict:
        """``{"items": [{"item_id", "name", "plays"}]}``: the items a pseudonymised user played most in the
        data the model was fitted on, most played first (ties by item order); UnknownUserError if none."""
        user = self.user_index(user_key)
        if user is None:
            raise UnknownUserError()
        row = sp.csr_matrix(self.model.user_items_[user])
        row.eliminate_zeros()
        order = np.argsort(-row.data, kind="stable")[:n]
        rows = self._items_by_index.loc[row.indices[order]]
        return {
            "items": [
                {"item_id": item_id, "name": name, "plays": float(plays)}
                for item_id, name, plays in zip(rows["item_id"], rows["name"], row.data[order])
            ]
        }

    def recommend_for_history(self, item_ids: list[str], n: int = 10) -> dict:
        """Top ``n`` items for someone the model has never seen, from the items they played."""
        try:
            ids, scores = self.model.recommend_for_history(self.item_indices(item_ids), n)
        except NotSupportedError as error:
            raise NotSupportedError(error.message, "items") from None
        return {"items": self._describe(ids, scores), "fallback": None}

    def similar_items(self, item_id: str, n: int = 10) -> dict:
        item = int(self.item_indices([item_id], field="item_id")[0])
        try:
            ids, scores = self.model.similar_items(item, n)
        except NotSupportedError as error:
            raise NotSupportedError(error.message, "model") from None
        return {"items": self._describe(ids, scores)}

    def _because(self, user: int, item: int) -> list[str]:
        try:
            contributions = self.model.explain(user, item, n=EXPLANATION_ITEMS)
        except NotSupportedError as error:
            raise NotSupportedError(error.message, "explain") from None
        top = [index for index, weight in contributions if weight > 0]
        return self._items_by_index.loc[top, "name"].tolist()

    def _describe(self, ids: np.ndarray, scores: np.ndarray) -> list[dict]:
        """Every field of the API's ``Item``: ``because`` stays None unless an explanation fills it."""
        return [
            {"item_id": item_id, "name": name, "score": score, "because": None}
            for item_id, name, score in zip(self._item_ids[ids], self._item_names[ids], scores.tolist())
        ]
