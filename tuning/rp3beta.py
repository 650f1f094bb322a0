"""Search RP3beta: the walk's exponent alpha, the popularity penalty beta, and neighbours kept.

python -m tuning.rp3beta --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts --num-samples 16
"""

from encore.recsys.search import main

if __name__ == "__main__":
    main("rp3beta")
