import io
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from encore.core import fs
from encore.privacy.ids import key_fingerprint, pseudonymize
from encore.recsys import hetrec
from encore.recsys.interactions import (
    SCHEMA_VERSION,
    TABLES,
    DatasetError,
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


def small_dataset(seed: int) -> InteractionDataset:
    catalogue = pd.DataFrame({"item_id": ["item1"], "name": ["One"], "tags": [["rock"]]})
    return InteractionDataset.build(make_pairs(n_users=8, seed=seed), catalogue, SplitConfig(), manifest={})


def assert_same_dataset(loaded: InteractionDataset, expected: InteractionDataset) -> None:
    assert loaded.manifest["fingerprint"] == expected.manifest["fingerprint"]
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(loaded, name), getattr(expected, name), check_dtype=False)


# Saves the pickled dataset argv[2] to argv[1] with one attachment, and SIGKILLs itself before its
# write number argv[3] (0-based; the manifest's is the last): a writer dying at a known point.
KILLED_SAVE = """
import os, pickle, signal, sys
from encore.core import fs
uri, pickled, survive = sys.argv[1], sys.argv[2], int(sys.argv[3])
write, written = fs.write_bytes, []
def write_or_die(target, data):
    if len(written) == survive:
        os.kill(os.getpid(), signal.SIGKILL)
    write(target, data)
    written.append(target)
fs.write_bytes = write_or_die
with open(pickled, "rb") as file:
    pickle.load(file).save(uri, {"rejects.csv": b"source,line,reason,user_key\\n"})
"""
WRITES_PER_SAVE = len(TABLES) + 2  # the tables, the attachment, the manifest


def killed_save(uri: str, dataset: InteractionDataset, survive: int, tmp_path: Path) -> None:
    pickled = tmp_path / f"dataset-{survive}.pickle"
    pickled.write_bytes(pickle.dumps(dataset))
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", KILLED_SAVE, uri, str(pickled), str(survive)], env=env, capture_output=True, text=True
    )
    assert result.returncode == -signal.SIGKILL, result.stderr


@pytest.mark.parametrize(
    "where, survive", [("local", n) for n in range(WRITES_PER_SAVE)] + [("s3", 1), ("s3", WRITES_PER_SAVE - 1)]
)
def test_a_writer_killed_mid_save_leaves_the_previous_dataset_published(where, survive, tmp_path, request):
    uri = str(tmp_path / "ds") if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/datasets/ds"
    previous, new = small_dataset(seed=1), small_dataset(seed=2)
    previous.save(uri)

    killed_save(uri, new, survive, tmp_path)
    loaded = InteractionDataset.load(uri)  # every file checked against its sha256
    assert_same_dataset(loaded, previous)

    new.save(uri)  # the next ingest publishes over the debris
    assert_same_dataset(InteractionDataset.load(uri), new)
    latest = small_dataset(seed=3)
    latest.save(uri)  # and the one after removes it, with the first version
    filesystem, path = fs.resolve(uri)
    assert len(filesystem.get_file_info(pafs.FileSelector(f"{path}/versions"))) == 2
    assert_same_dataset(InteractionDataset.load(uri), latest)


def test_a_dataset_with_an_altered_or_missing_file_is_refused(tmp_path):
    dataset = small_dataset(seed=1)
    folder = Path(dataset.save(tmp_path / "ds"))
    users = pq.read_table(folder / "users.parquet")
    pq.write_table(users.slice(1), folder / "users.parquet")  # a valid Parquet file, one user short
    with pytest.raises(DatasetError, match="users.parquet of version .* does not match its sha256"):
        InteractionDataset.load(tmp_path / "ds")
    (folder / "users.parquet").unlink()
    with pytest.raises(DatasetError, match="users.parquet of version .* is missing"):
        InteractionDataset.load(tmp_path / "ds")


def test_versions_replace_each_other_and_the_single_folder_layout(tmp_path):
    uri = tmp_path / "ds"
    uri.mkdir()
    (uri / "manifest.json").write_text(json.dumps({"schema": SCHEMA_VERSION, "fingerprint": "old"}))
    for name in ("interactions.parquet", "users.parquet", "items.parquet", "rejects.csv"):
        (uri / name).write_bytes(b"written before datasets had versions")
    with pytest.raises(DatasetError, match="single-folder layout.*run jobs.ingest again"):
        InteractionDataset.load(uri)

    (uri / "manifest.json").write_text('{"schema": "interactions/v1", "fing')  # cut short by a crash
    folders = [Path(small_dataset(seed).save(uri)) for seed in range(4)]
    assert sorted(path.name for path in uri.iterdir()) == ["manifest.json", "versions"]
    # The version just replaced stays for readers that read the manifest before it moved.
    assert sorted((uri / "versions").iterdir()) == folders[2:]
    assert_same_dataset(InteractionDataset.load(uri), small_dataset(3))


def test_a_version_named_by_a_clock_ahead_of_ours_never_removes_the_new_one(tmp_path):
    uri = tmp_path / "ds"
    first = Path(small_dataset(seed=1).save(uri))
    ahead = "29991231T235959.999999Z-0123abcd"  # written by a machine whose clock runs ahead
    first.rename(first.with_name(ahead))
    manifest = json.loads((uri / "manifest.json").read_text())
    (uri / "manifest.json").write_text(json.dumps({**manifest, "version": ahead}))

    second = small_dataset(seed=2)
    second.save(uri)
    assert_same_dataset(InteractionDataset.load(uri), second)
