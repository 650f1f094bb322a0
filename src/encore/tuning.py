"""Hyperparameter search for recommenders with Ray Tune, selecting on the validation split only.

Each trial fits the model on the train split and reports the validation metrics; test never takes
part in the choice. The search's results are kept under ``storage_path`` (Tune's own layout) and
the best configuration is trained, evaluated and saved in the model store by ``jobs.train``.
"""

import inspect
import logging
import time
from collections.abc import Callable

import optuna
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from encore import fs
from encore.interactions import InteractionDataset
from encore.metrics import evaluate
from encore.models import fit_model, model_class

logger = logging.getLogger(__name__)

SELECTION_METRIC = "ndcg@10"


def _trial(config: dict, kind: str, dataset: InteractionDataset) -> None:
    started = time.perf_counter()
    train, validation = dataset.matrix("train"), dataset.matrix("validation")
    if "callback" in inspect.signature(model_class(kind).fit).parameters:
        # An iterative model reports after every sweep, so a scheduler such as ASHA can stop it early.
        def report(iteration: int, model) -> None:
            fit_seconds = time.perf_counter() - started
            tune.report({**evaluate(model, train, validation), "iterations": iteration + 1, "fit_seconds": fit_seconds})

        model_class(kind)(**config).fit(train, callback=report)
        return
    model = fit_model(kind, config, train, dataset.items)
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
    cpus_per_trial: float = 1,
    metric: str = SELECTION_METRIC,
) -> tune.ResultGrid:
    """Run the search and return Tune's results.

    ``param_space`` is either a function of an optuna trial that suggests the hyperparameters and
    returns the whole configuration (searched with optuna's TPE sampler, which learns from the trials
    so far where the good region lies), or a dict of Tune domains for a small finite space (a grid).
    """
    dataset = InteractionDataset.load(dataset_uri)
    if callable(param_space):
        sampler = optuna.samplers.TPESampler(seed=seed)
        search_alg = OptunaSearch(space=param_space, metric=metric, mode="max", sampler=sampler)
        param_space = {}
    else:
        search_alg = BasicVariantGenerator(random_state=seed)
    trainable = tune.with_resources(tune.with_parameters(_trial, kind=kind, dataset=dataset), {"cpu": cpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode="max",
            num_samples=num_samples,
            scheduler=scheduler,
            search_alg=search_alg,
        ),
        run_config=tune.RunConfig(
            name=f"{kind}-{time.strftime('%Y%m%dT%H%M%S')}", storage_path=fs.absolute(storage_uri)
        ),
    )
    results = tuner.fit()
    errors = [result.error for result in results if result.error]
    if len(errors) == len(results):
        raise RuntimeError(f"every {kind} trial failed; first error: {errors[0]}")
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
