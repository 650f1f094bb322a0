"""Approximate top-k by inner product over item factors, for catalogues too large to score whole.

A factor model's score is an inner product, so its top items are a maximum inner-product search.
:class:`ItemIndex` is a faiss HNSW graph (``IndexHNSWFlat``) searched with faiss's inner-product
metric: of the libraries compared (``benchmarks/ann.py``; recall and latency in
``benchmarks/RESULTS.md``), hnswlib was faster at the same recall but installs by compiling its source
and took its process down (SIGFPE) on an index file with a damaged header, where faiss raises;
usearch was slower at equal recall and to build; faiss's IVF lists fell short on recall; and the
MIPS-to-L2 reduction lost most of the recall to the spread of ALS item norms.

The index is a file of the model's folder, so the model store's manifest checksums cover it; a
file that faiss cannot read, or that does not index the model's items, raises :class:`IndexFileError`.
"""

from pathlib import Path

import faiss
import numpy as np

from encore.core.errors import InputError

# HNSW links per item and build-time search width: more cost build time and memory (the 1M-item
# index's build time and size are in benchmarks/RESULTS.md).
LINKS = 16
BUILD_WIDTH = 100


class IndexFileError(InputError, ValueError):
    """An index file is missing, unreadable, or does not index the model's items."""


class ItemIndex:
    """An HNSW graph over item vectors, searched for the largest inner products with a query.

    Built with :meth:`build` (on every core faiss is allowed), written with :meth:`save` as one
    file and read back with :meth:`load`, which checks it against the items it must index.
    """

    def __init__(self, index: faiss.IndexHNSWFlat):
        self.index = index

    @classmethod
    def build(cls, items: np.ndarray) -> "ItemIndex":
        index = faiss.IndexHNSWFlat(items.shape[1], LINKS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = BUILD_WIDTH
        index.add(np.ascontiguousarray(items, dtype=np.float32))
        return cls(index)

    def save(self, path: str | Path) -> None:
        faiss.write_index(self.index, str(path))

    @property
    def shape(self) -> tuple[int, int]:
        """(items, factors) indexed."""
        return self.index.ntotal, self.index.d

    @classmethod
    def load(cls, path: str | Path) -> "ItemIndex":
        """Read an index written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise IndexFileError(f"{path} is missing")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as error:  # faiss's reader checks every length it reads and raises
            raise IndexFileError(f"{path} is not a readable faiss index: {str(error).splitlines()[0]}") from None
        if not isinstance(index, faiss.IndexHNSWFlat) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise IndexFileError(f"{path} is not an inner-product HNSW index")
        return cls(index)

    def search(self, query: np.ndarray, k: int, width: int) -> np.ndarray:
        """Ids of (about) the ``k`` items with the largest inner product with ``query``, best first,
        exploring ``width`` candidates (at least ``k``); fewer than ``k`` when the index holds fewer."""
        params = faiss.SearchParametersHNSW(efSearch=max(width, k))
        _, ids = self.index.search(np.asarray(query, dtype=np.float32)[None, :], k, params=params)
        return ids[0][ids[0] >= 0]
