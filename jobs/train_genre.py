"""Train the genre classifier on the GTZAN 30-second table, evaluate it and save it in the model store.

The model is fitted on the train part of the fault-filtered, artist-disjoint split and scored on
validation (the figure searches select on), then refitted on train + validation and scored on test
(the headline figure); with ``--random-folds K`` it is also scored by random K-fold CV over the whole
table, stored apart and labelled as such. The refitted model is saved as kind ``genre`` with all of
these metrics, and the aliases given (default ``genre-latest``) move to it (``encore.genre.train``).

    python -m jobs.train_genre --store artifacts --alias genre-latest --alias genre-production
"""

import argparse
import json

from encore.core.cli import user_errors
from encore.core.runtime import init_ray, setup_logging
from encore.genre.data import TABLE_NAME
from encore.genre.train import train_genre
from encore.store import DEFAULT_STORE_URI


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=DEFAULT_STORE_URI, help="model store folder or s3:// prefix")
    parser.add_argument("--params", default="{}", help="hyperparameters as JSON, e.g. '{\"hidden\": 128}'")
    parser.add_argument("--table", help=f"GTZAN 30-second feature table (default: the bundled {TABLE_NAME})")
    parser.add_argument("--splits", help="folder holding splits/gtzan_fault_filtered_*.txt (default: the bundled one)")
    parser.add_argument("--random-folds", type=int, default=0, help="also score by random K-fold CV (0: no)")
    parser.add_argument(
        "--alias", action="append", default=None, help="aliases to move to the new version (default: genre-latest)"
    )
    args = parser.parse_args(argv)
    setup_logging()
    init_ray()
    with user_errors():
        return train_genre(
            args.store, json.loads(args.params), args.alias or ["genre-latest"], table_path=args.table,
            splits_folder=args.splits, random_fold_count=args.random_folds,
        )  # fmt: skip


if __name__ == "__main__":
    main()
