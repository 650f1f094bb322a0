"""The sound-alike index of every track of an extraction run, built and saved in the model store.

Reads ``tracks.parquet`` of an extraction run (``encore.audio.extract``), indexes the tracks'
standardised GTZAN feature vectors (``encore.soundalike.index``) and saves the index as kind
``soundalike``. ``jobs.index_tracks`` is the command line.
"""

import hashlib
import logging

from encore.audio.extract import read_tracks
from encore.core import fs
from encore.serving.versions import serving_store
from encore.soundalike.index import SoundalikeIndex, preprocessing
from encore.store.publish import save_trained

logger = logging.getLogger(__name__)

KIND = "soundalike"


def index_tracks(features_uri: str, store_uri: str, aliases: list[str], metric: str = "euclidean") -> str:
    """Fit the index and save it; returns the version."""
    features_uri, store_uri = fs.absolute(features_uri), fs.absolute(store_uri)
    tracks = read_tracks(features_uri)
    index = SoundalikeIndex(metric=metric).fit(tracks)
    logger.info("indexed %d tracks (%d files) from %s", len(index.tracks_), len(tracks), features_uri)
    fingerprint = hashlib.sha256("\n".join(sorted(index.tracks_["sha256"])).encode()).hexdigest()
    return save_trained(
        serving_store(store_uri),
        index,
        aliases,
        kind=KIND,
        config={"metric": metric, "features": features_uri},
        metrics={"tracks": len(index.tracks_), "files": len(tracks)},
        data_fingerprint=f"sha256:{fingerprint}",
        preprocessing=preprocessing(),
    )
