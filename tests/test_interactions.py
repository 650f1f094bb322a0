import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from encore import hetrec
from encore.ids import key_fingerprint, pseudonymize
from encore.interactions import (
    InteractionDataset,
    SplitConfig,
    assign_split,
    fingerprint,
    merge_duplicates,
    parse_file,
)

KEY = b"test-key"

PLANTED = b"""user,item,weight,timestamp
alice,song-1,3,2024-01-01T00:00:00
alice,song-2,1.5,
,song-3,2,
bob,,2,
bob,song-4,abc,
bob,song-5,-1,
bob,song-6,nan,
bob,song-7,inf,
bob,song-8,2,not-a-date
carol,song-9
alice,song-1,2,1700000000

carol,song-10,4,1700000000,extra
"""


def test_bad_rows_are_reported_with_line_and_reason():
    parsed = parse_file(PLANTED, "plays.csv", KEY)
    rejects = parsed[parsed["reason"] != ""].set_index("line")["reason"].to_dict()
    assert rejects == {
        4: "missing user id",
        5: "missing item id",
        6: "weight is not a number (found text)",
        7: "weight is negative",
        8: "weight is not finite",
        9: "weight is not finite",
        10: "timestamp is neither a number nor an ISO-8601 date",
        11: "expected 4 fields, found 2",
        14: "expected 4 fields, found 5",
    }
    good = parsed[parsed["reason"] == ""]
    assert good["line"].tolist() == [2, 3, 12]
    assert good["timestamp"].iloc[0] == pd.Timestamp("2024-01-01", tz="UTC").timestamp()
    assert np.isnan(good["timestamp"].iloc[1])


def test_user_ids_are_pseudonymised_in_good_rows_and_rejects():
    parsed = parse_file(PLANTED, "plays.csv", KEY)
    text = parsed.to_csv()
    for raw in ("alice", "bob", "carol"):
        assert raw not in text
    assert parsed.loc[parsed["line"] == 6, "user"].iloc[0] == pseudonymize("bob", KEY)
    assert set(parsed.loc[parsed["reason"] == "", "user"]) == {pseudonymize("alice", KEY)}


def test_pseudonyms_depend_on_the_key():
    assert pseudonymize("alice", b"k1") != pseudonymize("alice", b"k2")
    assert pseudonymize("alice", b"k1") == pseudonymize("alice", b"k1")
    assert key_fingerprint(b"k1") != key_fingerprint(b"k2")


def test_unusable_header_is_one_reject_naming_the_file():
    parsed = parse_file(b"a,b,c\n1,2,3\n", "odd.csv", KEY)
    assert len(parsed) == 1
    assert "odd.csv" in parsed["reason"].iloc[0] and "no column for user, item, weight" in parsed["reason"].iloc[0]


def test_parquet_rows_are_validated():
    table = pa.table({"user_id": ["u1", "u2", None], "item_id": ["a", "b", "c"], "weight": [1.0, -2.0, 1.0]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    parsed = parse_file(buffer.getvalue(), "plays.parquet", KEY)
    assert parsed.set_index("line")["reason"].to_dict() == {1: "", 2: "weight is negative", 3: "missing user id"}


def test_duplicates_are_summed():
    parsed = parse_file(PLANTED, "plays.csv", KEY)
    pairs = merge_duplicates(parsed[parsed["reason"] == ""])
    song1 = pairs[pairs["item"] == "song-1"]
    assert len(song1) == 1 and song1["weight"].iloc[0] == 5.0 and song1["timestamp"].iloc[0] == 1704067200.0


def make_pairs(n_users=40, max_items=30, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        for item in rng.choice(200, size=rng.integers(1, max_items), replace=False):
            rows.append((f"user{user:03d}", f"item{item}", float(rng.integers(1, 50)), np.nan))
    return pd.DataFrame(rows, columns=["user", "item", "weight", "timestamp"])


def test_split_follows_the_per_user_rule():
    pairs = make_pairs()
    pairs["split"] = assign_split(pairs, SplitConfig(seed=1)).to_numpy()
    for _, group in pairs.groupby("user"):
        counts = group["split"].value_counts()
        n = len(group)
        if n < 5:
            assert counts.get("train") == n
            continue
        n_test = max(1, round(0.2 * n))
        assert counts.get("test") == n_test
        rest = n - n_test
        assert counts.get("validation", 0) == (max(1, round(0.2 * rest)) if rest >= 5 else 0)


def test_split_is_a_function_of_data_and_seed_only():
    pairs = make_pairs()
    split = assign_split(pairs, SplitConfig(seed=7))
    shuffled = pairs.sample(frac=1, random_state=3)
    assert (assign_split(shuffled, SplitConfig(seed=7)).sort_index() == split).all()
    assert (assign_split(pairs, SplitConfig(seed=8)) != split).any()
    assert fingerprint(pairs, SplitConfig(seed=7)) == fingerprint(shuffled, SplitConfig(seed=7))
    assert fingerprint(pairs, SplitConfig(seed=7)) != fingerprint(pairs, SplitConfig(seed=8))


def test_tags_leave_out_the_tagging_events_of_held_out_pairs():
    pairs = make_pairs()
    split = assign_split(pairs, SplitConfig())
    held_user, held_item = pairs.loc[split == "test", ["user", "item"]].iloc[0]
    # Another user, who never played the held-out item.
    others = (split == "train") & ~pairs["user"].isin(pairs.loc[pairs["item"] == held_item, "user"])
    train_user, train_item = pairs.loc[others, ["user", "item"]].iloc[0]
    taggings = pd.DataFrame(
        [
            (held_user, held_item, "my-own-tag"),  # would give away the held-out pair
            (held_user, held_item, "my-own-tag"),
            (train_user, held_item, "jazz"),  # another listener's tag on the same item counts
            (train_user, train_item, "jazz"),
            (train_user, train_item, "my-own-tag"),
            (train_user, "never-played", "folk"),
        ],
        columns=["user", "item", "tag"],
    )
    catalogue = pd.DataFrame(
        {"item_id": [held_item, train_item, "never-played"], "name": ["a", "b", "c"], "tags": [[]] * 3}
    )
    dataset = InteractionDataset.build(pairs, catalogue, SplitConfig(), manifest={}, taggings=taggings)
    tags = dataset.items.set_index("item_id")["tags"]
    assert tags[held_item] == ["jazz"]
    assert tags[train_item] == ["jazz", "my-own-tag"] and tags["never-played"] == ["folk"]
    assert dataset.manifest["taggings"] == {"used": 4, "held_out": 2}
    assert (
        dataset.manifest["fingerprint"]
        == InteractionDataset.build(pairs, catalogue, SplitConfig(), {}).manifest["fingerprint"]
    )


def test_hetrec_sample_taggings_are_pseudonymised_and_become_artist_tags():
    folder = str(Path(__file__).resolve().parents[1] / "data" / "lastfm-hetrec2k")
    taggings = hetrec.read_taggings(folder, KEY)
    raw = pd.read_csv(Path(folder) / "user_taggedartists.dat", sep="\t", dtype=str)
    assert len(taggings) == len(raw)  # every tag of the sample is in its vocabulary
    assert set(taggings["user"]) == {pseudonymize(user, KEY) for user in raw["userID"]}
    parsed = parse_file((Path(folder) / "user_artists.dat").read_bytes(), "user_artists.dat", KEY)
    pairs = merge_duplicates(parsed[parsed["reason"] == ""])
    dataset = InteractionDataset.build(pairs, hetrec.load_catalogue(folder), SplitConfig(), {}, taggings)
    britney = dataset.items.set_index("name").loc["Britney Spears"]
    assert britney["item_id"] == "289" and britney["tags"][:2] == ["pop", "dance"]
    counts = dataset.manifest["taggings"]
    assert counts["used"] + counts["held_out"] == len(raw) and 0.05 < counts["held_out"] / len(raw) < 0.3


def test_dataset_roundtrip_and_matrices(tmp_path):
    pairs = make_pairs()
    catalogue = pd.DataFrame({"item_id": ["item1", "never-played"], "name": ["One", "Nobody"], "tags": [["rock"], []]})
    dataset = InteractionDataset.build(pairs, catalogue, SplitConfig(), manifest={"sources": ["x"]})
    assert "never-played" in set(dataset.items["item_id"])
    dataset.save(tmp_path / "ds")
    loaded = InteractionDataset.load(str(tmp_path / "ds"))
    assert loaded.manifest["fingerprint"] == dataset.manifest["fingerprint"]
    total = loaded.matrix("train", "validation", "test")
    assert total.nnz == len(pairs) and total.sum() == pytest.approx(pairs["weight"].sum())
    assert loaded.items.set_index("item_id").loc["item1", "tags"] == ["rock"]
    with pytest.raises(ValueError, match="unknown split"):
        loaded.matrix("holdout")
