"""Hyperparameter search for recommenders with Ray Tune, selecting on the validation split only.

Each trial fits the model on the train split and reports the validation metrics; test never takes
part in the choice. The search's results are kept under ``storage_path`` (Tune's own layout) and
the best configuration is trained, evaluated and saved in the model store by ``encore.recsys.train``.
``main`` is the command line of every ``tuning.<kind>``.
"""

import argparse
import logging
import time
from collections.abc import Callable

import optuna
from ray import tune

from encore.core import fs
from encore.core.cli import user_errors
from encore.core.runtime import init_ray, setup_logging
from encore.core.search import add_search_arguments, run_search
from encore.recsys.interactions import InteractionDataset
from encore.recsys.metrics import evaluate
from encore.recsys.models import model_class
from encore.recsys.spaces import SPACES, scheduler
from encore.recsys.train import train
from encore.store import DEFAULT_STORE_URI

logger = logging.getLogger(__name__)

SELECTION_METRIC = "ndcg@10"


def _trial(config: dict, kind: str, dataset: InteractionDataset) -> None:
    started = time.perf_counter()
    train, validation = dataset.matrix("train"), dataset.matrix("validation")
    sweeps = 0

    # An iterative model reports after every sweep, so a scheduler such as ASHA can stop it early.
    def report(iteration: int, model) -> None:
        nonlocal sweeps
        sweeps = iteration + 1
        fit_seconds = time.perf_counter() - started
        tune.report({**evaluate(model, train, validation), "iterations": sweeps, "fit_seconds": fit_seconds})

    model = model_class(kind)(**config).fit(train, dataset.items, report)
    if not sweeps:  # a closed-form fit, with no sweep to report after
        fit_seconds = time.perf_counter() - started
        tune.report({**evaluate(model, train, validation), "fit_seconds": fit_seconds})


def search(
    kind: str,
    param_space: dict | Callable[[optuna.Trial], dict],
    dataset_uri: str,
    storage_uri: str,
    *,
    num_samples: int = 1,
    scheduler=None,
    seed: int | None = None,
    fixed: dict | None = None,
    cpus_per_trial: float = 1,
    metric: str = SELECTION_METRIC,
) -> tune.ResultGrid:
    """Run the search and return Tune's results; ``param_space`` as ``encore.core.search.run_search`` takes it."""
    dataset = InteractionDataset.load(dataset_uri)
    trainable = tune.with_resources(tune.with_parameters(_trial, kind=kind, dataset=dataset), {"cpu": cpus_per_trial})
    results = run_search(
        trainable, param_space, name=kind, metric=metric, mode="max", num_samples=num_samples,
        storage_uri=storage_uri, seed=seed, fixed=fixed, scheduler=scheduler,
    )  # fmt: skip
    best = results.get_best_result()
    logger.info(
        "best %s of %d trials: %s with validation %s %.4f (results in %s)",
        kind,
        len(results),
        best.config,
        metric,
        best.metrics[metric],
        results.experiment_path,
    )
    return results


def search_and_train(
    kind: str, dataset_uri: str, store_uri: str, alias: str, *, results_uri: str | None = None, **search_options
) -> dict:
    """Search ``kind``'s space (``encore.recsys.spaces``), then train the best configuration and store it
    as ``latest`` and ``alias``, with the search recorded; ``search_options`` as :func:`search` takes them."""
    results = search(
        kind,
        SPACES[kind],
        fs.absolute(dataset_uri),
        results_uri or fs.join(fs.absolute(store_uri), "tune"),
        scheduler=scheduler(kind),
        **search_options,
    )
    best = results.get_best_result()
    tuning = {
        "trials": len(results),
        "metric": SELECTION_METRIC,
        "best_validation": best.metrics[SELECTION_METRIC],
        "results": results.experiment_path,
    }
    version = train(dataset_uri, kind, best.config, store_uri, ["latest", alias], tuning=tuning)
    return {"best_config": best.config, "version": version, "results": results.experiment_path}


def main(kind: str, argv: list[str] | None = None) -> dict:
    """The command line of ``tuning.<kind>``: search on validation, then train and store the best."""
    parser = argparse.ArgumentParser(description=f"Ray Tune search for the {kind} recommender (selects on validation).")
    parser.add_argument("--dataset", required=True, help="ingested dataset folder or s3:// prefix")
    add_search_arguments(
        parser, store=DEFAULT_STORE_URI, alias=f"tuned-{kind}", num_samples=1, fixed_example='{"collaborative": "ease"}'
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the search")
    args = parser.parse_args(argv)
    setup_logging()
    init_ray()
    with user_errors():
        return search_and_train(
            kind, args.dataset, args.store, args.alias, results_uri=args.results,
            num_samples=args.num_samples, seed=args.seed, fixed=args.fixed,
        )  # fmt: skip
