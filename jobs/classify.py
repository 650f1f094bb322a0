"""Classify the genre of every audio file of a folder or ``s3://`` prefix with a stored genre model.

The files are analysed as ``jobs.extract_features`` does (tables under ``OUTPUT/features``), then
Ray Data actors predict the genre of each 30-second window (``encore.genre.classify``). Written under
``OUTPUT``: ``predictions.parquet`` (a row per track: genre probabilities, ``top_genre``,
``model_version``) and ``errors.parquet`` (the files that could not be decoded, with the reason).

    python -m jobs.classify --input data/audio-samples --output artifacts/genres --store artifacts --model genre-latest
"""

import argparse

from encore.core.cli import user_errors
from encore.core.runtime import init_ray, setup_logging
from encore.genre.classify import classify
from encore.store import DEFAULT_STORE_URI


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="audio file, folder or s3:// prefix")
    parser.add_argument("--output", required=True, help="folder or s3:// prefix for the Parquet tables")
    parser.add_argument("--store", default=DEFAULT_STORE_URI, help="model store folder or s3:// prefix")
    parser.add_argument("--model", default="genre-production", help="alias or version id of a genre model")
    parser.add_argument("--workers", type=int, help="actors (one CPU each); default: every CPU of the cluster")
    parser.add_argument("--numba-cache-dir", help="numba cache folder of the extraction workers on each node")
    args = parser.parse_args(argv)
    setup_logging()
    init_ray()
    with user_errors():
        return classify(
            args.input, args.output, args.store, args.model, workers=args.workers, numba_cache_dir=args.numba_cache_dir
        )


if __name__ == "__main__":
    main()
