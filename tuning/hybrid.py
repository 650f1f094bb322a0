"""Search the hybrid: which collaborative model, and the listener count at which it takes over from content.

python -m tuning.hybrid --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts --num-samples 8
"""

from tuning.common import main


def param_space(trial) -> dict:
    return {
        "collaborative": trial.suggest_categorical("collaborative", ["item_knn", "ease", "als"]),
        "balance": trial.suggest_float("balance", 0.5, 50.0, log=True),
        "features": "tags",
    }


if __name__ == "__main__":
    main("hybrid", param_space)
