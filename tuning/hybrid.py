"""Search the hybrid: which collaborative model, and how much content adds for cold and for warm items.

python -m tuning.hybrid --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts --num-samples 8
"""

from encore.recsys.search import main

if __name__ == "__main__":
    main("hybrid")
