"""Search ALS: factors, regularization over four orders of magnitude, confidence scale, log scaling,
and how the penalty grows with each user's and item's plays (``frequency_scaling``).

TPE proposes the configurations; trials report validation NDCG@10 after every ALS sweep and ASHA
stops the poor ones early.

    python -m tuning.als --dataset artifacts/datasets/lastfm-hetrec2k --store artifacts --num-samples 16
"""

from encore.recsys.search import main

if __name__ == "__main__":
    main("als")
