"""Search ALS: factors, regularization over four orders of magnitude, confidence scale, log scaling.

Trials report validation NDCG@10 after every ALS sweep and ASHA stops the poor ones early.

    python -m tuning.als --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts --num-samples 16
"""

from ray import tune
from ray.tune.schedulers import ASHAScheduler

from tuning.common import main

ITERATIONS = 15
PARAM_SPACE = {
    "factors": tune.choice([32, 64, 128]),
    "regularization": tune.loguniform(1e-2, 1e2),
    "alpha": tune.loguniform(0.1, 50.0),
    "log_scaling": tune.choice([True, False]),
    "iterations": ITERATIONS,
}


def scheduler() -> ASHAScheduler:
    return ASHAScheduler(time_attr="training_iteration", max_t=ITERATIONS, grace_period=3, reduction_factor=3)


if __name__ == "__main__":
    main("als", PARAM_SPACE, scheduler=scheduler())
