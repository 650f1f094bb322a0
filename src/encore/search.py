"""How every Encore search runs on Ray Tune: the searcher, the run, and the check that something ran.

The recommender, genre and composer searches differ in their trials and spaces only; this is the
part they share.
"""

import time
from collections.abc import Callable

import optuna
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from encore import fs


def run_search(
    trainable,
    param_space: dict | Callable[[optuna.Trial], dict],
    *,
    name: str,
    metric: str,
    mode: str,
    num_samples: int,
    storage_uri: str,
    seed: int | None = None,
    scheduler=None,
    verbose: int | None = None,
) -> tune.ResultGrid:
    """Run ``trainable`` over ``param_space`` and return Tune's results.

    ``param_space`` is either a function of an optuna trial that suggests the hyperparameters and
    returns the whole configuration (searched with optuna's seeded TPE sampler, which learns from the
    trials so far where the good region lies), or a dict of Tune domains for a small finite space (a
    grid, or seeded random samples). Raises RuntimeError when every trial failed.
    """
    if callable(param_space):
        sampler = optuna.samplers.TPESampler(seed=seed)
        search_alg = OptunaSearch(space=param_space, metric=metric, mode=mode, sampler=sampler)
        param_space = {}
    else:
        search_alg = BasicVariantGenerator(random_state=seed)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, num_samples=num_samples, scheduler=scheduler, search_alg=search_alg
        ),
        run_config=tune.RunConfig(
            name=f"{name}-{time.strftime('%Y%m%dT%H%M%S')}", storage_path=fs.absolute(storage_uri), verbose=verbose
        ),
    )
    results = tuner.fit()
    errors = [result.error for result in results if result.error]
    if len(errors) == len(results):
        raise RuntimeError(f"every {name} trial failed; first error: {errors[0]}")
    return results
