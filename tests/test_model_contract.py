"""The contract every recommender keeps, checked against every kind in the registry, after ``implicit``'s
``RecommenderBaseTestMixin`` and scikit-learn's ``parametrize_with_checks``.

Each check is a plain function of a fitted model that fails with an ``AssertionError``; the suite runs
every check on every kind in ``MODELS``, so a new kind is checked as soon as it is registered, and has
to be given small hyperparameters in ``CONTRACT`` first. A check that cannot hold for a kind is
exempted there, with the reason. The last tests run checks on deliberately broken models, to show that
each check catches what it is for.
"""

import functools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from encore.core.errors import NotSupportedError
from encore.recsys.bundle import RecommenderBundle
from encore.recsys.models import MODELS, Recommender
from encore.recsys.models.ease import EASE
from encore.recsys.models.knn import ItemKNN, UserKNN
from encore.store import ModelStore

from helpers import block_matrix

pytestmark = pytest.mark.usefixtures("one_thread")

BLOCKS, USERS_PER_BLOCK, ITEMS_PER_BLOCK, PLAYED_PER_USER = 3, 12, 8, 5
PLAYS = block_matrix(BLOCKS, USERS_PER_BLOCK, ITEMS_PER_BLOCK, PLAYED_PER_USER, max_plays=20)
N_USERS, N_ITEMS = PLAYS.shape
# Every item is tagged with its block, and some with a tag of their own, so content models find the blocks too.
CATALOGUE = pd.DataFrame(
    {
        "item_idx": range(N_ITEMS),
        "item_id": [f"item-{item}" for item in range(N_ITEMS)],
        "name": [f"Item {item}" for item in range(N_ITEMS)],
        "tags": [[f"block-{item // ITEMS_PER_BLOCK}", *([f"mood-{item}"] * (item % 2))] for item in range(N_ITEMS)],
        "popularity": np.diff(PLAYS.tocsc().indptr),
    }
)
OPTIONAL_VERBS = ("similar_items", "explain")


@dataclass(frozen=True)
class Contract:
    """What a kind is checked with: small, fast hyperparameters, the optional verbs it refuses, and the
    checks that do not hold for it, each with the reason."""

    params: dict
    unsupported: tuple[str, ...] = ()
    exempt: dict[str, str] = field(default_factory=dict)


CONTRACT = {
    "popularity": Contract(
        {},
        unsupported=OPTIONAL_VERBS,
        exempt={"check_recovers_planted_blocks": "ranks every user's items the same, by design"},
    ),
    # One factor per block: more would let each user fit the zeros of its own unplayed items.
    "als": Contract(
        {"factors": BLOCKS, "iterations": 15},
        exempt={
            "check_history_recommends_as_the_known_user": "folding in solves the user's system exactly, "
            "where training's CG steps came close (test_als compares the two)"
        },
    ),
    "ease": Contract({"regularization": 1.0}),
    "item_knn": Contract({"neighbours": 20, "shrinkage": 0.0}),
    # Enough neighbours for a whole block, so a history's own user, whom folding in finds as a
    # neighbour, takes no neighbour's place.
    "user_knn": Contract({"neighbours": 30, "shrinkage": 0.0}, unsupported=OPTIONAL_VERBS),
    "rp3beta": Contract({"alpha": 0.8, "beta": 0.3, "neighbours": 20}),
    "content": Contract({"features": "tags"}),
    "hybrid": Contract({"collaborative": "item_knn", "collaborative_params": {"neighbours": 20, "shrinkage": 0.0}}),
    "blend": Contract(
        {
            "parts": [
                {"kind": "ease", "params": {"regularization": 1.0}, "weight": 0.5},
                {"kind": "content", "params": {}, "weight": 0.3},
                {"kind": "popularity", "params": {}, "weight": 0.2},
            ]
        }
    ),
}


@functools.cache
def fitted(kind: str) -> Recommender:
    """One fitted model per kind for the whole module: no check changes the model it is given."""
    return MODELS[kind](**CONTRACT[kind].params).fit(PLAYS, CATALOGUE)


def block_of(items) -> np.ndarray:
    return np.asarray(items) // ITEMS_PER_BLOCK


def check_recovers_planted_blocks(model: Recommender) -> None:
    """The first recommendation of a user, known or new, comes from their block. (Only the first: a model
    may score unplayed items of the block below the other blocks' items, as EASE's negative weights can.)"""
    ids, _ = model.recommend(np.arange(N_USERS), n=1)
    np.testing.assert_array_equal(block_of(ids[:, 0]), np.arange(N_USERS) // USERS_PER_BLOCK)
    for block in range(BLOCKS):
        ids, _ = model.recommend_for_history(block * ITEMS_PER_BLOCK + np.array([0, 3, 5]), n=1)
        assert block_of(ids[0]) == block, (block, ids)


def check_history_recommends_as_the_known_user(model: Recommender) -> None:
    for user in range(0, N_USERS, 5):
        row = model.user_items_[user]
        ids, scores = model.recommend(user, n=N_ITEMS)
        history_ids, history_scores = model.recommend_for_history(row.indices, n=N_ITEMS, weights=row.data)
        np.testing.assert_array_equal(history_ids, ids, err_msg=f"user {user}")
        np.testing.assert_allclose(history_scores, scores, rtol=1e-5, atol=1e-6, err_msg=f"user {user}")


def check_excludes_seen(model: Recommender) -> None:
    ids, scores = model.recommend(np.arange(N_USERS), n=N_ITEMS)
    for user in range(N_USERS):
        played = set(model.user_items_[user].indices)
        assert not played & set(ids[user]), (user, played & set(ids[user]))
        assert (np.diff(scores[user]) <= 0).all(), user
    history = np.array([1, 9, 17])
    ids, _ = model.recommend_for_history(history, n=N_ITEMS)
    assert not set(history) & set(ids)
    ids, _ = model.recommend(0, n=N_ITEMS, exclude_seen=False)
    assert set(model.user_items_[0].indices) <= set(ids)


def check_store_round_trip(model: Recommender) -> None:
    users = pd.DataFrame({"user_idx": range(N_USERS), "user_key": [f"user-{user}" for user in range(N_USERS)]})
    with tempfile.TemporaryDirectory() as folder:
        bundle_folder, store = Path(folder) / "bundle", ModelStore(Path(folder) / "store")
        bundle_folder.mkdir()
        RecommenderBundle(model, users, CATALOGUE).save(bundle_folder)
        version = store.save(bundle_folder, kind=model.kind, config=model.get_params(), metrics={},
                             data_fingerprint="blocks", preprocessing={}).version  # fmt: skip
        loaded = RecommenderBundle.load(store.load(version).path, model.kind).model
        assert type(loaded) is MODELS[model.kind] and loaded.get_params() == model.get_params()
        for exclude_seen in (True, False):
            ids, scores = model.recommend(np.arange(N_USERS), 5, exclude_seen)
            loaded_ids, loaded_scores = loaded.recommend(np.arange(N_USERS), 5, exclude_seen)
            np.testing.assert_array_equal(loaded_ids, ids)
            np.testing.assert_array_equal(loaded_scores, scores)
        history = np.array([2, 10])
        np.testing.assert_array_equal(loaded.recommend_for_history(history)[0], model.recommend_for_history(history)[0])


def check_unsupported_verbs_raise(model: Recommender) -> None:
    """A verb a kind lacks raises ``NotSupportedError``, and only those: the others answer."""
    calls = {"similar_items": lambda: model.similar_items(0, n=3), "explain": lambda: model.explain(0, 2, n=3)}
    for verb, call in calls.items():
        refuses = verb in CONTRACT[model.kind].unsupported
        try:
            call()
        except NotSupportedError:
            assert refuses, f"{model.kind} refuses {verb}, which its contract says it does"
        else:
            assert not refuses, f"{model.kind} answers {verb}, which it cannot do: the answer is made up"


def check_explains_at_most_n(model: Recommender) -> None:
    """``explain`` gives the user's history items that add most to the score, at most ``n``, largest
    first, a shorter list being the start of a longer one."""
    if "explain" in CONTRACT[model.kind].unsupported:
        return
    for user in (0, 14, 30):
        history = set(model.user_items_[user].indices)
        item = int(model.recommend(user, n=1)[0][0])
        everything = model.explain(user, item, n=N_ITEMS)
        assert everything and {index for index, _ in everything} <= history, (user, everything)
        weights = [weight for _, weight in everything]
        assert weights == sorted(weights, reverse=True)
        for n in (1, 2):
            assert model.explain(user, item, n=n) == everything[:n]


def check_refuses_bad_interactions(model: Recommender) -> None:
    negative = PLAYS.copy()
    negative.data[0] = -1.0
    unfitted = type(model)(**model.get_params())
    with pytest.raises(ValueError, match="non-negative"):
        unfitted.fit(negative, CATALOGUE)
    with pytest.raises(ValueError, match="catalogue has"):
        unfitted.fit(PLAYS, CATALOGUE.iloc[:-1])


def check_callback_counts_sweeps(model: Recommender) -> None:
    """``callback`` runs after each sweep, numbered from 0, each time with the model being fitted."""
    refit = type(model)(**model.get_params())
    calls = []
    assert refit.fit(PLAYS, CATALOGUE, callback=lambda iteration, fitting: calls.append((iteration, fitting))) is refit
    assert [iteration for iteration, _ in calls] == list(range(len(calls)))
    assert all(fitting is refit for _, fitting in calls)


CHECKS = [
    check_recovers_planted_blocks,
    check_history_recommends_as_the_known_user,
    check_excludes_seen,
    check_store_round_trip,
    check_unsupported_verbs_raise,
    check_explains_at_most_n,
    check_refuses_bad_interactions,
    check_callback_counts_sweeps,
]


def test_every_registered_kind_has_a_contract():
    assert set(CONTRACT) == set(MODELS)


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_model_keeps_the_contract(kind, check):
    reason = CONTRACT[kind].exempt.get(check.__name__)
    if reason:
        pytest.skip(reason)
    check(fitted(kind))


class RecommendsSeen(ItemKNN):
    def _recommend(self, user, n: int, exclude_seen: bool):
        return super()._recommend(user, n, exclude_seen=False)


class ForgetsSimilaritiesWhenSaved(ItemKNN):
    def save(self, folder) -> None:
        kept = self.similarity_
        self.similarity_ = sp.csr_matrix(kept.shape, dtype=np.float32)
        try:
            super().save(folder)
        finally:
            self.similarity_ = kept


class ExplainsAllOfHistory(EASE):
    def explain(self, user: int, item: int, n: int = 10):
        return super().explain(user, item, n=N_ITEMS)


class ExplainsWhatItCannot(UserKNN):
    def _contributions(self, user: int, item: int):
        return np.empty(0, dtype=np.int64), np.empty(0)


@pytest.mark.parametrize(
    "broken, check",
    [
        (RecommendsSeen, check_excludes_seen),
        (ForgetsSimilaritiesWhenSaved, check_store_round_trip),
        (ExplainsAllOfHistory, check_explains_at_most_n),
        (ExplainsWhatItCannot, check_unsupported_verbs_raise),
    ],
    ids=lambda value: value.__name__,
)
def test_checks_catch_a_broken_model(broken, check):
    model = broken(**CONTRACT[broken.kind].params).fit(PLAYS, CATALOGUE)
    with pytest.raises(AssertionError):
        check(model)
