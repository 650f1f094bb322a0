"""Build the sound-alike index of every extracted track and save it in the model store.

Reads ``tracks.parquet`` of an extraction run (``jobs.extract_features``; a folder or ``s3://``
prefix), indexes the tracks' standardised GTZAN feature vectors (``encore.soundalike.index``) and saves
the index as kind ``soundalike``, moving the aliases given (default ``soundalike-latest``). The
index fits in seconds on one core, so the job runs in the driver.

    python -m jobs.index_tracks --features artifacts/features --store artifacts --alias soundalike-production
"""

import argparse
import hashlib
import logging
import tempfile

import pyarrow.parquet as pq

from encore.audio.schema import FEATURE_VERSION
from encore.core import fs
from encore.core.runtime import setup_logging, user_errors
from encore.serving.versions import serving_store
from encore.soundalike.index import SoundalikeIndex, preprocessing

logger = logging.getLogger("encore.index_tracks")

KIND = "soundalike"


def read_tracks(features_uri: str):
    """The extraction job's track table under ``features_uri``; raises ValueError if its features are of
    another version than this code computes (queries would be compared with other numbers)."""
    uri = fs.join(features_uri, "tracks.parquet")
    if not fs.exists(uri):
        raise FileNotFoundError(f"{uri}: no track table; run jobs.extract_features with --output {features_uri}")
    filesystem, path = fs.resolve(uri)
    table = pq.read_table(path, filesystem=filesystem)
    version = (table.schema.metadata or {}).get(b"encore.feature_version", b"").decode()
    if version != FEATURE_VERSION:
        raise ValueError(f"{uri} holds features of version {version!r}, this code computes {FEATURE_VERSION!r}")
    return table.to_pandas()


def index_tracks(features_uri: str, store_uri: str, aliases: list[str], metric: str = "euclidean") -> str:
    """Fit the index and save it; returns the version."""
    features_uri, store_uri = fs.absolute(features_uri), fs.absolute(store_uri)
    tracks = read_tracks(features_uri)
    index = SoundalikeIndex(metric=metric).fit(tracks)
    logger.info("indexed %d tracks (%d files) from %s", len(index.tracks_), len(tracks), features_uri)
    fingerprint = hashlib.sha256("\n".join(sorted(index.tracks_["sha256"])).encode()).hexdigest()
    with tempfile.TemporaryDirectory() as folder:
        index.save(folder)
        manifest = serving_store(store_uri).save(
            folder,
            kind=KIND,
            config={"metric": metric, "features": features_uri},
            metrics={"tracks": len(index.tracks_), "files": len(tracks)},
            data_fingerprint=f"sha256:{fingerprint}",
            preprocessing=preprocessing(),
            aliases=aliases,
        )
    logger.info("saved %s to %s (aliases: %s)", manifest.version, store_uri, ", ".join(aliases))
    return manifest.version


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", required=True, help="output folder or s3:// prefix of jobs.extract_features")
    parser.add_argument("--store", default="./artifacts", help="model store folder or s3:// prefix")
    parser.add_argument("--metric", default="euclidean", help="distance between feature vectors")
    parser.add_argument(
        "--alias", action="append", default=None, help="aliases to move to the new version (default: soundalike-latest)"
    )
    args = parser.parse_args(argv)
    setup_logging()
    with user_errors():
        try:
            return index_tracks(args.features, args.store, args.alias or ["soundalike-latest"], args.metric)
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
