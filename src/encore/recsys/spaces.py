"""The search space of each recommender: what ``encore.recsys.search`` samples and ``tuning.<kind>`` searches.

A space is an optuna define-by-run function of a trial, or a dict of Tune domains (a grid) searched as
it is. ``SPACES`` maps each searchable kind to its own; ``scheduler`` gives the early stopping a kind's
search uses, if any.
"""

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler

#: ALS sweeps of every trial; a trial reports after each, so ASHA can stop it early.
ALS_ITERATIONS = 15


def als_classic_space(trial: optuna.Trial) -> dict:
    """Hu et al.'s ALS, one penalty for every factor vector: the space ``implicit`` can be searched over too."""
    return {
        "factors": trial.suggest_categorical("factors", [32, 64, 128]),
        "regularization": trial.suggest_float("regularization", 1e-2, 1e2, log=True),
        "alpha": trial.suggest_float("alpha", 0.1, 50.0, log=True),
        "log_scaling": trial.suggest_categorical("log_scaling", [True, False]),
        "iterations": ALS_ITERATIONS,
    }


def als_space(trial: optuna.Trial) -> dict:
    """The classic space and how the penalty grows with each user's and item's plays."""
    return {**als_classic_space(trial), "frequency_scaling": trial.suggest_float("frequency_scaling", 0.0, 2.0)}


def ease_space(trial: optuna.Trial) -> dict:
    return {"regularization": trial.suggest_float("regularization", 10.0, 1e4, log=True)}


def weighting_space(trial: optuna.Trial) -> dict:
    """How much content adds: for an item nobody played, for a much-played one, and where between."""
    return {
        "balance": trial.suggest_float("balance", 0.5, 100.0, log=True),
        "cold_weight": trial.suggest_float("cold_weight", 0.0, 3.0),
        "warm_weight": trial.suggest_float("warm_weight", 0.0, 1.0),
    }


def hybrid_space(trial: optuna.Trial) -> dict:
    return {
        "collaborative": trial.suggest_categorical("collaborative", ["item_knn", "ease", "als"]),
        **weighting_space(trial),
        "features": "tags",
    }


def knn_space(trial: optuna.Trial) -> dict:
    """Item-based and user-based kNN alike: similarity, neighbours kept, shrinkage."""
    similarity = trial.suggest_categorical("similarity", ["cosine", "pearson", "euclidean"])
    return {
        "similarity": similarity,
        "neighbours": trial.suggest_categorical("neighbours", [25, 50, 100, 200, 400]),
        "shrinkage": trial.suggest_float("shrinkage", 0.0, 100.0),
        # Pearson centres the weights, which binary weights would reduce to zeros.
        "binarize": similarity != "pearson",
        "log_scaling": similarity == "pearson",
    }


def rp3beta_space(trial: optuna.Trial) -> dict:
    return {
        "alpha": trial.suggest_float("alpha", 0.3, 1.2),
        "beta": trial.suggest_float("beta", 0.0, 0.8),
        "neighbours": trial.suggest_categorical("neighbours", [50, 100, 200, 400]),
    }


SPACES = {
    "als": als_space,
    "ease": ease_space,
    "hybrid": hybrid_space,
    "item_knn": knn_space,
    "user_knn": knn_space,
    "popularity": {"by": tune.grid_search(["users", "weight"])},
    "rp3beta": rp3beta_space,
}


def scheduler(kind: str) -> ASHAScheduler | None:
    """ASHA over sweeps for ALS, whose trials report after each; the others report once."""
    if kind != "als":
        return None
    return ASHAScheduler(time_attr="training_iteration", max_t=ALS_ITERATIONS, grace_period=3, reduction_factor=3)
