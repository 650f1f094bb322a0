"""Search RP3beta: the walk's exponent alpha, the popularity penalty beta, and neighbours kept.

python -m tuning.rp3beta --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts --num-samples 16
"""

from tuning.common import main


def param_space(trial) -> dict:
    return {
        "alpha": trial.suggest_float("alpha", 0.3, 1.2),
        "beta": trial.suggest_float("beta", 0.0, 0.8),
        "neighbours": trial.suggest_categorical("neighbours", [50, 100, 200, 400]),
    }


if __name__ == "__main__":
    main("rp3beta", param_space)
