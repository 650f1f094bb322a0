"""librosa's numba code made ready in a process, through a per-node cache that cannot stay broken.

The extraction job's workers and the Serve replicas that analyse uploads call ``warm_up_numba``
before their first file.
"""

import fcntl
import logging
import os
import shutil
import tempfile

from encore.audio.isolation import ChildCrashed, ChildRaised, run_forked
from encore.audio.schema import SAMPLE_RATE

logger = logging.getLogger(__name__)

WARM_UP_TIMEOUT_S = 900.0
WARM_UP_LOCK = "encore-warm-up.lock"


def default_numba_cache_dir() -> str:
    """The workers' numba cache unless told otherwise: one folder per node and user, kept across runs.

    Not librosa's default, beside its sources, which every process of the environment shares without
    the lock of ``warm_up_numba`` (that one went bad here and crashed every later process).
    """
    return os.path.join(tempfile.gettempdir(), f"encore-numba-cache-{os.getuid()}")


def _warm_up_librosa(sample_rate: int) -> None:
    # librosa is imported by the callers that analyse audio only: a job's driver has no use for it.
    from encore.audio.features import warm_up

    warm_up(sample_rate)


def _empty(folder: str, keep: str) -> None:
    for entry in os.scandir(folder):
        if entry.is_dir():
            shutil.rmtree(entry.path)
        elif entry.name != keep:
            os.remove(entry.path)


def warm_up_numba(sample_rate: int = SAMPLE_RATE) -> None:
    """Make librosa's numba code ready in this process, through a cache that cannot stay broken.

    Seen here: two processes compiling into one empty ``NUMBA_CACHE_DIR`` at once left a cache that
    crashed every later process with a segmentation fault in librosa's gufuncs. So a worker first
    warms up in a forked child while it holds the node's lock on the cache: that child compiles and
    writes the cache, or loads it; if it fails, the cache is emptied and built again. The worker
    then loads the cache itself, beside other workers loading, never beside a rebuild.

    Without ``NUMBA_CACHE_DIR`` in the environment, it is set to ``default_numba_cache_dir()``; numba
    must not have been imported before (it reads the variable once).
    """
    cache_dir = os.environ.setdefault("NUMBA_CACHE_DIR", default_numba_cache_dir())
    os.makedirs(cache_dir, exist_ok=True)
    with open(os.path.join(cache_dir, WARM_UP_LOCK), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            run_forked(_warm_up_librosa, sample_rate, timeout_s=WARM_UP_TIMEOUT_S)
        except (ChildCrashed, ChildRaised) as failure:
            logger.warning("warm-up failed with the numba cache in %s (%s): building it again", cache_dir, failure)
            _empty(cache_dir, keep=WARM_UP_LOCK)
            run_forked(_warm_up_librosa, sample_rate, timeout_s=WARM_UP_TIMEOUT_S)
        fcntl.flock(lock, fcntl.LOCK_SH)
        _warm_up_librosa(sample_rate)
