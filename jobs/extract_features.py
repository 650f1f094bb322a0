"""Extract audio features from a folder or bucket of audio files, on Ray Data.

Writes ``tracks.parquet``, ``segments.parquet`` and ``errors.parquet`` under ``--output``; a rerun
skips files already analysed, and running the same command again after a crash resumes from the
parts written so far (``encore.audio.extract`` says how).

    python -m jobs.extract_features --input data/audio-samples --output artifacts/features
"""

import argparse

from encore.audio.extract import DEFAULT_BATCH_SIZE, DEFAULT_FILE_TIMEOUT_S, extract_features
from encore.audio.schema import SAMPLE_RATE, SEGMENT_SECONDS
from encore.audio.warmup import default_numba_cache_dir
from encore.core.cli import user_errors
from encore.core.runtime import init_ray, setup_logging


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="audio file, folder or s3:// prefix")
    parser.add_argument("--output", required=True, help="folder or s3:// prefix for the Parquet tables")
    parser.add_argument("--sample-rate", type=int, default=SAMPLE_RATE, help="analysis sample rate in Hz")
    parser.add_argument(
        "--segment-seconds", type=float, default=SEGMENT_SECONDS, help="length of the segments of segments.parquet"
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="files per actor call")
    parser.add_argument("--workers", type=int, help="actors (one CPU each); default: every CPU of the cluster")
    parser.add_argument(
        "--file-timeout", type=float, default=DEFAULT_FILE_TIMEOUT_S, help="seconds one file may take before it fails"
    )
    parser.add_argument(
        "--numba-cache-dir",
        help=f"numba cache folder of the workers on each node (default: {default_numba_cache_dir()})",
    )
    args = parser.parse_args(argv)
    setup_logging()
    init_ray()
    with user_errors():
        return extract_features(
            args.input, args.output, sample_rate=args.sample_rate, segment_seconds=args.segment_seconds,
            batch_size=args.batch_size, workers=args.workers, file_timeout_s=args.file_timeout,
            numba_cache_dir=args.numba_cache_dir,
        )  # fmt: skip


if __name__ == "__main__":
    main()
