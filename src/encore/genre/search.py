"""Genre models under one protocol: searched with Ray Tune on the validation split, then tested.

``MODELS`` holds Encore's classifier and the scikit-learn baselines it is measured against
(logistic regression, RBF SVM, random forest, gradient boosting on standardised features, the usual
recipe), each with its search space. Every model is searched the same way: trials fit on the train
part of the artist-disjoint split and report validation metrics; the configuration with the lowest
validation log-loss wins (log-loss rather than accuracy: on 197 validation tracks accuracy moves in
steps of half a point and ties often). ``fit_and_evaluate`` then scores the winner on validation,
refits it on train + validation and scores that on test; ``random_folds`` gives the random k-fold
figures reported beside it, labelled as such.
"""

import logging
import time
from collections.abc import Callable

import numpy as np
import optuna
import pandas as pd
from ray import tune
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, log_loss
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from encore.audio.vectors import feature_matrix
from encore.core.search import run_search
from encore.genre.classifier import GenreClassifier, evaluate

logger = logging.getLogger(__name__)

SELECTION_METRIC, SELECTION_MODE = "log_loss", "min"


class SklearnGenreModel:
    """A scikit-learn classifier behind the genre models' interface (tables in, ``classes_`` order out)."""

    def __init__(self, estimator):
        self.estimator = estimator

    def fit(self, features: pd.DataFrame, labels) -> "SklearnGenreModel":
        self.estimator.fit(feature_matrix(features, "training features"), np.asarray(labels, dtype=str))
        self.classes_ = self.estimator.classes_
        return self

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        return self.estimator.predict_proba(feature_matrix(features, "features"))


def _logistic_regression(C: float, seed: int = 0) -> SklearnGenreModel:
    return SklearnGenreModel(make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000)))


def _rbf_svm(C: float, gamma: float, seed: int = 0) -> SklearnGenreModel:
    # Probabilities by Platt scaling on internal folds, the replacement scikit-learn names for SVC(probability=True).
    svm = CalibratedClassifierCV(SVC(C=C, gamma=gamma, random_state=seed), ensemble=False)
    return SklearnGenreModel(make_pipeline(StandardScaler(), svm))


def _random_forest(n_estimators: int, max_depth: int | None, min_samples_leaf: int, max_features, seed: int = 0):
    forest = RandomForestClassifier(
        n_estimators=n_estimators,
        max_depth=max_depth,
        min_samples_leaf=min_samples_leaf,
        max_features=max_features,
        random_state=seed,
        n_jobs=1,
    )
    return SklearnGenreModel(make_pipeline(StandardScaler(), forest))


def _gradient_boosting(
    learning_rate: float, max_iter: int, max_leaf_nodes: int, l2_regularization: float, seed: int = 0
) -> SklearnGenreModel:
    boosting = HistGradientBoostingClassifier(
        learning_rate=learning_rate,
        max_iter=max_iter,
        max_leaf_nodes=max_leaf_nodes,
        l2_regularization=l2_regularization,
        early_stopping=False,
        random_state=seed,
    )
    return SklearnGenreModel(make_pipeline(StandardScaler(), boosting))


def _encore_space(trial: optuna.Trial) -> dict:
    return {
        "hidden": trial.suggest_categorical("hidden", [0, 32, 64, 128, 256]),
        "dropout": trial.suggest_float("dropout", 0.1, 0.7),
        "input_dropout": trial.suggest_float("input_dropout", 0.0, 0.3),
        "weight_decay": trial.suggest_float("weight_decay", 1e-3, 1e-1, log=True),
        "mixup": trial.suggest_categorical("mixup", [0.0, 0.2, 0.4, 1.0]),
        "epochs": trial.suggest_categorical("epochs", [40, 60, 100]),
        "learning_rate": trial.suggest_float("learning_rate", 1e-3, 1e-2, log=True),
    }


def _logistic_regression_space(trial: optuna.Trial) -> dict:
    return {"C": trial.suggest_float("C", 1e-3, 1e2, log=True)}


def _rbf_svm_space(trial: optuna.Trial) -> dict:
    return {
        "C": trial.suggest_float("C", 1e-1, 1e3, log=True),
        "gamma": trial.suggest_float("gamma", 1e-4, 1e-1, log=True),
    }


def _random_forest_space(trial: optuna.Trial) -> dict:
    return {
        "n_estimators": trial.suggest_categorical("n_estimators", [200, 500]),
        "max_depth": trial.suggest_categorical("max_depth", [None, 8, 16]),
        "min_samples_leaf": trial.suggest_categorical("min_samples_leaf", [1, 2, 4]),
        "max_features": trial.suggest_categorical("max_features", ["sqrt", 0.3]),
    }


def _gradient_boosting_space(trial: optuna.Trial) -> dict:
    return {
        "learning_rate": trial.suggest_float("learning_rate", 1e-2, 3e-1, log=True),
        "max_iter": trial.suggest_categorical("max_iter", [100, 200, 400]),
        "max_leaf_nodes": trial.suggest_categorical("max_leaf_nodes", [7, 15, 31]),
        "l2_regularization": trial.suggest_float("l2_regularization", 1e-3, 10.0, log=True),
    }


# name -> (factory taking the configuration as keyword arguments, search space as an optuna define-by-run function)
MODELS: dict[str, tuple[Callable, Callable[[optuna.Trial], dict]]] = {
    "encore": (GenreClassifier, _encore_space),
    "logistic_regression": (_logistic_regression, _logistic_regression_space),
    "rbf_svm": (_rbf_svm, _rbf_svm_space),
    "random_forest": (_random_forest, _random_forest_space),
    "gradient_boosting": (_gradient_boosting, _gradient_boosting_space),
}


def make_model(name: str, config: dict):
    if name not in MODELS:
        raise ValueError(f"unknown genre model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name][0](**config)


def _quick_metrics(labels, probabilities: np.ndarray, classes) -> dict:
    predicted = np.asarray(classes)[probabilities.argmax(axis=1)]
    return {
        "log_loss": float(log_loss(labels, probabilities, labels=classes)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
    }


def _trial(config: dict, name: str, parts: dict[str, pd.DataFrame]) -> None:
    started = time.perf_counter()
    model = make_model(name, config).fit(parts["train"], parts["train"]["label"])
    metrics = _quick_metrics(parts["valid"]["label"], model.predict_proba(parts["valid"]), model.classes_)
    tune.report({**metrics, "fit_seconds": time.perf_counter() - started})


def search(
    name: str,
    parts: dict[str, pd.DataFrame],
    storage_uri: str,
    *,
    num_samples: int,
    seed: int = 0,
    fixed: dict | None = None,
) -> tune.ResultGrid:
    """Search ``name``'s space (plus ``fixed`` settings) with ``num_samples`` trials of optuna's seeded TPE
    sampler, on validation."""
    trainable = tune.with_resources(tune.with_parameters(_trial, name=name, parts=parts), {"cpu": 1})
    results = run_search(
        trainable, MODELS[name][1], name=f"genre-{name}", metric=SELECTION_METRIC, mode=SELECTION_MODE,
        num_samples=num_samples, storage_uri=storage_uri, seed=seed, fixed=fixed, verbose=0,
    )  # fmt: skip
    best = results.get_best_result()
    logger.info(
        "best %s of %d trials: %s with validation log-loss %.4f, accuracy %.3f",
        name,
        len(results),
        best.config,
        best.metrics["log_loss"],
        best.metrics["accuracy"],
    )
    return results


def fit_and_evaluate(name: str, config: dict, parts: dict[str, pd.DataFrame]) -> tuple[object, dict]:
    """The model refitted on train + validation with its metrics: validation (fitted on train) and test."""
    started = time.perf_counter()
    selection = make_model(name, config).fit(parts["train"], parts["train"]["label"])
    validation = evaluate(parts["valid"]["label"], selection.predict_proba(parts["valid"]), selection.classes_)
    train_valid = pd.concat([parts["train"], parts["valid"]], ignore_index=True)
    final = make_model(name, config).fit(train_valid, train_valid["label"])
    test = evaluate(parts["test"]["label"], final.predict_proba(parts["test"]), final.classes_)
    return final, {"validation": validation, "test": test, "fit_and_evaluate_seconds": time.perf_counter() - started}


def random_folds(name: str, config: dict, table: pd.DataFrame, folds: int = 10, seed: int = 0) -> dict:
    """Stratified random k-fold CV over the whole table, artists and duplicates ignored, as most papers do.

    The metrics of the pooled out-of-fold predictions (bootstrap intervals over the table's tracks),
    plus ``fold_accuracy``, the accuracy of each fold.
    """
    labels = table["label"].to_numpy(dtype=str)
    classes = np.unique(labels)
    probabilities = np.zeros((len(table), len(classes)))
    fold_accuracy = []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(table, labels):
        model = make_model(name, config).fit(table.iloc[train], labels[train])
        probabilities[test] = model.predict_proba(table.iloc[test])
        fold_accuracy.append(float(np.mean(classes[probabilities[test].argmax(axis=1)] == labels[test])))
    return {**evaluate(labels, probabilities, classes, seed=seed), "folds": folds, "fold_accuracy": fold_accuracy}
