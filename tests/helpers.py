"""Test data more than one test module builds."""

import numpy as np
import scipy.sparse as sp


def block_matrix(
    blocks: int, users_per_block: int, items_per_block: int, played_per_user: int, max_plays: int, seed: int = 0
) -> sp.csr_matrix:
    """Users of block b play only items of block b, ``played_per_user`` of its ``items_per_block``,
    with play counts 1..``max_plays``: a structure any personalised model must find."""
    rng = np.random.default_rng(seed)
    plays = np.zeros((blocks * users_per_block, blocks * items_per_block), dtype=np.float32)
    for user in range(plays.shape[0]):
        block = user // users_per_block
        items = block * items_per_block + rng.choice(items_per_block, played_per_user, replace=False)
        plays[user, items] = rng.integers(1, max_plays + 1, size=played_per_user)
    return sp.csr_matrix(plays)
