"""Connecting to Ray the same way from every job, test and script."""

import atexit
import logging
import os
import shutil
import socket
import tempfile

import ray

logger = logging.getLogger(__name__)


def use_haproxy_ingress() -> None:
    """Serve HTTP through HAProxy straight to the ingress replicas' own servers, rather than Serve's Python
    proxy and an actor call a request: a hop less, and many times the requests a second
    (benchmarks/RESULTS.md, "Serving under load"). Set before Ray starts, for an in-process instance: its
    HAProxy's files go in a folder of its own and its stats and metrics listen on free ports, so that it runs
    beside a demo cluster's (which uses the defaults, /tmp/haproxy-serve and ports 8404 and 9101). The folder
    is short-named in /tmp: Ray adds the node's id to it, and a Unix socket's path has at most 107 bytes."""
    folder = tempfile.mkdtemp(prefix="hap-", dir="/tmp")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
    for name, file in [
        ("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "haproxy.cfg"),
        ("RAY_SERVE_HAPROXY_SOCKET_PATH", "admin.sock"),
        ("RAY_SERVE_HAPROXY_SERVER_STATE_BASE", ""),
        ("RAY_SERVE_HAPROXY_SERVER_STATE_FILE", "server-state"),
    ]:
        os.environ.setdefault(name, os.path.join(folder, file))
    for name in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
        os.environ.setdefault(name, str(free_port()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        use_haproxy_ingress()
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1")
        logger.info("started a local Ray instance (set RAY_ADDRESS to use a cluster)")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
