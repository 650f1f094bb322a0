"""Search the popularity baseline: rank by distinct listeners or by total plays.

python -m tuning.popularity --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts
"""

from ray import tune

from tuning.common import main

PARAM_SPACE = {"by": tune.grid_search(["users", "weight"])}

if __name__ == "__main__":
    main("popularity", PARAM_SPACE)
