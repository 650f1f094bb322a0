"""Train the genre classifier on the GTZAN 30-second table, evaluate it and save it in the model store.

The model is fitted on the train part of the fault-filtered, artist-disjoint split and scored on
validation (the figure searches select on), then refitted on train + validation and scored on test
(the headline figure); with ``--random-folds K`` it is also scored by random K-fold CV over the whole
table, stored apart and labelled as such. The refitted model is saved as kind ``genre`` with all of
these metrics, and the aliases given (default ``genre-latest``) move to it.

    python -m jobs.train_genre --store artifacts --alias genre-latest --alias genre-production
"""

import argparse
import json
import logging
import tempfile
from pathlib import Path

import pandas as pd
import ray

from encore.core import fs
from encore.core.runtime import init_ray, setup_logging, user_errors
from encore.genre.classifier import GenreClassifier
from encore.genre.data import (
    SPLIT_FILE,
    SPLITS,
    TABLE_NAME,
    data_dir,
    data_fingerprint,
    load_splits,
    load_table,
    preprocessing,
    split_table,
)
from encore.genre.search import fit_and_evaluate, random_folds
from encore.serving.versions import serving_store

logger = logging.getLogger("encore.train_genre")

KIND = "genre"
SPLIT = "GTZAN fault-filtered, artist-disjoint (Kereliuk, Sturm and Larsen 2015)"


def _fit(params: dict, table: pd.DataFrame, parts: dict, folds: int) -> tuple[GenreClassifier, dict]:
    model, metrics = fit_and_evaluate("encore", params, parts)
    if folds:
        metrics["random_folds"] = random_folds("encore", params, table, folds)
    return model, metrics


def _summary(metrics: dict) -> str:
    return (
        f"accuracy {metrics['accuracy']:.3f} [{metrics['accuracy_ci'][0]:.3f}, {metrics['accuracy_ci'][1]:.3f}], "
        f"macro-F1 {metrics['macro_f1']:.3f} [{metrics['macro_f1_ci'][0]:.3f}, {metrics['macro_f1_ci'][1]:.3f}]"
    )


def train(
    store_uri: str,
    params: dict,
    aliases: list[str],
    *,
    table_path: str | None = None,
    splits_folder: str | None = None,
    random_fold_count: int = 0,
    tuning: dict | None = None,
) -> str:
    """Fit and evaluate in a Ray task, save to the store; returns the version. The table and split
    files are local paths (default: the bundled ones). ``tuning`` records the search that chose
    ``params``, if one did. Raises ValueError naming the file for a malformed table or split."""
    store_uri = fs.absolute(store_uri)
    table_path = str(Path(table_path or data_dir() / TABLE_NAME).resolve())
    splits_folder = str(Path(splits_folder or data_dir()).resolve())
    params = {**GenreClassifier().get_params(), **params}
    table = load_table(table_path)
    parts = split_table(table, load_splits(splits_folder))
    logger.info("training the genre classifier %s on %s", params, table_path)
    model, metrics = ray.get(ray.remote(_fit).remote(params, table, parts, random_fold_count))
    logger.info("validation (fitted on train): %s", _summary(metrics["validation"]))
    logger.info("test (refitted on train + validation): %s", _summary(metrics["test"]))
    if "random_folds" in metrics:
        logger.info(
            "random %d-fold CV (artists shared across folds): %s", random_fold_count, _summary(metrics["random_folds"])
        )
    split_files = [f"{splits_folder}/{SPLIT_FILE.format(part)}" for part in SPLITS]
    with tempfile.TemporaryDirectory() as folder:
        model.save(folder)
        manifest = serving_store(store_uri).save(
            folder,
            kind=KIND,
            config={"params": params, "table": table_path, "split": SPLIT, "tuning": tuning},
            metrics=metrics,
            data_fingerprint=data_fingerprint(table_path, *split_files),
            preprocessing=preprocessing(),
            aliases=aliases,
        )
    logger.info("saved %s to %s (aliases: %s)", manifest.version, store_uri, ", ".join(aliases))
    return manifest.version


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="./artifacts", help="model store folder or s3:// prefix")
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
        try:
            return train(
                args.store,
                json.loads(args.params),
                args.alias or ["genre-latest"],
                table_path=args.table,
                splits_folder=args.splits,
                random_fold_count=args.random_folds,
            )
        except ValueError as error:  # a malformed table or split file, named in the message
            raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
