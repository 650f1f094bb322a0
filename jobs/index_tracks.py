"""Build the sound-alike index of every extracted track and save it in the model store.

Reads ``tracks.parquet`` of an extraction run (``jobs.extract_features``; a folder or ``s3://``
prefix), indexes the tracks' standardised GTZAN feature vectors (``encore.soundalike.index``) and saves
the index as kind ``soundalike``, moving the aliases given (default ``soundalike-latest``). The
index fits in seconds on one core, so the job runs in the driver.

    python -m jobs.index_tracks --features artifacts/features --store artifacts --alias soundalike-production
"""

import argparse

from encore.core.cli import user_errors
from encore.core.runtime import setup_logging
from encore.soundalike.build import index_tracks
from encore.store import DEFAULT_STORE_URI


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", required=True, help="output folder or s3:// prefix of jobs.extract_features")
    parser.add_argument("--store", default=DEFAULT_STORE_URI, help="model store folder or s3:// prefix")
    parser.add_argument("--metric", default="euclidean", help="distance between feature vectors")
    parser.add_argument(
        "--alias", action="append", default=None, help="aliases to move to the new version (default: soundalike-latest)"
    )
    args = parser.parse_args(argv)
    setup_logging()
    with user_errors():
        return index_tracks(args.features, args.store, args.alias or ["soundalike-latest"], args.metric)


if __name__ == "__main__":
    main()
