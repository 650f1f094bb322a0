"""Search user-based kNN over the same space as item-based kNN.

python -m tuning.user_knn --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts --num-samples 16
"""

from encore.recsys.search import main

if __name__ == "__main__":
    main("user_knn")
