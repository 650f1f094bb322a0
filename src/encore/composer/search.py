"""Hyperparameter search for the composer with Ray Tune, selecting on the validation NLL only.

Each trial trains a model in-process (one Ray task with ``cpus_per_trial`` CPUs) on the train split
and reports the validation NLL per time step after every epoch, so ASHA stops the poor ones early;
test never takes part in the choice. As in the recommender searches (``encore.recsys.search``), optuna's
TPE proposes the configurations of :func:`param_space`: the learning rate, the width (``d_model``,
with a feed-forward layer four times as wide), the depth and the dropout; every other setting comes
from the base configurations. A dict of Tune domains (a small grid) is searched as it is.
"""

import logging
from collections.abc import Callable
from dataclasses import asdict, replace

import optuna
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from encore.composer.data import Corpus, load_corpus
from encore.composer.model import Composer, ComposerConfig
from encore.composer.ray_train import train_composer
from encore.composer.train import TrainConfig, fit
from encore.core import fs
from encore.core.search import run_search

logger = logging.getLogger(__name__)

SELECTION_METRIC = "valid_nll_per_step"


def param_space(trial: optuna.Trial) -> dict:
    return {
        "lr": trial.suggest_float("lr", 2e-4, 5e-3, log=True),
        "d_model": trial.suggest_categorical("d_model", [64, 128, 256]),
        "n_layer": trial.suggest_categorical("n_layer", [2, 3, 4, 6]),
        "dropout": trial.suggest_float("dropout", 0.0, 0.4),
    }


def configs(sampled: dict, base_model: ComposerConfig, base_train: TrainConfig) -> tuple[ComposerConfig, TrainConfig]:
    """The model and training configurations of one point of :func:`param_space`."""
    model = {key: sampled[key] for key in ("d_model", "n_layer", "dropout") if key in sampled}
    if "d_model" in model:
        model["d_ff"] = 4 * model["d_model"]
    train = {"lr": sampled["lr"]} if "lr" in sampled else {}
    return replace(base_model, **model), replace(base_train, **train)


def _trial(sampled: dict, corpus: Corpus, base_model: ComposerConfig, base_train: TrainConfig, threads: int) -> None:
    torch.set_num_threads(threads)
    model_config, train_config = configs(sampled, base_model, base_train)
    torch.manual_seed(train_config.seed)
    conditions = corpus.conditions or {}
    fit(
        Composer(model_config),
        corpus.steps["train"],
        corpus.steps["valid"],
        train_config,
        report=lambda epoch, metrics, state: tune.report(metrics),
        train_conditions=conditions.get("train"),
        valid_conditions=conditions.get("valid"),
    )


def search(
    corpus: Corpus,
    base_model: ComposerConfig,
    base_train: TrainConfig,
    storage_uri: str,
    *,
    param_space: dict | Callable[[optuna.Trial], dict] = param_space,
    num_samples: int = 8,
    grace_epochs: int = 1,
    seed: int | None = None,
    cpus_per_trial: int = 1,
) -> tune.ResultGrid:
    """Run the search with ASHA over epochs and return Tune's results (best: lowest validation NLL)."""
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial, corpus=corpus, base_model=base_model, base_train=base_train, threads=cpus_per_trial
        ),
        {"cpu": cpus_per_trial},
    )
    scheduler = ASHAScheduler(
        time_attr="training_iteration", max_t=base_train.epochs, grace_period=grace_epochs, reduction_factor=3
    )
    results = run_search(
        trainable, param_space, name="composer", metric=SELECTION_METRIC, mode="min", num_samples=num_samples,
        storage_uri=storage_uri, seed=seed, scheduler=scheduler,
    )  # fmt: skip
    best = results.get_best_result()
    logger.info(
        "best composer of %d trials: %s with validation NLL %.4f per step (base %s; results in %s)",
        len(results),
        best.config,
        best.metrics[SELECTION_METRIC],
        asdict(base_model),
        results.experiment_path,
    )
    return results


def search_and_train(
    data: str, store_uri: str, base_model: ComposerConfig, base_train: TrainConfig, alias: str, *,
    results_uri: str | None = None, storage: str | None = None, **search_options,
) -> dict:  # fmt: skip
    """Search on ``data``'s validation split, then train the best on Ray Train and store it as
    ``composer-latest`` and ``alias``, with the search recorded; ``search_options`` as :func:`search`
    takes them."""
    store_uri = fs.absolute(store_uri)
    corpus = load_corpus(data, base_model.max_steps, base_model.max_notes)
    results = search(corpus, base_model, base_train, results_uri or fs.join(store_uri, "tune"), **search_options)
    best = results.get_best_result()
    model_config, train_config = configs(best.config, base_model, base_train)
    version = train_composer(
        data,
        store_uri,
        model_config,
        train_config,
        storage=storage,
        aliases=("composer-latest", alias),
        tuning={
            "trials": len(results),
            "metric": SELECTION_METRIC,
            "best_config": best.config,
            "best_validation": best.metrics[SELECTION_METRIC],
            "results": results.experiment_path,
        },
    )
    return {"best_config": best.config, "version": version, "results": results.experiment_path}
