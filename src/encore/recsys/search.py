"""Hyperparameter search for recommenders with Ray Tune, selecting on the validation split only.

Each trial fits the model on the train split and reports the validation metrics; test never takes
part in the choice. The search's results are kept under ``storage_path`` (Tune's own layout) and
the best configuration is trained, evaluated and saved in the model store by ``jobs.train``.
"""

import logging
import time
from collections.abc import Callable

import optuna
from ray import tune

from encore.core.search import run_search
from encore.recsys.interactions import InteractionDataset
from encore.recsys.metrics import evaluate
from encore.recsys.models import model_class

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
