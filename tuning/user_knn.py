"""Search user-based kNN over the same space as item-based kNN.

python -m tuning.user_knn --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts --num-samples 16
"""

from tuning.common import main
from tuning.item_knn import param_space

if __name__ == "__main__":
    main("user_knn", param_space)
