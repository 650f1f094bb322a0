"""How every Encore search runs on Ray Tune: the searcher, the run, and the check that something ran.

The recommender, genre and composer searches differ in their trials and spaces only; this is the
part they share.
"""

import argparse
import functools
import json
import time
from collections.abc import Callable

import optuna
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from encore.core import fs


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
    fixed: dict | None = None,
    scheduler=None,
    verbose: int | None = None,
) -> tune.ResultGrid:
    """Run ``trainable`` over ``param_space`` and return Tune's results.

    ``param_space`` is either a function of an optuna trial that suggests the hyperparameters and
    returns the whole configuration (searched with optuna's seeded TPE sampler, which learns from the
    trials so far where the good region lies), or a dict of Tune domains for a small finite space (a
    grid, or seeded random samples). ``fixed`` settings override the space's: a function space does
    not suggest them, so TPE models only the dimensions that vary. Raises RuntimeError when every
    trial failed.
    """
    fixed = fixed or {}
    if callable(param_space):
        sampler = optuna.samplers.TPESampler(seed=seed)
        # A partial, not a lambda: OptunaSearch pickles its space when Tune saves the searcher's state.
        space = functools.partial(_with_fixed, param_space, fixed)
        search_alg = OptunaSearch(space=space, metric=metric, mode=mode, sampler=sampler)
        param_space = {}
    else:
        search_alg = BasicVariantGenerator(random_state=seed)
        param_space = {**param_space, **fixed}
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


def add_search_arguments(
    parser: argparse.ArgumentParser, *, store: str, alias: str, num_samples: int, fixed_example: str | None = None
) -> None:
    """The options of every search command: where the best is stored and under which alias, where Tune's
    results go, and how many trials to run; with ``fixed_example``, ``--fixed`` settings too. ``store`` is
    the default store (``encore.store.DEFAULT_STORE_URI``), given by the caller: ``core`` knows no store."""
    parser.add_argument("--store", default=store, help="model store for the best configuration")
    parser.add_argument("--results", default=None, help="where Tune keeps its results (default: STORE/tune)")
    parser.add_argument("--num-samples", type=int, default=num_samples, help="trials (for a grid: repeats of it)")
    parser.add_argument("--alias", default=alias, help="alias for the stored best model")
    if fixed_example is not None:
        fixed_help = f"settings every trial keeps, as JSON, e.g. {fixed_example!r} (not searched)"
        parser.add_argument("--fixed", type=fixed_settings, default={}, help=fixed_help)


def fixed_settings(text: str) -> dict:
    """The ``--fixed`` option of every search command: a JSON object of settings every trial keeps."""
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(settings, dict):
        raise argparse.ArgumentTypeError(f"a JSON object of settings, not {text!r}")
    return settings


def _with_fixed(space: Callable[[optuna.Trial], dict], fixed: dict, trial: optuna.Trial) -> dict:
    return {**space(_HoldingTrial(trial, fixed)), **fixed}


class _HoldingTrial:
    """An optuna trial whose ``suggest_*`` answer the held value of a fixed parameter without
    suggesting it, so it is not a dimension of the search."""

    def __init__(self, trial: optuna.Trial, fixed: dict):
        self._trial, self._fixed = trial, fixed

    def __getattr__(self, attribute: str):
        value = getattr(self._trial, attribute)
        if not attribute.startswith("suggest_"):
            return value

        def suggest(name: str, *args, **kwargs):
            return self._fixed[name] if name in self._fixed else value(name, *args, **kwargs)

        return suggest
