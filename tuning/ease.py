"""Search EASE's L2 regularization over three orders of magnitude.

python -m tuning.ease --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts --num-samples 8
"""

from encore.recsys.search import main

if __name__ == "__main__":
    main("ease")
