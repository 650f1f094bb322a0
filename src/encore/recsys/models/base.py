"""The interface every Encore recommender shares, after ``implicit``'s ``RecommenderBase``.

Hyperparameters are ``__init__`` arguments; what ``fit`` learns ends with an underscore. A model
keeps the user-item matrix it was fitted on (``user_items_``), so serving can exclude what a user
already played without the training data at hand. A verb a model cannot do raises
``NotSupportedError`` rather than answering something made up.

The public verbs live here and check their inputs once, for every model; a model implements the
protected hooks they call (``_fit``, and ``_similar_items`` and ``_contributions`` where it can).
"""

import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from encore.core.errors import NotSupportedError
from encore.recsys.metrics import played, top_k
from encore.recsys.models.ann import ItemIndex

# ``callback(iteration, model)`` of an iterative fit (see ``Recommender.fit``).
FitCallback = Callable[[int, "Recommender"], None]


def standardise(scores: np.ndarray) -> np.ndarray:
    """Per-row z-scores, so models on different scales can be blended."""
    std = scores.std(axis=1, keepdims=True)
    return (scores - scores.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1)


def check_interactions(user_items: sp.spmatrix | np.ndarray, items: pd.DataFrame | None = None) -> sp.csr_matrix:
    """``user_items`` as float32 CSR, refused unless its weights are finite and non-negative and ``items``,
    the catalogue if given, has a row per column: what every fit learns from."""
    user_items = sp.csr_matrix(user_items, dtype=np.float32)
    if not np.isfinite(user_items.data).all() or (user_items.data < 0).any():
        raise ValueError("interaction weights must be finite and non-negative")
    if items is not None and len(items) != user_items.shape[1]:
        raise ValueError(f"the catalogue has {len(items)} items, the interactions {user_items.shape[1]}")
    return user_items


class Recommender(ABC):
    kind: ClassVar[str]
    # Bumped when what a model learns changes form, so that an artifact saved by older code is refused
    # on load with a message instead of failing in the middle of a request.
    state_format: ClassVar[int] = 1

    def get_params(self) -> dict:
        return {
            name: getattr(self, name) for name in inspect.signature(type(self).__init__).parameters if name != "self"
        }

    def fit(
        self,
        user_items: sp.spmatrix | np.ndarray,
        items: pd.DataFrame | None = None,
        callback: FitCallback | None = None,
    ) -> "Recommender":
        """Learn from a users x items matrix of interaction weights (e.g. play counts).

        ``items`` is the item catalogue, one row per item (``item_idx``, tags, audio features...): models
        that learn what items are like need it, the others ignore it. ``callback(iteration, model)`` runs
        after each sweep of an iterative fit, the model usable as that sweep left it; a closed-form fit
        has no sweeps and never calls it.
        """
        self._fit(check_interactions(user_items, items), items, callback)
        return self

    @abstractmethod
    def _fit(self, user_items: sp.csr_matrix, items: pd.DataFrame | None, callback: FitCallback | None) -> None:
        """Set the learned attributes from checked float32 ``user_items``, as ``fit`` documents."""

    @abstractmethod
    def score(self, users: np.ndarray) -> np.ndarray:
        """Scores of every item for each of ``users``: an array of shape (len(users), n_items)."""

    @abstractmethod
    def score_history(self, items: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Scores of every item for a user the model has never seen, from that user's items."""

    @property
    def n_users(self) -> int:
        return self.user_items_.shape[0]

    @property
    def n_items(self) -> int:
        return self.user_items_.shape[1]

    def recommend(self, user, n: int = 10, exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` items for a user index or an array of them.

        Returns ``(ids, scores)``, of shape (n,) for a scalar user and (len(users), n) for an array.
        """
        self._check_users(user)
        return self._recommend(user, n, exclude_seen)

    def _recommend(self, user, n: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        users = np.atleast_1d(np.asarray(user))
        scores = np.asarray(self.score(users))
        # Ranked in the precision the model scored in: a float64 copy of float32 scores changes no order and
        # cost bulk answers a sixth of their time. A view may share the model's own arrays: it is copied.
        if not np.issubdtype(scores.dtype, np.floating) or not scores.flags.owndata:
            scores = scores.astype(np.promote_types(scores.dtype, np.float32))
        if exclude_seen:
            scores[played(self.user_items_, users)] = -np.inf
        ids, best = self._best(scores, n)
        return (ids[0], best[0]) if np.ndim(user) == 0 else (ids, best)

    def recommend_for_history(self, items, n: int = 10, weights=None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` items for an unseen user who played ``items`` (those are excluded), no retraining."""
        items = np.asarray(items, dtype=np.int64)
        self._check_items(items)
        scores = np.asarray(self.score_history(items, weights), dtype=np.float64)[None, :]
        scores[0, items] = -np.inf
        ids, best = self._best(scores, n)
        return ids[0], best[0]

    def similar_items(self, item: int, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` items most like ``item``, itself excluded: ``(ids, similarities)``, most similar first."""
        self._check_items(item)
        return self._similar_items(item, n)

    def _similar_items(self, item: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotSupportedError(f"{self.kind} has no notion of item similarity")

    def explain(self, user: int, item: int, n: int = 10) -> list[tuple[int, float]]:
        """Why ``item`` scores as it does for ``user``: the ``n`` items of the user's history that add
        most to its score, as ``(item_idx, contribution)`` pairs, largest first (ties to the lower index),
        items that add nothing left out."""
        self._check_users(user)
        self._check_items(item)
        history, contributions = self._contributions(user, item)
        keep = contributions != 0
        history, contributions = history[keep], contributions[keep]
        order = np.lexsort((history, -contributions))[:n]
        return [(int(history[i]), float(contributions[i])) for i in order]

    def _contributions(self, user: int, item: int) -> tuple[np.ndarray, np.ndarray]:
        """Every history item of ``user`` with its contribution to ``item``'s score, in any order."""
        raise NotSupportedError(f"{self.kind} cannot explain its recommendations")

    def _check_users(self, users) -> None:
        users = np.asarray(users)
        if users.size and (users.min() < 0 or users.max() >= self.n_users):
            raise IndexError(f"user index out of range [0, {self.n_users})")

    def _check_items(self, items) -> None:
        items = np.asarray(items)
        if items.size and (items.min() < 0 or items.max() >= self.n_items):
            raise IndexError(f"item index out of range [0, {self.n_items})")

    @staticmethod
    def _best(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        ids = top_k(scores, n)
        best = np.take_along_axis(scores, ids, axis=1).astype(np.float64)
        # Items excluded as seen can only fill a list longer than what is left; drop them.
        keep = np.isfinite(best).all(axis=0)
        return ids[:, keep], best[:, keep]

    def save(self, folder: str | Path) -> None:
        """Write ``config.json`` (kind and hyperparameters) and ``state.npz`` (learned arrays); a
        learned sub-model (as in a hybrid) goes into a subfolder of its own name, and an
        approximate-search index into ``<name>.faiss``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays, submodels, indexes = {}, {}, []
        for name, value in vars(self).items():
            if not name.endswith("_"):
                continue
            if isinstance(value, Recommender):
                value.save(folder / name)
                submodels[name] = value.kind
            elif isinstance(value, ItemIndex):
                value.save(folder / f"{name}.faiss")
                indexes.append(name)
            elif sp.issparse(value):
                value = sp.csr_matrix(value)
                arrays.update(
                    {
                        f"{name}:data": value.data,
                        f"{name}:indices": value.indices,
                        f"{name}:indptr": value.indptr,
                        f"{name}:shape": np.asarray(value.shape),
                    }
                )
            else:
                arrays[name] = np.asarray(value)
        np.savez(folder / "state.npz", **arrays)
        config = {
            "kind": self.kind,
            "state_format": self.state_format,
            "params": self.get_params(),
            "submodels": submodels,
            "indexes": indexes,
        }
        (folder / "config.json").write_text(json.dumps(config, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> "Recommender":
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        if config["kind"] != cls.kind:
            raise ValueError(f"{folder} holds a {config['kind']!r} model, not {cls.kind!r}")
        if config.get("state_format", 1) != cls.state_format:
            raise ValueError(
                f"{folder} holds a {cls.kind!r} model saved in state format {config.get('state_format', 1)}, "
                f"this version of Encore reads format {cls.state_format}: train it again"
            )
        from encore.recsys.models import model_class

        model = cls(**config["params"])
        for name, kind in config.get("submodels", {}).items():
            setattr(model, name, model_class(kind).load(folder / name))
        # The config names the indexes saved, so a missing file is an error rather than a slower model.
        for name in config.get("indexes", []):
            setattr(model, name, ItemIndex.load(folder / f"{name}.faiss"))
        with np.load(folder / "state.npz") as state:
            for key in state.files:
                name, _, part = key.partition(":")
                if not part:
                    setattr(model, name, state[key])
                elif part == "shape":
                    matrix = (state[f"{name}:data"], state[f"{name}:indices"], state[f"{name}:indptr"])
                    setattr(model, name, sp.csr_matrix(matrix, shape=tuple(state[key])))
        return model
