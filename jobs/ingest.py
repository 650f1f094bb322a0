"""Ingest implicit-feedback interactions into an Encore dataset, on Ray Data.

Reads (user, item, weight[, timestamp]) rows from CSV/TSV or Parquet files at a path or ``s3://``
URI, or a Last.fm HetRec 2011 folder; user ids are pseudonymised in the Ray Data workers, rejected
rows go to ``rejects.csv``, and the dataset is written as a new version (``encore.recsys.ingest``).
``--audio-features`` adds the tracks of an extraction run (``jobs.extract_features``) as items with
audio features.

    python -m jobs.ingest --input data/lastfm-hetrec2k --output artifacts/datasets/lastfm
    python -m jobs.ingest --input plays.csv --audio-features artifacts/features --output artifacts/datasets/mine
"""

import argparse

from encore.core.cli import user_errors
from encore.core.runtime import init_ray, setup_logging
from encore.recsys.ingest import add_split_arguments, ingest, split_config


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--input", required=True, help="file, folder or s3:// prefix of interactions, or a HetRec folder"
    )
    parser.add_argument("--output", required=True, help="dataset folder or s3:// prefix to write")
    parser.add_argument(
        "--audio-features", help="an extraction run's output (jobs.extract_features): item features of audio items"
    )
    add_split_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()
    init_ray()
    with user_errors():
        return ingest(args.input, args.output, split_config(args), args.audio_features)


if __name__ == "__main__":
    main()
