"""The interface every Encore recommender shares, after ``implicit``'s ``RecommenderBase``.

Hyperparameters are ``__init__`` arguments; what ``fit`` learns ends with an underscore. A model
keeps the user-item matrix it was fitted on (``user_items_``), so serving can exclude what a user
already played without the training data at hand. A verb a model cannot do raises
``NotSupportedError`` rather than answering something made up.
"""

import inspect
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from encore.core.errors import NotSupportedError
from encore.recsys.metrics import top_k
from encore.recsys.models.ann import ItemIndex


def standardise(scores: np.ndarray) -> np.ndarray:
    """Per-row z-scores, so models on different scales can be blended."""
    std = scores.std(axis=1, keepdims=True)
    return (scores - scores.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1)


class Recommender(ABC):
    kind: ClassVar[str]
    # Models that learn from item side information (tags, audio features) get the item catalogue
    # in ``fit(user_items, items)``; ``encore.recsys.models.fit_model`` passes it to those that do.
    uses_item_catalogue: ClassVar[bool] = False
    # Bumped when what a model learns changes form, so that an artifact saved by older code is refused
    # on load with a message instead of failing in the middle of a request.
    state_format: ClassVar[int] = 1

    def get_params(self) -> dict:
        return {
            name: getattr(self, name) for name in inspect.signature(type(self).__init__).parameters if name != "self"
        }

    @abstractmethod
    def fit(self, user_items: sp.csr_matrix) -> "Recommender":
        """Learn from a users x items matrix of interaction weights (e.g. play counts)."""

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
        users = np.atleast_1d(np.asarray(user))
        if users.size and (users.min() < 0 or users.max() >= self.n_users):
            raise IndexError(f"user index out of range [0, {self.n_users})")
        scores = np.asarray(self.score(users), dtype=np.float64)
        if exclude_seen:
            rows, cols = self.user_items_[users].nonzero()
            scores[rows, cols] = -np.inf
        ids, best = self._best(scores, n)
        return (ids[0], best[0]) if np.ndim(user) == 0 else (ids, best)

    def recommend_for_history(self, items, n: int = 10, weights=None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` items for an unseen user who played ``items`` (those are excluded), no retraining."""
        items = np.asarray(items, dtype=np.int64)
        if items.size and (items.min() < 0 or items.max() >= self.n_items):
            raise IndexError(f"item index out of range [0, {self.n_items})")
        scores = np.asarray(self.score_history(items, weights), dtype=np.float64)[None, :]
        scores[0, items] = -np.inf
        ids, best = self._best(scores, n)
        return ids[0], best[0]

    def similar_items(self, item: int, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        raise NotSupportedError(f"{self.kind} has no notion of item similarity")

    def explain(self, user: int, item: int) -> list[tuple[int, float]]:
        raise NotSupportedError(f"{self.kind} cannot explain its recommendations")

    @staticmethod
    def _best(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        ids = top_k(scores, n)
        best = np.take_along_axis(scores, ids, axis=1)
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
