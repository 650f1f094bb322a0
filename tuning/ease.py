"""Search EASE's L2 regularization over three orders of magnitude.

python -m tuning.ease --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts --num-samples 8
"""

from ray import tune

from tuning.common import main

PARAM_SPACE = {"regularization": tune.loguniform(10.0, 1e4)}

if __name__ == "__main__":
    main("ease", PARAM_SPACE)
