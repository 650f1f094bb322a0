"""Sound-alike search: the nearest tracks in log-scaled, standardised GTZAN feature space.

``SoundalikeIndex`` is fitted on the track table of the extraction job (``tracks.parquet``: path,
sha256, duration and the 57 GTZAN columns of the whole track). Each track gets an id, the first 16
hex digits of its content hash, so that a file found under two paths is one track and ids survive
a re-extraction. Neighbours are exact (scikit-learn's ``NearestNeighbors``), which is quick at
catalogue sizes of up to a few hundred thousand tracks; the folder saved holds the vectors, not a
pickled index, and the index is rebuilt on load.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.neighbors import NearestNeighbors

from encore.audio.schema import FEATURE_VERSION, SAMPLE_RATE
from encore.audio.vectors import FeatureScaler, feature_matrix
from encore.core.errors import ServingError

TRACK_ID_DIGITS = 16
CONFIG_FILE, TRACKS_FILE, VECTORS_FILE = "config.json", "tracks.parquet", "vectors.npz"


def preprocessing() -> dict:
    """What the features of a query must share with the features the index was built from."""
    return {"feature_version": FEATURE_VERSION, "sample_rate": SAMPLE_RATE}


class UnknownTrackError(ServingError, status=404, code="unknown_track"):
    def __init__(self, track_id: str):
        super().__init__(f"no track {track_id!r} in the index", "track_id")


class SoundalikeIndex:
    """Exact nearest neighbours of tracks by their GTZAN features.

    Parameters
    ----------
    metric : str
        Any metric of ``sklearn.neighbors.NearestNeighbors`` ("euclidean", "cosine", "manhattan").

    Examples
    --------
    >>> index = SoundalikeIndex().fit(pd.read_parquet("artifacts/features/tracks.parquet"))
    >>> index.similar(index.tracks_["track_id"][0], n=5)
    """

    def __init__(self, metric: str = "euclidean"):
        self.metric = metric

    def fit(self, tracks: pd.DataFrame) -> "SoundalikeIndex":
        """Index the tracks of an extraction table; the first path of each content hash is kept."""
        for column in ("path", "sha256", "duration"):
            if column not in tracks.columns:
                raise ValueError(
                    f"the track table has no {column!r} column: is it the extraction job's tracks.parquet?"
                )
        if len(tracks) == 0:
            raise ValueError("the track table is empty: nothing to index")
        tracks = tracks.sort_values("path").drop_duplicates("sha256").reset_index(drop=True)
        X = feature_matrix(tracks, "the track table")
        self.tracks_ = pd.DataFrame(
            {
                "track_id": tracks["sha256"].str[:TRACK_ID_DIGITS],
                "name": tracks["path"].str.rsplit("/", n=1).str[-1],
                "path": tracks["path"],
                "sha256": tracks["sha256"],
                "duration": tracks["duration"].astype(float),
            }
        )
        if self.tracks_["track_id"].duplicated().any():
            raise ValueError(f"two contents share the first {TRACK_ID_DIGITS} hex digits of their sha256")
        self.scaler_ = FeatureScaler().fit(X)
        self.vectors_ = self.scaler_.transform(X)
        self._build()
        return self

    def _build(self) -> None:
        self._neighbours = NearestNeighbors(metric=self.metric).fit(self.vectors_)
        self._positions = pd.Index(self.tracks_["track_id"])

    def _describe(self, distances: np.ndarray, positions: np.ndarray) -> list[dict]:
        rows = self.tracks_.iloc[positions]
        return [
            {"track_id": track_id, "name": name, "duration": float(duration), "distance": float(distance)}
            for track_id, name, duration, distance in zip(rows["track_id"], rows["name"], rows["duration"], distances)
        ]

    def similar(self, track_id: str, n: int = 10) -> list[dict]:
        """The ``n`` tracks nearest to an indexed track, nearest first, the track itself left out."""
        position = self._positions.get_indexer([track_id])[0]
        if position < 0:
            raise UnknownTrackError(track_id)
        k = min(n + 1, len(self.tracks_))
        distances, positions = self._neighbours.kneighbors(self.vectors_[position : position + 1], k)
        keep = positions[0] != position
        return self._describe(distances[0][keep][:n], positions[0][keep][:n])

    def similar_to_features(self, features: pd.DataFrame, n: int = 10) -> list[dict]:
        """The ``n`` indexed tracks nearest to one track's GTZAN features (a one-row table), nearest first."""
        vector = self.scaler_.transform(feature_matrix(features, "the query's features"))
        distances, positions = self._neighbours.kneighbors(vector[:1], min(n, len(self.tracks_)))
        return self._describe(distances[0], positions[0])

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(json.dumps({"metric": self.metric}))
        pq.write_table(pa.Table.from_pandas(self.tracks_, preserve_index=False), folder / TRACKS_FILE)
        np.savez(folder / VECTORS_FILE, vectors=self.vectors_, **self.scaler_.state())

    @classmethod
    def load(cls, folder: str | Path) -> "SoundalikeIndex":
        folder = Path(folder)
        index = cls(**json.loads((folder / CONFIG_FILE).read_text()))
        index.tracks_ = pq.read_table(folder / TRACKS_FILE).to_pandas()
        with np.load(folder / VECTORS_FILE) as arrays:
            index.vectors_ = arrays["vectors"]
            index.scaler_ = FeatureScaler.from_state(
                {name: arrays[name] for name in ("log_columns", "floor", "mean", "scale")}
            )
        index._build()
        return index
