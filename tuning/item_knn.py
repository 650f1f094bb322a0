"""Search item-based kNN: similarity (cosine, Pearson, Euclidean), neighbours kept, shrinkage.

python -m tuning.item_knn --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts --num-samples 16
"""

from tuning.common import main


def param_space(trial) -> dict:
    similarity = trial.suggest_categorical("similarity", ["cosine", "pearson", "euclidean"])
    return {
        "similarity": similarity,
        "neighbours": trial.suggest_categorical("neighbours", [25, 50, 100, 200, 400]),
        "shrinkage": trial.suggest_float("shrinkage", 0.0, 100.0),
        # Pearson centres the weights, which binary weights would reduce to zeros.
        "binarize": similarity != "pearson",
        "log_scaling": similarity == "pearson",
    }


if __name__ == "__main__":
    main("item_knn", param_space)
