"""Seconds per ALS iteration: Encore's torch ALS against ``implicit``'s CPU ALS, both on 2 threads.

Both solve the same problem with the same conjugate-gradient scheme (``use_cg=True``, the same
factors, ``cg_steps`` and iterations, confidence ``1 + alpha * w`` handed to ``implicit`` as its
matrix) on HetRec Last.fm and on a seeded synthetic 100,000 users x 50,000 items x 5,000,000
interactions matrix with power-law item popularity. Each model is fitted once with one iteration
(the warm-up, which also pays one-off setup: transposing the matrix, thread pools, first touches),
then with ``--iterations``; the table shows the second fit's time divided by its iterations.
``implicit`` is a benchmark-only dependency (the ``bench`` extra). One run prints one table.

    python -m benchmarks.als_speed [--iterations 3] [--factors 64 128] [--datasets lastfm synthetic]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from encore.recsys.models.als import ALS

REPO = Path(__file__).resolve().parents[1]
THREADS = 2
CG_STEPS = 3
REGULARIZATION = 0.01
ALPHA = 1.0


def lastfm() -> sp.csr_matrix:
    """HetRec 2011 Last.fm user-artist play counts, users and artists renumbered densely."""
    plays = pd.read_csv(REPO / "data" / "lastfm-hetrec2k" / "user_artists.dat", sep="\t")
    users, user_index = np.unique(plays["userID"].to_numpy(), return_inverse=True)
    artists, artist_index = np.unique(plays["artistID"].to_numpy(), return_inverse=True)
    weights = plays["weight"].to_numpy(dtype=np.float32)
    return sp.csr_matrix((weights, (user_index, artist_index)), shape=(len(users), len(artists)))


def synthetic(users: int = 100_000, items: int = 50_000, interactions: int = 5_000_000, seed: int = 0) -> sp.csr_matrix:
    """Uniformly active users, Zipf-like (exponent 0.9) item popularity, exactly ``interactions``
    distinct pairs with play counts 1 + Poisson(2); item ids shuffled so popularity is not by id."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.9
    popularity /= popularity.sum()
    pairs = np.empty(0, dtype=np.int64)
    while len(pairs) < interactions:
        draw = 2 * (interactions - len(pairs))
        pairs = np.union1d(pairs, rng.integers(0, users, draw) * items + rng.choice(items, draw, p=popularity))
    pairs = rng.choice(pairs, interactions, replace=False)
    rows, cols = np.divmod(pairs, items)
    weights = (1 + rng.poisson(2.0, interactions)).astype(np.float32)
    return sp.csr_matrix((weights, (rows, rng.permutation(items)[cols])), shape=(users, items))


def time_encore(matrix: sp.csr_matrix, factors: int, iterations: int) -> tuple[float, float]:
    def fit(n: int) -> float:
        model = ALS(factors=factors, regularization=REGULARIZATION, alpha=ALPHA, iterations=n, cg_steps=CG_STEPS)
        start = time.perf_counter()
        model.fit(matrix)
        return time.perf_counter() - start

    return fit(1), fit(iterations) / iterations


def time_implicit(matrix: sp.csr_matrix, factors: int, iterations: int) -> tuple[float, float]:
    from implicit.cpu.als import AlternatingLeastSquares

    # implicit takes the confidence itself as the matrix (its alpha multiplies it): hand it 1 + alpha * w.
    confidence = matrix.copy()
    confidence.data = 1 + ALPHA * confidence.data

    def fit(n: int) -> float:
        model = AlternatingLeastSquares(
            factors=factors,
            regularization=REGULARIZATION,
            iterations=n,
            use_cg=True,
            num_threads=THREADS,
            random_state=0,
        )
        model.cg_steps = CG_STEPS
        # implicit parallelises over users with its own threads and asks for a single-threaded BLAS.
        with threadpool_limits(1, "blas"):
            start = time.perf_counter()
            model.fit(confidence, show_progress=False)
            return time.perf_counter() - start

    return fit(1), fit(iterations) / iterations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--factors", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--datasets", nargs="+", choices=["lastfm", "synthetic"], default=["lastfm", "synthetic"])
    args = parser.parse_args()
    try:
        import implicit
    except ImportError:
        print(
            "implicit is not installed: pip install -e '.[bench]' (or implicit==0.7.2) to compare against it",
            file=sys.stderr,
        )
        return 1

    torch.set_num_threads(THREADS)
    rows = []
    with threadpool_limits(THREADS):
        blas = ", ".join(
            sorted({f"{p['internal_api']} {p.get('architecture') or ''}".strip() for p in threadpool_info()})
        )
        print(
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), implicit {implicit.__version__}, "
            f"thread pools: {blas}",
            flush=True,
        )
        for name in args.datasets:
            matrix = lastfm() if name == "lastfm" else synthetic()
            for factors in args.factors:
                encore_warm, encore_iter = time_encore(matrix, factors, args.iterations)
                implicit_warm, implicit_iter = time_implicit(matrix, factors, args.iterations)
                rows.append(
                    (
                        name,
                        f"{matrix.shape[0]:,} x {matrix.shape[1]:,}",
                        f"{matrix.nnz:,}",
                        factors,
                        encore_warm,
                        encore_iter,
                        implicit_warm,
                        implicit_iter,
                        encore_iter / implicit_iter,
                    )
                )
                print(
                    f"  {name} factors={factors}: encore {encore_iter:.3f} s/it, implicit {implicit_iter:.3f} s/it",
                    flush=True,
                )

    header = (
        "dataset",
        "users x items",
        "nnz",
        "factors",
        "encore warm-up s",
        "encore s/iter",
        "implicit warm-up s",
        "implicit s/iter",
        "encore/implicit",
    )
    print("\n| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for name, shape, nnz, factors, ew, ei, iw, ii, ratio in rows:
        print(f"| {name} | {shape} | {nnz} | {factors} | {ew:.3f} | {ei:.3f} | {iw:.3f} | {ii:.3f} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
