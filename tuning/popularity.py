"""Search the popularity baseline: rank by distinct listeners or by total plays (a grid of two).

python -m tuning.popularity --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts
"""

from encore.recsys.search import main

if __name__ == "__main__":
    main("popularity")
