"""Search the hybrid: which collaborative model, and how much content adds for cold and for warm items.

python -m tuning.hybrid --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts --num-samples 8
"""

from tuning.common import main


def weighting_space(trial) -> dict:
    """How much content adds: for an item nobody played, for a much-played one, and where between."""
    return {
        "balance": trial.suggest_float("balance", 0.5, 100.0, log=True),
        "cold_weight": trial.suggest_float("cold_weight", 0.0, 3.0),
        "warm_weight": trial.suggest_float("warm_weight", 0.0, 1.0),
    }


def param_space(trial) -> dict:
    return {
        "collaborative": trial.suggest_categorical("collaborative", ["item_knn", "ease", "als"]),
        **weighting_space(trial),
        "features": "tags",
    }


if __name__ == "__main__":
    main("hybrid", param_space)
