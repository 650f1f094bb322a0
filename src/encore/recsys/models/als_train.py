"""ALS on a Ray Train worker group: each worker owns a slice of the users and of the items.

Every half-step, each worker runs the conjugate-gradient update of ``encore.recsys.models.als`` on the rows
it owns, then the slices are exchanged with ``torch.distributed`` broadcasts (gloo on CPU, NCCL on
GPU) so every worker holds the full factors for the next half-step. The rows are independent
systems and every worker starts from the same seeded factors, so N workers compute what one does.
Every ``checkpoint_every`` sweeps (default: each) are reported with a checkpoint of the factors; a run
restarted under the same name and storage (a killed job resubmitted, or a worker group restarted
after a failure) resumes from the last one, and computes what an uninterrupted run does from any point
where it was killed: a checkpoint holds the whole state of the sweeps it follows.

    model = fit_on_ray(ALS(factors=128), user_items, num_workers=2, storage_path="/abs/runs", name="als-1")
"""

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import scipy.sparse as sp
import torch
import torch.distributed as dist
from ray import train
from ray.train.torch import TorchConfig, TorchTrainer

from encore.core import fs
from encore.recsys.models.als import ALS, _Interactions, _least_squares_cg
from encore.recsys.models.base import check_interactions
from encore.store import runs

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "factors.npz"
RUN_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's registered checkpoints


def _slices(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return list(zip(bounds[:-1], bounds[1:]))


def _exchange(factors: torch.Tensor, slices: list[tuple[int, int]]) -> None:
    """Give every worker every slice: worker r broadcasts the rows it solved."""
    for rank, (start, end) in enumerate(slices):
        if end > start:
            dist.broadcast(factors[start:end], src=rank)


def _train_loop(config: dict) -> None:
    context = train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    model = ALS(**config["params"])
    device = torch.device("cuda", torch.cuda.current_device()) if config["use_gpu"] else torch.device("cpu")
    excess = model._excess_matrix(ray.get(config["user_items"]))
    n_users, n_items = excess.shape
    user_slices, item_slices = _slices(n_users, world), _slices(n_items, world)
    (u0, u1), (i0, i1) = user_slices[rank], item_slices[rank]
    my_users = _Interactions(excess[u0:u1], model.factors, device)
    my_items = _Interactions(excess.T.tocsr()[i0:i1], model.factors, device)
    user_penalty, item_penalty = (torch.from_numpy(penalty).to(device) for penalty in model._penalties(excess))
    users, items = (factors.to(device) for factors in model._initial_factors(n_users, n_items))

    first = 0
    checkpoint = train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder, np.load(Path(folder) / CHECKPOINT_FILE) as saved:
            users.copy_(torch.from_numpy(saved["users"]))
            items.copy_(torch.from_numpy(saved["items"]))
            first = int(saved["iteration"]) + 1
        logger.info("resumed from the checkpoint of iteration %d", first - 1)

    for iteration in range(first, model.iterations):
        started = time.perf_counter()
        _least_squares_cg(my_users, users[u0:u1], items, user_penalty[u0:u1], model.cg_steps)
        _exchange(users, user_slices)
        _least_squares_cg(my_items, items[i0:i1], users, item_penalty[i0:i1], model.cg_steps)
        _exchange(items, item_slices)
        metrics = {"iteration": iteration, "resumed_from": first - 1, "sweep_seconds": time.perf_counter() - started}
        # Every worker must report at the same sweeps: a report is a barrier of the whole group.
        if iteration < model.iterations - 1 and (iteration + 1) % config["checkpoint_every"]:
            continue
        if rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                np.savez(Path(folder) / CHECKPOINT_FILE, users=users.cpu().numpy(), items=items.cpu().numpy(),
                         iteration=iteration)  # fmt: skip
                train.report(metrics, checkpoint=train.Checkpoint.from_directory(folder))
        else:
            train.report(metrics)


def _set_aside_torn_snapshot(run_uri: str) -> None:
    """Set aside a run's checkpoint record that a kill tore while Ray Train rewrote it.

    Ray Train rewrites the record in place after every checkpoint; on a local disk a kill in the middle
    leaves it empty or cut short, and Ray then refuses to start the run at all. Without the record the
    run starts over from its first sweep, which computes what the interrupted run would have.
    """
    snapshot = fs.join(run_uri, RUN_SNAPSHOT_FILE)
    if not fs.exists(snapshot):
        return
    try:
        json.loads(fs.read_bytes(snapshot))
        return
    except ValueError:  # UnicodeDecodeError included
        pass
    filesystem, path = fs.resolve(snapshot)
    filesystem.move(path, f"{path}.torn")
    logger.warning("%s was cut short by a kill; set it aside as %s.torn: the run starts over", snapshot, snapshot)


def fit_on_ray(
    model: ALS,
    user_items: sp.csr_matrix,
    num_workers: int,
    storage_path: str,
    name: str,
    use_gpu: bool = False,
    max_failures: int = 2,
    checkpoint_every: int = 1,
) -> ALS:
    """Fit ``model`` on ``num_workers`` Ray Train workers and return it fitted, as ``model.fit`` would.

    ``storage_path`` (an absolute path or ``s3://`` URI) and ``name`` identify the run: running again
    with the same pair resumes from its last checkpoint instead of starting over (and makes the run
    unfinished again for ``encore.store.runs``: the job marks it finished once it saved the model). The
    workers report, with a checkpoint, every ``checkpoint_every`` sweeps and after the last: a report of
    the group costs more than a sweep of a large matrix (``benchmarks/RESULTS.md``, "ALS on Ray Train
    workers"), and a resumed run repeats at most ``checkpoint_every - 1`` sweeps.
    """
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be at least 1, not {checkpoint_every}")
    params = {**model.get_params(), "device": "cuda" if use_gpu else "cpu"}
    user_items = check_interactions(user_items)
    runs.check_run_name(name)
    _set_aside_torn_snapshot(fs.join(storage_path, name))
    runs.mark_started(storage_path, name)
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={
            "params": params,
            "user_items": ray.put(user_items),
            "use_gpu": use_gpu,
            "checkpoint_every": checkpoint_every,
        },  # fmt: skip
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=train.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=train.FailureConfig(max_failures=max_failures),
            checkpoint_config=train.CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder, np.load(Path(folder) / CHECKPOINT_FILE) as saved:
        model.user_factors_, model.item_factors_ = saved["users"], saved["items"]
    model._excess_matrix(user_items)  # the learned state beside the factors
    model.index_items()
    resumed_from = result.metrics["resumed_from"]
    logger.info(
        "fitted ALS on %d workers in sweeps of %.2f s (run %s in %s%s)", num_workers,
        result.metrics["sweep_seconds"], name, storage_path,
        f", resumed from the checkpoint of iteration {resumed_from}" if resumed_from >= 0 else "",
    )  # fmt: skip
    return model
