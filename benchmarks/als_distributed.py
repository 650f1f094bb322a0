"""Wall time of ALS on Ray Train workers against the same fit in one process.

The same ALS (same factors, seed and sweeps) is fitted in-process with torch on ``--threads``
threads, then with ``fit_on_ray`` on 1 and 2 Ray Train workers (one CPU and one torch thread each,
Ray Train's default) on a local Ray instance, reporting every sweep and only the last. Each way
is timed twice, with one sweep and with ``--iterations``: the difference gives the time per sweep,
and what the one-sweep fit took beyond one sweep is the start-up cost (worker group, shipping the
matrix). The factors of every distributed fit are compared with the in-process ones. One run, one
table.

    python -m benchmarks.als_distributed [--dataset synthetic|lastfm] [--factors 64] [--iterations 10]
"""

import argparse
import itertools
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np
import ray
import torch
from threadpoolctl import threadpool_limits

from benchmarks.als_speed import lastfm, synthetic
from encore.recsys.models.als import ALS
from encore.recsys.models.als_train import fit_on_ray


def timed(fit: Callable[[int], ALS], iterations: int) -> tuple[ALS, float, float, float]:
    """The fit with all sweeps, its wall seconds, seconds per sweep, and start-up seconds."""
    started = time.perf_counter()
    fit(1)
    one_sweep = time.perf_counter() - started
    started = time.perf_counter()
    model = fit(iterations)
    wall = time.perf_counter() - started
    sweep = (wall - one_sweep) / (iterations - 1)
    return model, wall, sweep, one_sweep - sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["synthetic", "lastfm"], default="synthetic")
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the in-process fit")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    if args.iterations < 2:
        parser.error("--iterations must be at least 2")
    matrix = lastfm() if args.dataset == "lastfm" else synthetic()
    params = {"factors": args.factors, "regularization": 0.01, "random_state": 0}
    print(f"{args.dataset}: {matrix.shape[0]:,} x {matrix.shape[1]:,}, {matrix.nnz:,} interactions, {params}")

    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        ALS(**params, iterations=1).fit(matrix)  # warm-up: thread pools, first touches
        reference, *times = timed(lambda iterations: ALS(**params, iterations=iterations).fit(matrix), args.iterations)
    rows = [("in-process", f"1 process, {args.threads} threads", *times, 0.0)]

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keeps Ray on loopback
    ray.init(address="local", num_cpus=max(args.workers), include_dashboard=False, _node_ip_address="127.0.0.1")
    with tempfile.TemporaryDirectory() as storage:
        for workers, checkpoint_every in itertools.product(args.workers, (1, args.iterations)):

            def fit(iterations: int, workers: int = workers, checkpoint_every: int = checkpoint_every) -> ALS:
                model = ALS(**params, iterations=iterations)
                name = f"bench-{workers}-{checkpoint_every}-{iterations}"
                return fit_on_ray(model, matrix, workers, storage, name, checkpoint_every=checkpoint_every)

            model, *times = timed(fit, args.iterations)
            difference = float(np.abs(model.item_factors_ - reference.item_factors_).max())
            checkpoints = "every sweep" if checkpoint_every == 1 else "the last sweep only"
            rows.append(
                (
                    f"Ray Train, report and checkpoint after {checkpoints}",
                    f"{workers}, 1 thread each",
                    *times,
                    difference,
                )
            )
            print(f"  {rows[-1][0]}, {workers} worker(s): {times[0]:.1f} s", flush=True)
    ray.shutdown()

    in_process_wall = rows[0][2]
    print(f"\n| fit | workers | wall s ({args.iterations} sweeps) | s per sweep | start-up s | wall / in-process "
          "| max abs factor difference |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    for fit_name, workers, wall, sweep, start_up, difference in rows:
        print(f"| {fit_name} | {workers} | {wall:.2f} | {sweep:.3f} | {start_up:.2f} | {wall / in_process_wall:.2f}x "
              f"| {difference:.1e} |")  # fmt: skip


if __name__ == "__main__":
    main()
