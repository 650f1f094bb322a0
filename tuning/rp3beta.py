"""Search RP3beta: the walk's exponent alpha, the popularity penalty beta, and neighbours kept.

python -m tuning.rp3beta --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts --num-samples 16
"""

from ray import tune

from tuning.common import main

PARAM_SPACE = {
    "alpha": tune.uniform(0.3, 1.2),
    "beta": tune.uniform(0.0, 0.8),
    "neighbours": tune.choice([50, 100, 200, 400]),
}

if __name__ == "__main__":
    main("rp3beta", PARAM_SPACE)
