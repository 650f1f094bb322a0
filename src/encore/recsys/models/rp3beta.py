"""RP3beta: item similarity from three-step random walks on the listening graph, popularity-penalised.

Paudel, Christoffel, Newell and Bernstein (2017), "Updatable, accurate, diverse, and scalable
recommendations for interactive applications"; Dacrema, Cremonesi and Jannach (2019) found it among
the strongest simple baselines on Last.fm-like data. The walk goes item -> user -> item over the
bipartite graph of who played what, each step choosing uniformly among the edges it may take. The
probability of reaching item j from item i, raised to ``alpha``, is divided by j's popularity raised
to ``beta``, so popular items stop winning every walk; each item keeps its ``neighbours`` most
reachable items, and the row is normalised to sum to one.

Scoring, similar items, fold-in of a new listener and explanations are those of item-based kNN with
this similarity over presence weights.
"""

import numpy as np
import pandas as pd
import scipy.sparse as sp

from encore.recsys.models.base import FitCallback
from encore.recsys.models.knn import ItemKNN, top_neighbours, weigh


def _row_stochastic(rows: sp.csr_matrix) -> sp.csr_matrix:
    totals = np.asarray(rows.sum(axis=1)).ravel()
    totals[totals == 0] = 1.0  # an empty row stays empty
    return sp.csr_matrix(sp.diags(1.0 / totals) @ rows)


class RP3beta(ItemKNN):
    """Item-based recommendations through popularity-penalised random walks.

    Parameters
    ----------
    alpha : float
        Exponent on each step's transition probabilities; below 1 flattens them.
    beta : float
        Popularity penalty: the walk's arrival probability at item j is divided by popularity(j)**beta.
    neighbours : int
        How many most reachable items each item keeps.

    Attributes
    ----------
    similarity_ : scipy.sparse.csr_matrix, shape (n_items, n_items), float32
        Row i: the items item i's walks reach, with their normalised weights; the diagonal is empty.

    Examples
    --------
    >>> model = RP3beta(alpha=1.0, beta=0.3, neighbours=200).fit(user_items)
    >>> ids, scores = model.recommend(0, n=10)
    """

    kind = "rp3beta"
    # The walk follows edges of who played what: presence, not play counts.
    binarize, log_scaling = True, False

    def __init__(self, alpha: float = 1.0, beta: float = 0.3, neighbours: int = 200):
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, not {alpha}")
        if beta < 0:
            raise ValueError(f"beta must be non-negative, not {beta}")
        if neighbours < 1:
            raise ValueError(f"neighbours must be at least 1, not {neighbours}")
        self.alpha = alpha
        self.beta = beta
        self.neighbours = neighbours

    def _fit(self, user_items: sp.csr_matrix, items: pd.DataFrame | None, callback: FitCallback | None) -> None:
        self.user_items_ = user_items
        played = weigh(self.user_items_, binarize=True, log_scaling=False).astype(np.float64)
        user_to_item = _row_stochastic(played)
        item_to_user = _row_stochastic(played.T.tocsr())
        if self.alpha != 1:
            user_to_item, item_to_user = user_to_item.power(self.alpha), item_to_user.power(self.alpha)
        popularity = np.maximum(np.asarray(played.sum(axis=0)).ravel(), 1.0)
        walks = sp.csr_matrix((item_to_user @ user_to_item) @ sp.diags(popularity**-self.beta))
        self.similarity_ = _row_stochastic(top_neighbours(walks, self.neighbours, exclude_self=True)).astype(np.float32)
