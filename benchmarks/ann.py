"""Approximate top-10 by inner product over a large ALS catalogue: faiss, hnswlib and usearch against exact scoring.

An ALS score is the inner product of a user's and an item's factors, so recommending is maximum
inner-product search (MIPS). The model is synthetic but shaped like a fitted ALS: item directions
gather around a few hundred uneven clusters (genres and scenes; ALS factors are far from isotropic),
and an item's norm falls with its popularity rank, as ALS gives popular items longer vectors. Both
matter here: on isotropic Gaussian factors every item is about equally far from every query and
graph indexes look worse than they are, and without the spread of norms inner product and cosine
rank alike and MIPS looks easier than it is. Users are mixtures of two or three clusters.

Each candidate is built once (on every core, as a training job would) and queried for one user at
a time on one thread, as a serving replica asks; each search setting is a row. Recall@10 is the
share of the exact top 10 (numpy over all items) found among the index's 10, over ``--users``
sampled users. ``hnswlib-l2`` runs the standard MIPS-to-nearest-neighbour reduction (Bachrach et al.
2014: one added coordinate ``sqrt(max_norm^2 - |y|^2)``, query coordinate 0) instead of the
library's inner-product metric. ``build_large_store`` writes a servable 1M-item ALS version for
``benchmarks/serve_load.py``. One run prints one table.

faiss is Encore's (``encore.recsys.models.ann``); hnswlib and usearch, which it was chosen against, are not
dependencies: ``pip install hnswlib==0.8.0 usearch==2.26.6`` to measure them again.

    python -m benchmarks.ann [--items 1000000] [--factors 128] [--users 300] [--libraries ...]
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

THREADS = os.cpu_count() or 1
CHUNK = 100_000  # rows generated or scored at once: bounded memory at any catalogue size


def synthetic_factors(
    n_items: int, factors: int, n_users: int, seed: int = 0, clusters: int = 300
) -> tuple[np.ndarray, np.ndarray]:
    """``(user_factors, item_factors)``, float32, shaped like a fitted ALS model (module docstring)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, factors), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # Uneven cluster sizes: a few big genres, many small scenes.
    cluster = rng.choice(clusters, n_items, p=rng.dirichlet(np.full(clusters, 0.5)))
    # Zipf-like play counts by popularity rank; an item's norm grows as a power of its plays.
    rank = rng.permutation(n_items).astype(np.float32) + 1
    norms = (rank / n_items) ** -0.25 * rng.lognormal(0, 0.2, n_items).astype(np.float32)
    items = np.empty((n_items, factors), dtype=np.float32)
    for start in range(0, n_items, CHUNK):
        part = slice(start, start + CHUNK)
        direction = centres[cluster[part]] + 0.08 * rng.standard_normal((len(cluster[part]), factors), dtype=np.float32)
        items[part] = direction * (norms[part] / np.linalg.norm(direction, axis=1))[:, None]
    mix = rng.dirichlet(np.ones(3), n_users).astype(np.float32)
    tastes = rng.integers(0, clusters, (n_users, 3))
    users = np.einsum("uk,ukf->uf", mix, centres[tastes])
    users += 0.05 * rng.standard_normal(users.shape, dtype=np.float32)
    return users.astype(np.float32), items


def exact_top(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` highest inner products of each user, best first: numpy over the whole catalogue."""
    top = np.empty((len(users), k), dtype=np.int64)
    for start in range(0, len(users), 64):
        scores = users[start : start + 64] @ items.T
        best = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1)
        top[start : start + 64] = np.take_along_axis(best, order, axis=1)
    return top


class Exact:
    name, metric, built_with, settings, search_name = "exact (numpy)", "ip", "", [None], ""

    def build(self, items: np.ndarray) -> None:
        self.items = items

    def save(self, path: Path) -> int:
        np.save(path, self.items)
        return path.with_suffix(".npy").stat().st_size

    def query(self, user: np.ndarray, k: int, setting) -> np.ndarray:
        scores = self.items @ user
        best = np.argpartition(-scores, k)[:k]
        return best[np.argsort(-scores[best])]


class FaissHNSW:
    name, metric, search_name = "faiss HNSWFlat", "ip", "ef"

    def __init__(self, m: int, ef_construction: int, efs: list[int]):
        self.m, self.ef_construction, self.settings = m, ef_construction, efs
        self.built_with = f"M={m}, efC={ef_construction}"

    def build(self, items: np.ndarray) -> None:
        import faiss

        faiss.omp_set_num_threads(THREADS)
        self.index = faiss.IndexHNSWFlat(items.shape[1], self.m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = self.ef_construction
        self.index.add(items)
        faiss.omp_set_num_threads(1)

    def save(self, path: Path) -> int:
        import faiss

        faiss.write_index(self.index, str(path))
        return path.stat().st_size

    def query(self, user: np.ndarray, k: int, ef: int) -> np.ndarray:
        import faiss

        _, ids = self.index.search(user[None, :], k, params=faiss.SearchParametersHNSW(efSearch=ef))
        return ids[0]


class FaissIVF:
    name, metric, search_name = "faiss IVFFlat", "ip", "nprobe"

    def __init__(self, nlist: int, nprobes: list[int]):
        self.nlist, self.settings = nlist, nprobes
        self.built_with = f"nlist={nlist}"

    def build(self, items: np.ndarray) -> None:
        import faiss

        faiss.omp_set_num_threads(THREADS)
        quantizer = faiss.IndexFlatIP(items.shape[1])
        self.index = faiss.IndexIVFFlat(quantizer, items.shape[1], self.nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(len(items), min(len(items), 64 * self.nlist), replace=False)
        self.index.train(items[np.sort(sample)])
        self.index.add(items)
        faiss.omp_set_num_threads(1)

    def save(self, path: Path) -> int:
        import faiss

        faiss.write_index(self.index, str(path))
        return path.stat().st_size

    def query(self, user: np.ndarray, k: int, nprobe: int) -> np.ndarray:
        import faiss

        _, ids = self.index.search(user[None, :], k, params=faiss.SearchParametersIVF(nprobe=nprobe))
        return ids[0]


class Hnswlib:
    name, search_name = "hnswlib", "ef"

    def __init__(self, m: int, ef_construction: int, efs: list[int], metric: str = "ip"):
        self.m, self.ef_construction, self.settings, self.metric = m, ef_construction, efs, metric
        self.built_with = f"M={m}, efC={ef_construction}"

    def build(self, items: np.ndarray) -> None:
        import hnswlib

        if self.metric == "l2":  # MIPS as nearest neighbours: every augmented item has the same norm
            norms = np.square(items).sum(axis=1)
            items = np.hstack([items, np.sqrt(norms.max() - norms)[:, None]]).astype(np.float32)
        self.index = hnswlib.Index(space=self.metric, dim=items.shape[1])
        self.index.init_index(max_elements=len(items), ef_construction=self.ef_construction, M=self.m)
        self.index.add_items(items, num_threads=THREADS)

    def save(self, path: Path) -> int:
        self.index.save_index(str(path))
        return path.stat().st_size

    def query(self, user: np.ndarray, k: int, ef: int) -> np.ndarray:
        if self.metric == "l2":
            user = np.append(user, np.float32(0))
        self.index.set_ef(max(ef, k))
        ids, _ = self.index.knn_query(user[None, :], k=k, num_threads=1)
        return ids[0]


class USearch:
    name, metric, search_name = "usearch", "ip", "ef"

    def __init__(self, m: int, ef_construction: int, efs: list[int]):
        self.m, self.ef_construction, self.settings = m, ef_construction, efs
        self.built_with = f"M={m}, efC={ef_construction}"

    def build(self, items: np.ndarray) -> None:
        from usearch.index import Index

        self.index = Index(
            ndim=items.shape[1], metric="ip", dtype="f32", connectivity=self.m, expansion_add=self.ef_construction
        )
        self.index.add(np.arange(len(items)), items, threads=THREADS)

    def save(self, path: Path) -> int:
        self.index.save(str(path))
        return path.stat().st_size

    def query(self, user: np.ndarray, k: int, ef: int) -> np.ndarray:
        self.index.expansion_search = ef
        return self.index.search(user, k, threads=1).keys


def candidates(args: argparse.Namespace | None) -> dict:
    """Each candidate's name and how to make it (read ``args`` only when made)."""
    return {
        "exact": lambda: Exact(),
        "faiss-hnsw": lambda: FaissHNSW(args.m, args.ef_construction, args.ef),
        "faiss-ivf": lambda: FaissIVF(args.nlist, args.nprobe),
        "hnswlib": lambda: Hnswlib(args.m, args.ef_construction, args.ef),
        "hnswlib-l2": lambda: Hnswlib(args.m, args.ef_construction, args.ef, metric="l2"),
        "usearch": lambda: USearch(args.m, args.ef_construction, args.ef),
    }


def measure(candidate, items: np.ndarray, users: np.ndarray, truth: np.ndarray, k: int) -> list[dict]:
    started = time.perf_counter()
    candidate.build(items)
    build_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        size = candidate.save(Path(folder) / "index")
    rows = []
    for setting in candidate.settings:
        for user in users[:10]:  # warm-up: first touches of the index's pages
            candidate.query(user, k, setting)
        latencies, found = [], 0
        for user, exact in zip(users, truth):
            started = time.perf_counter()
            ids = candidate.query(user, k, setting)
            latencies.append(1000 * (time.perf_counter() - started))
            found += len(np.intersect1d(ids, exact))
        rows.append(
            {
                "library": candidate.name,
                "metric": candidate.metric,
                "built with": candidate.built_with,
                "search": "" if setting is None else f"{candidate.search_name}={setting}",
                "build s": f"{build_seconds:.1f}",
                "size MB": f"{size / 2**20:.0f}",
                "p50 ms": f"{np.percentile(latencies, 50):.2f}",
                "p99 ms": f"{np.percentile(latencies, 99):.2f}",
                "recall@10": f"{found / truth.size:.3f}",
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(row[name] for name in header) + " |" for row in rows)])


def build_large_store(
    store: Path, n_items: int = 1_000_000, factors: int = 128, n_users: int = 2000, seed: int = 0
) -> None:
    """Write a servable synthetic ALS version to ``ModelStore(store)`` as ``production``.

    Its users are the pseudonyms of raw ids "0".."n_users-1" under this process's id key; each has
    played five of its exact top 50 and five items drawn by popularity, so that ``exclude_seen`` has
    work to do. Saving builds the model's approximate-search index (``ALS.ann_min_items``)."""
    import pandas as pd

    from encore.privacy.ids import id_key, key_fingerprint, pseudonymize
    from encore.recsys.bundle import RecommenderBundle, preprocessing
    from encore.recsys.models.als import ALS
    from encore.store import ModelStore

    rng = np.random.default_rng(seed)
    user_factors, item_factors = synthetic_factors(n_items, factors, n_users, seed)
    favourites = exact_top(user_factors, item_factors, 50)
    norms = np.linalg.norm(item_factors, axis=1)
    popular = rng.choice(n_items, (n_users, 5), p=norms**4 / (norms**4).sum())
    liked = np.take_along_axis(favourites, rng.permuted(np.tile(np.arange(50), (n_users, 1)), axis=1)[:, :5], axis=1)
    seen = np.hstack([liked, popular])
    rows = np.repeat(np.arange(n_users), seen.shape[1])
    plays = sp.csr_matrix((np.ones(seen.size, dtype=np.float32), (rows, seen.ravel())), shape=(n_users, n_items))

    model = ALS(factors=factors)
    model._excess_matrix(plays)  # user_items_ and the fold-in's penalty scale, as a fit would leave them
    model.user_factors_, model.item_factors_ = user_factors, item_factors
    key = id_key()
    pseudonyms = [pseudonymize(str(user), key) for user in range(n_users)]
    users = pd.DataFrame({"user_idx": np.arange(n_users), "user_key": pseudonyms})
    items = pd.DataFrame(
        {
            "item_idx": np.arange(n_items),
            "item_id": [f"item-{i}" for i in range(n_items)],
            "name": [f"Synthetic item {i}" for i in range(n_items)],
            "popularity": np.asarray((plays > 0).sum(axis=0)).ravel().astype(np.int64),
        }
    )
    with tempfile.TemporaryDirectory() as folder:
        RecommenderBundle(model, users, items).save(folder)
        ModelStore(store).save(
            folder,
            kind="als",
            config={"synthetic": {"items": n_items, "factors": factors, "users": n_users, "seed": seed}},
            metrics={},
            data_fingerprint=f"synthetic-{n_items}x{factors}-{n_users}-{seed}",
            preprocessing=preprocessing(key_fingerprint(key)),
            aliases=["production"],
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--factors", type=int, default=128)
    parser.add_argument("--users", type=int, default=300, help="sampled users: recall and latency")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--m", type=int, default=16, help="HNSW links per node")
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--ef", type=int, nargs="+", default=[32, 64, 128, 256], help="HNSW search widths")
    parser.add_argument("--nlist", type=int, default=1024, help="IVF lists")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64], help="IVF lists searched")
    parser.add_argument("--libraries", nargs="+", default=["exact", "faiss-hnsw"], choices=list(candidates(None)))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    users, items = synthetic_factors(args.items, args.factors, args.users, args.seed)
    truth = exact_top(users, items, args.k)
    rows = []
    for name in args.libraries:
        rows += measure(candidates(args)[name](), items, users, truth, args.k)
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    print(
        f"\n{args.items:,} items x {args.factors} factors, {args.users} users, top {args.k}, {THREADS} build threads\n"
    )
    print(markdown(rows))


if __name__ == "__main__":
    main()
