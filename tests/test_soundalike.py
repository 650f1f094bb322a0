"""The sound-alike index: exact neighbours in standardised feature space, ids from content hashes."""

import hashlib

import numpy as np
import pandas as pd
import pytest

from encore.genre.data import load_table
from encore.soundalike.index import SoundalikeIndex, UnknownTrackError


@pytest.fixture(scope="module")
def tracks() -> pd.DataFrame:
    """The GTZAN table dressed as an extraction job's track table (each clip its own 'file')."""
    table = load_table()
    return table.assign(
        path=[f"s3://music/{genre}/{name}" for genre, name in zip(table["label"], table["filename"])],
        sha256=[hashlib.sha256(name.encode()).hexdigest() for name in table["filename"]],
        duration=table["length"] / 22_050,
    )


def test_identical_audio_is_the_nearest_track(tracks):
    index = SoundalikeIndex().fit(tracks)
    ids = dict(zip(index.tracks_["name"], index.tracks_["track_id"]))
    # GTZAN's exact repetitions (see data/gtzan-features/SOURCE.md), one of them across genres.
    for a, b in [("pop.00054.wav", "pop.00060.wav"), ("metal.00058.wav", "rock.00016.wav")]:
        nearest = index.similar(ids[a], n=3)
        assert nearest[0]["track_id"] == ids[b] and nearest[0]["distance"] == pytest.approx(0, abs=1e-9)
        assert ids[a] not in [track["track_id"] for track in nearest]
        assert nearest[1]["distance"] > 0 and [t["distance"] for t in nearest] == sorted(t["distance"] for t in nearest)
    row = tracks[tracks["filename"] == "jazz.00007.wav"]
    assert index.similar_to_features(row, n=1)[0]["track_id"] == ids["jazz.00007.wav"]


def test_save_load_and_unknown_tracks(tracks, tmp_path):
    index = SoundalikeIndex(metric="manhattan").fit(tracks.head(50))
    index.save(tmp_path / "index")
    again = SoundalikeIndex.load(tmp_path / "index")
    first = index.tracks_["track_id"].iloc[0]
    assert again.metric == "manhattan" and again.similar(first, n=5) == index.similar(first, n=5)
    assert len(again.similar(first, n=100)) == 49  # every other track, never more
    assert again.tracks_["track_id"].str.len().eq(16).all()
    with pytest.raises(UnknownTrackError, match="no track 'nope' in the index"):
        again.similar("nope")


def test_one_content_under_two_paths_is_one_track(tracks):
    copy = tracks.head(3).assign(path=lambda frame: frame["path"] + ".copy")
    index = SoundalikeIndex().fit(pd.concat([tracks.head(3), copy]))
    assert len(index.tracks_) == 3
    with pytest.raises(ValueError, match="row 1 has inf in tempo"):
        SoundalikeIndex().fit(tracks.head(3).assign(tempo=[1.0, np.inf, 2.0]))
