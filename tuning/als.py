"""Search ALS: factors, regularization over four orders of magnitude, confidence scale, log scaling.

TPE proposes the configurations; trials report validation NDCG@10 after every ALS sweep and ASHA
stops the poor ones early.

    python -m tuning.als --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts --num-samples 16
"""

from ray.tune.schedulers import ASHAScheduler

from tuning.common import main

ITERATIONS = 15


def param_space(trial) -> dict:
    return {
        "factors": trial.suggest_categorical("factors", [32, 64, 128]),
        "regularization": trial.suggest_float("regularization", 1e-2, 1e2, log=True),
        "alpha": trial.suggest_float("alpha", 0.1, 50.0, log=True),
        "log_scaling": trial.suggest_categorical("log_scaling", [True, False]),
        "iterations": ITERATIONS,
    }


def scheduler() -> ASHAScheduler:
    return ASHAScheduler(time_attr="training_iteration", max_t=ITERATIONS, grace_period=3, reduction_factor=3)


if __name__ == "__main__":
    main("als", param_space, scheduler=scheduler())
