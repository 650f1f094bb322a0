"""Search item-based kNN: similarity (cosine, Pearson, Euclidean), neighbours kept, shrinkage.

python -m tuning.item_knn --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts --num-samples 16
"""

from ray import tune

from tuning.common import main

PARAM_SPACE = {
    "similarity": tune.choice(["cosine", "pearson", "euclidean"]),
    "neighbours": tune.choice([25, 50, 100, 200, 400]),
    "shrinkage": tune.uniform(0.0, 100.0),
    # Pearson centres the weights, which binary weights would reduce to zeros.
    "binarize": tune.sample_from(lambda spec: spec.config.similarity != "pearson"),
    "log_scaling": tune.sample_from(lambda spec: spec.config.similarity == "pearson"),
}

if __name__ == "__main__":
    main("item_knn", PARAM_SPACE)
