"""Search the hybrid: which collaborative model, and the listener count at which it takes over from content.

python -m tuning.hybrid --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts --num-samples 8
"""

from ray import tune

from tuning.common import main

PARAM_SPACE = {
    "collaborative": tune.choice(["item_knn", "ease", "als"]),
    "balance": tune.loguniform(0.5, 50.0),
    "features": "tags",
}

if __name__ == "__main__":
    main("hybrid", PARAM_SPACE)
