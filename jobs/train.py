"""Train a recommender on an ingested dataset, evaluate it and save it in the model store.

The model is fitted on the train split and scored on validation (the figure to select on),
then refitted on train + validation and scored on test; the refitted model is what is stored,
with both sets of metrics and the config a retrain repeats (``encore.recsys.train``).

    python -m jobs.train --dataset artifacts/datasets/lastfm --model popularity --store artifacts
"""

import argparse
import json
import time

from encore.core import fs
from encore.core.cli import user_errors
from encore.core.runtime import init_ray, setup_logging
from encore.recsys.models import MODELS
from encore.recsys.train import train
from encore.store import DEFAULT_STORE_URI, runs


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="ingested dataset folder or s3:// prefix")
    parser.add_argument("--model", default="popularity", choices=sorted(MODELS))
    parser.add_argument("--params", default="{}", help='model hyperparameters as JSON, e.g. \'{"by": "weight"}\'')
    parser.add_argument("--store", default=DEFAULT_STORE_URI, help="model store folder or s3:// prefix")
    parser.add_argument(
        "--alias", action="append", default=None, help="aliases to move to the new version (default: latest)"
    )
    parser.add_argument("--workers", type=int, default=0, help="fit ALS on this many Ray Train workers (0: one task)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per Ray Train worker (NCCL)")
    parser.add_argument(
        "--run-name", default=None, help="Ray Train run name; submitting again with the same name resumes it"
    )
    parser.add_argument("--train-storage", default=None, help="Ray Train checkpoints (default: STORE/ray-train)")
    parser.add_argument("--checkpoint-every", type=int, default=1, help="sweeps between Ray Train checkpoints")
    args = parser.parse_args(argv)
    if args.run_name is not None:
        try:
            runs.check_run_name(args.run_name)
        except ValueError as error:
            parser.error(str(error))
    setup_logging()
    init_ray()
    workers = None
    if args.workers:
        workers = {
            "num_workers": args.workers,
            "use_gpu": args.gpu,
            "name": args.run_name or f"{args.model}-{time.strftime('%Y%m%dT%H%M%S')}",
            "storage_path": fs.absolute(args.train_storage or fs.join(fs.absolute(args.store), "ray-train")),
            "checkpoint_every": args.checkpoint_every,
        }
    with user_errors():
        return train(
            args.dataset, args.model, json.loads(args.params), args.store, args.alias or ["latest"], workers=workers
        )


if __name__ == "__main__":
    main()
