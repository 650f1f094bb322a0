"""Connecting to Ray the same way from every job, test and script."""

import contextlib
import logging
import os

import ray

logger = logging.getLogger(__name__)


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by ``RAY_ADDRESS`` (as under ``ray job submit``), or start Ray in-process.

    The in-process instance binds to loopback and never touches a cluster started with
    ``ray start``, so a job run by hand works beside the demo cluster.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Measured here: with this unset, an in-process Ray listens on every interface.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        logger.info("joined the Ray cluster at %s", os.environ["RAY_ADDRESS"])
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1")
        logger.info("started a local Ray instance (set RAY_ADDRESS to use a cluster)")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@contextlib.contextmanager
def user_errors():
    """Turn errors about the user's input into ``error: ...`` and exit status 1, without a traceback."""
    from encore.interactions import IngestError
    from encore.store import StoreError

    try:
        yield
    except (FileNotFoundError, IngestError, StoreError) as error:
        raise SystemExit(f"error: {error}") from None
