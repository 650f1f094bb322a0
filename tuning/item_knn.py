"""Search item-based kNN: similarity (cosine, Pearson, Euclidean), neighbours kept, shrinkage.

python -m tuning.item_knn --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts --num-samples 16
"""

from encore.recsys.search import main

if __name__ == "__main__":
    main("item_knn")
