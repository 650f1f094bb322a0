import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from encore.core.errors import NotSupportedError
from encore.recsys.models import fit_model, model_class
from encore.recsys.models.content import item_features

from helpers import block_matrix

# Items 0-3 are rock, 4-7 are jazz; item 3 and item 7 were never played.
TAGS = [["rock", "guitar"], ["rock"], ["rock", "loud"], ["rock", "guitar"],
        ["jazz", "sax"], ["jazz"], ["jazz", "piano"], ["jazz", "sax"]]  # fmt: skip


def catalogue(with_audio: bool = False) -> pd.DataFrame:
    items = pd.DataFrame(
        {"item_idx": range(8), "item_id": [f"i{i}" for i in range(8)], "name": [f"Item {i}" for i in range(8)]}
    )
    items["tags"] = TAGS
    if with_audio:
        rng = np.random.default_rng(0)
        centre = np.where(np.arange(8)[:, None] < 4, 1.0, -1.0) * np.array([[3.0, 1.0, 2.0]])
        for column, values in enumerate((centre + 0.1 * rng.standard_normal((8, 3))).T):
            items[f"audio_feature{column}"] = values
    return items


def plays() -> sp.csr_matrix:
    # Users 0-2 play rock items 0-2, users 3-5 play jazz items 4-6; nobody plays items 3 and 7.
    rows = [(u, i, 5.0) for u in range(3) for i in range(3)] + [(u, i, 2.0) for u in range(3, 6) for i in range(4, 7)]
    user, item, weight = zip(*rows)
    return sp.csr_matrix((weight, (user, item)), shape=(6, 8))


@pytest.mark.parametrize("features", ["tags", "audio"])
def test_content_model_ranks_never_played_items_by_what_they_are(features):
    model = fit_model("content", {"features": features}, plays(), catalogue(with_audio=True))
    ids, _ = model.recommend(0, n=1)
    assert ids.tolist() == [3]  # the unplayed rock item, for a rock listener
    ids, _ = model.recommend(4, n=1)
    assert ids.tolist() == [7]
    ids, _ = model.recommend_for_history([4, 5], n=2)
    assert set(ids.tolist()) <= {6, 7}


def test_content_similar_items_and_explanations():
    model = fit_model("content", {}, plays(), catalogue())
    ids, scores = model.similar_items(0, n=3)
    assert set(ids.tolist()) <= {1, 2, 3} and 0 not in ids
    assert ids[0] == 3  # same two tags
    contributions = model.explain(0, 3)
    assert [item for item, _ in contributions][0] == 0  # the history item sharing both tags
    assert sum(weight for _, weight in contributions) == pytest.approx(model.score(np.array([0]))[0, 3])


def test_tag_features_are_unit_rows_and_empty_tags_give_zero_rows():
    items = catalogue()
    items.loc[3, "tags"] = []
    features = item_features(items, "tags")
    norms = np.sqrt(np.asarray(features.multiply(features).sum(axis=1)).ravel())
    assert norms[3] == 0 and np.allclose(np.delete(norms, 3), 1)
    with pytest.raises(ValueError, match="audio feature columns"):
        item_features(items, "audio")


def test_hybrid_trusts_content_for_cold_items_and_collaboration_for_warm_ones():
    params = {"collaborative": "popularity", "balance": 2.0, "cold_weight": 3.0, "warm_weight": 0.5}
    model = fit_model("hybrid", params, plays(), catalogue())
    # Item 3: nobody played it, content at its cold weight; item 0: 3 listeners, (2 * 3 + 3 * 0.5) / 5.
    assert model.content_weights()[3] == 3.0 and model.content_weights()[0] == pytest.approx(1.5)
    ids, _ = model.recommend(0, n=1)
    assert ids.tolist() == [3]  # popularity alone would never rank the unplayed item first
    popular_only, _ = fit_model("popularity", {}, plays(), catalogue()).recommend(0, n=1)
    assert popular_only.tolist() != [3]


BLEND = [
    {"kind": "item_knn", "params": {"neighbours": 5, "shrinkage": 0.0}, "weight": 0.6},
    {"kind": "content", "params": {}, "weight": 0.4},
    {"kind": "popularity", "params": {}, "weight": 0.2},
]


def test_blend_is_the_weighted_sum_of_standardised_parts():
    from encore.recsys.models.base import standardise

    model = fit_model("blend", {"parts": BLEND}, plays(), catalogue())
    users = np.arange(6)
    parts = [fit_model(part["kind"], part["params"], plays(), catalogue()) for part in BLEND]
    expected = sum(part["weight"] * standardise(p.score(users)) for part, p in zip(BLEND, parts))
    assert np.allclose(model.score(users), expected)
    ids, _ = model.recommend(0, n=1)
    assert ids.tolist() == [3]  # content lifts the unplayed rock item


def test_blend_explains_and_finds_similar_items_through_its_parts():
    model = fit_model("blend", {"parts": BLEND}, plays(), catalogue())
    contributions = model.explain(0, 3)
    assert {item for item, _ in contributions} <= {0, 1, 2}
    ids, _ = model.similar_items(0, n=2)  # from item_knn, the heaviest part
    assert set(ids.tolist()) <= {1, 2}
    only_popular = fit_model(
        "blend", {"parts": [{"kind": "popularity", "params": {}, "weight": 1.0}]}, plays(), catalogue()
    )
    with pytest.raises(NotSupportedError, match="no part of this blend"):
        only_popular.explain(0, 3)
    with pytest.raises(ValueError, match="keys kind, params and weight"):
        model_class("blend")(parts=[{"kind": "ease"}])


def test_blend_explains_with_every_parts_full_contributions():
    # A history of 14 items: a part's ten largest contributions would leave some of it out.
    plays = block_matrix(1, 8, 20, played_per_user=14, max_plays=20)
    parts = [
        {"kind": "als", "params": {"factors": 4, "iterations": 5}, "weight": 0.7},
        {"kind": "item_knn", "params": {"neighbours": 10}, "weight": 0.3},
    ]
    model = fit_model("blend", {"parts": parts}, plays)
    user, history = 0, plays[0].indices
    item = int(model.recommend(user, n=1)[0][0])
    expected = dict.fromkeys(history.tolist(), 0.0)
    for part, spec in zip((model.part0_, model.part1_), parts):
        std = part.score(np.array([user]))[0].std()
        for index, contribution in part.explain(user, item, n=len(history)):
            expected[index] += spec["weight"] * contribution / std
    explained = model.explain(user, item, n=len(history))
    assert len(explained) == len(history)
    assert dict(explained) == pytest.approx(expected)
    assert model.explain(user, item, n=3) == explained[:3]
