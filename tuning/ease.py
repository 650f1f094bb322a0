"""Search EASE's L2 regularization over three orders of magnitude.

python -m tuning.ease --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts --num-samples 8
"""

from tuning.common import main


def param_space(trial) -> dict:
    return {"regularization": trial.suggest_float("regularization", 10.0, 1e4, log=True)}


if __name__ == "__main__":
    main("ease", param_space)
