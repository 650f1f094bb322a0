"""Search the popularity baseline: rank by distinct listeners or by total plays (a grid of two).

python -m tuning.popularity --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts
"""

from ray import tune

from tuning.common import main

param_space = {"by": tune.grid_search(["users", "weight"])}

if __name__ == "__main__":
    main("popularity", param_space)
