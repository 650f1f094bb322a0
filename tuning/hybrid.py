"""Search the hybrid: which collaborative model, and how much content adds for cold and for warm items.

python -m tuning.hybrid --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts --num-samples 8
"""

from tuning.common import main


def param_space(trial) -> dict:
    return {
        "collaborative": trial.suggest_categorical("collaborative", ["item_knn", "ease", "als"]),
        "balance": trial.suggest_float("balance", 0.5, 100.0, log=True),
        "cold_weight": trial.suggest_float("cold_weight", 0.0, 3.0),
        "warm_weight": trial.suggest_float("warm_weight", 0.0, 1.0),
        "features": "tags",
    }


if __name__ == "__main__":
    main("hybrid", param_space)
