"""Session-wide fixtures: a real S3 protocol server (moto) and one local Ray instance.

Both run on 127.0.0.1 on ports of their own, so the suite works beside a running demo
cluster and never stops it.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from encore.core.runtime import free_port  # the test modules import it from here too

REPO = Path(__file__).resolve().parents[1]
TEST_ID_KEY = "encore-test-suite-key"
BODY_TIMEOUT_S = 12


def run_driver(ray_local, module_args: list[str], until_checkpoint: Path | None = None) -> str | None:
    """``python -m <module_args>`` as a separate driver on the session's Ray instance; returns its output.

    With ``until_checkpoint`` (a Ray Train run folder), SIGKILL its whole process group once Ray Train's
    record of the run lists a checkpoint, and return None. The kill lands in a later sweep, how much later
    depends on the machine's load: ``test_als_distributed`` makes every state a kill can leave on purpose."""
    import json
    import signal

    from encore.recsys.models.als_train import RUN_SNAPSHOT_FILE

    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    process = subprocess.Popen([sys.executable, "-m", *module_args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    if until_checkpoint is None:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output
        return output

    def checkpoints_registered() -> int:
        try:
            return len(json.loads((until_checkpoint / RUN_SNAPSHOT_FILE).read_text())["checkpoint_results"])
        except (OSError, ValueError):  # not written yet, or caught in the middle of a rewrite
            return 0

    deadline = time.monotonic() + 600
    while not checkpoints_registered():
        assert process.poll() is None, "the job ended before it could be killed: " + process.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return None


def shutdown_serve(seconds: float = 120) -> None:
    """Shut Serve down and wait until its controller is gone: with HAProxy, the controller is killed a while
    after ``serve.shutdown`` returns, and the next module's ``serve.start`` would find the dying one."""
    import ray
    from ray import serve

    serve.shutdown()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
        except ValueError:
            return
        time.sleep(0.5)
    raise TimeoutError(f"Serve's controller still runs {seconds:.0f} s after serve.shutdown()")


@pytest.fixture
def one_thread():
    """Torch on one thread: tiny models gain nothing from threads, and on a busy 2-core machine threads
    spin against each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def moto_server(log: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """moto's S3 server as a process of its own on a free loopback port: yields the process and its endpoint.

    A test that stops its server (SIGSTOP) starts one of its own with this: the session's stays up for the rest.
    """
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server",
                "-H",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {log.read_text()}") from None
                time.sleep(0.2)
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """Start moto's S3 server as a separate process and point boto3 and pyarrow at it.

    The AWS variables are set before any Ray instance starts: Ray's workers inherit them.
    """
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as (_, endpoint):
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
        )
        yield endpoint


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A fresh, empty bucket on the moto server; returns its name."""
    name = f"encore-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_local(s3_endpoint, tmp_path_factory):
    """One Ray instance for the whole session, started in-process on loopback.

    It depends on the S3 server so that workers inherit the AWS settings. ``address="local"``
    keeps it apart from a demo cluster started with ``ray start``; it is shut down, never stopped
    with ``ray stop`` (which would kill every cluster on the machine).
    """
    import ray

    from encore.core.runtime import use_haproxy_ingress

    os.environ.pop("RAY_ADDRESS", None)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keeps every Ray port on loopback
    # Ingest, training and the Serve replicas must pseudonymise with one key; workers inherit it.
    os.environ["ENCORE_ID_KEY"] = TEST_ID_KEY
    # Ray starts its workers at niceness 15: beside any other busy process they would get a few percent of
    # a core, and every test would wait on them. The suite's workers share the machine as equals.
    os.environ["RAY_worker_niceness"] = "0"
    # The ingress's body deadline (30 s in service), short enough for a test to wait it out.
    os.environ["ENCORE_BODY_TIMEOUT_S"] = str(BODY_TIMEOUT_S)
    # Workers import `jobs` and `serve_apps` from the repository, wherever pytest was started.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    use_haproxy_ingress()  # Serve's HTTP as in the demo and on Kubernetes
    # An ingress replica that stops stays open 30 s (capped by its 20 s shutdown budget) for load balancers
    # to let it go; HAProxy here takes a tenth of a second. 2 s keeps the suite's shutdowns short.
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "2"
    ray.init(
        address="local",
        # As the demo's node: the Serve application of test_end_to_end must leave a CPU for the 1-CPU
        # Tune trials and jobs its module runs beside it.
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def api_keys(tmp_path_factory) -> dict:
    """A key file for the Serve applications of the tests: ``file``, and a key per client by name:
    ``suite`` may do anything, the others are what the access tests try."""
    from encore.serving.access import SCOPES, create_key

    path = tmp_path_factory.mktemp("access") / "api_keys.json"
    keys = {
        "suite": create_key(path, "suite", SCOPES, rate="1000/second"),
        "listener-app": create_key(path, "listener-app", ["recommend"], rate="1000/second"),
        "audio-app": create_key(path, "audio-app", ["classify"], rate="1000/second"),
        "metered": create_key(path, "metered", ["recommend"], rate="3/minute"),
        "revoked": create_key(path, "revoked", ["recommend"], rate="1000/second"),
    }
    return {"file": str(path), **keys}
