"""Search ALS: factors, regularization over four orders of magnitude, confidence scale, log scaling,
and how the penalty grows with each user's and item's plays (``frequency_scaling``).

TPE proposes the configurations; trials report validation NDCG@10 after every ALS sweep and ASHA
stops the poor ones early.

    python -m tuning.als --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts --num-samples 16
"""

from ray.tune.schedulers import ASHAScheduler

from tuning.common import main

ITERATIONS = 15


def classic_space(trial) -> dict:
    """Hu et al.'s ALS, one penalty for every factor vector: the space ``implicit`` can be searched over too."""
    return {
        "factors": trial.suggest_categorical("factors", [32, 64, 128]),
        "regularization": trial.suggest_float("regularization", 1e-2, 1e2, log=True),
        "alpha": trial.suggest_float("alpha", 0.1, 50.0, log=True),
        "log_scaling": trial.suggest_categorical("log_scaling", [True, False]),
        "iterations": ITERATIONS,
    }


def param_space(trial) -> dict:
    return {**classic_space(trial), "frequency_scaling": trial.suggest_float("frequency_scaling", 0.0, 2.0)}


def scheduler() -> ASHAScheduler:
    return ASHAScheduler(time_attr="training_iteration", max_t=ITERATIONS, grace_period=3, reduction_factor=3)


if __name__ == "__main__":
    main("als", param_space, scheduler=scheduler())
