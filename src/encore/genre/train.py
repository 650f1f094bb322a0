"""Training the genre classifier on the GTZAN 30-second table: fit, evaluate, save in the model store.

The model is fitted on the train part of the fault-filtered, artist-disjoint split and scored on
validation (the figure searches select on), then refitted on train + validation and scored on test
(the headline figure); optionally it is also scored by random K-fold CV over the whole table, stored
apart and labelled as such. The refitted model is saved as kind ``genre`` with all of these metrics.
``jobs.train_genre`` is the command line.
"""

import logging
from pathlib import Path

import pandas as pd
import ray

from encore.core import fs
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
from encore.genre.search import SELECTION_METRIC, SELECTION_MODE, fit_and_evaluate, random_folds, search
from encore.serving.versions import serving_store
from encore.store.publish import save_trained

logger = logging.getLogger(__name__)

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


def train_genre(
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
    return save_trained(
        serving_store(store_uri),
        model,
        aliases,
        kind=KIND,
        config={"params": params, "table": table_path, "split": SPLIT, "tuning": tuning},
        metrics=metrics,
        data_fingerprint=data_fingerprint(table_path, *split_files),
        preprocessing=preprocessing(),
    )


def search_and_train(
    store_uri: str, alias: str, *, results_uri: str | None = None, num_samples: int, seed: int = 0, fixed: dict
) -> dict:
    """Search the classifier's space on validation (``encore.genre.search``; ``seed`` seeds the sampler and
    the models, ``fixed`` settings are not searched), then train the best and store it as ``genre-latest``
    and ``alias``, with the search recorded."""
    parts = split_table(load_table(), load_splits())
    results = search(
        "encore",
        parts,
        results_uri or fs.join(fs.absolute(store_uri), "tune"),
        num_samples=num_samples,
        seed=seed,
        fixed={"seed": seed, **fixed},
    )
    best = results.get_best_result()
    tuning = {
        "trials": len(results),
        "metric": f"validation {SELECTION_METRIC} ({SELECTION_MODE})",
        "best_validation": {name: best.metrics[name] for name in ("log_loss", "accuracy", "macro_f1")},
        "seed": seed,
        "results": results.experiment_path,
    }
    version = train_genre(store_uri, best.config, ["genre-latest", alias], tuning=tuning)
    return {"best_config": best.config, "version": version, "results": results.experiment_path}
