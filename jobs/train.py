"""Train a recommender on an ingested dataset, evaluate it and save it in the model store.

The model is fitted on the train split and scored on validation (the figure to select on),
then refitted on train + validation and scored on test; the refitted model is what is stored,
with both sets of metrics.

    python -m jobs.train --dataset artifacts/datasets/lastfm --model popularity --store artifacts
"""

import argparse
import json
import logging
import tempfile
import time

import ray

from encore import fs
from encore.ids import id_key, key_fingerprint
from encore.interactions import InteractionDataset
from encore.metrics import evaluate
from encore.models import MODELS, fit_model, model_class
from encore.runtime import init_ray, setup_logging, user_errors
from encore.serving import RecommenderBundle, preprocessing, serving_store
from encore.store import runs

logger = logging.getLogger("encore.train")


FIT_SPLITS = (("train",), ("train", "validation"))  # the fits of fit_and_evaluate: selection, then final


def run_name(workers: dict, splits: tuple[str, ...]) -> str:
    """The Ray Train run of the fit on ``splits``: one per fit, so each resumes on its own."""
    return f"{workers['name']}-{'-'.join(splits)}"


def fit_and_evaluate(
    kind: str, params: dict, dataset: InteractionDataset, workers: dict | None = None
) -> tuple[RecommenderBundle, dict]:
    """The model refitted on train + validation, and its validation and test metrics.

    With ``workers`` (``num_workers``, ``storage_path``, ``name``, ``use_gpu``), each fit runs on a Ray
    Train worker group, as a run that resumes from its last checkpoint if it was interrupted.
    """

    def fit(*splits: str):
        user_items = dataset.matrix(*splits)
        if workers is None:
            return fit_model(kind, params, user_items, dataset.items)
        if kind != "als":
            raise SystemExit(f"error: only als trains on Ray Train workers, not {kind!r}; leave out --workers")
        from encore.models.als_train import fit_on_ray

        run = {**workers, "name": run_name(workers, splits)}
        return fit_on_ray(model_class(kind)(**params), user_items, **run)

    started = time.perf_counter()
    selection_model = fit(*FIT_SPLITS[0])
    validation = evaluate(selection_model, dataset.matrix("train"), dataset.matrix("validation"))
    final_model = fit(*FIT_SPLITS[1])
    test = evaluate(final_model, dataset.matrix("train", "validation"), dataset.matrix("test"))
    metrics = {"validation": validation, "test": test, "fit_and_evaluate_seconds": time.perf_counter() - started}
    return RecommenderBundle.from_dataset(final_model, dataset, "train", "validation"), metrics


def train(
    dataset_uri: str,
    kind: str,
    params: dict,
    store_uri: str,
    aliases: list[str],
    tuning: dict | None = None,
    workers: dict | None = None,
) -> str:
    """Train on Ray and save; returns the version. Without ``workers`` the fits run as one Ray task, so
    they land where the cluster has room; with them, on a Ray Train worker group (ALS).

    ``tuning`` records the search that chose ``params``, if one did."""
    dataset_uri, store_uri = fs.absolute(dataset_uri), fs.absolute(store_uri)
    dataset = InteractionDataset.load(dataset_uri)
    key_print = key_fingerprint(id_key())
    if dataset.manifest["id_key_fingerprint"] != key_print:
        raise SystemExit(
            f"error: {dataset_uri} was ingested under another ENCORE_ID_KEY; "
            "train and serve with the key the data was ingested with"
        )
    logger.info(
        "training %s %s on %s (%d users, %d items)", kind, params, dataset_uri, dataset.n_users, dataset.n_items
    )
    if workers is None:
        bundle, metrics = ray.get(ray.remote(fit_and_evaluate).remote(kind, params, dataset))
    else:
        bundle, metrics = fit_and_evaluate(kind, params, dataset, workers)
    for split in ("validation", "test"):
        logger.info(
            "%s: %s",
            split,
            ", ".join(
                f"{name} {value:.4f}"
                for name, value in metrics[split].items()
                if name.startswith(("ndcg@10", "recall@20", "precision@10", "map@10"))
            ),
        )
    with tempfile.TemporaryDirectory() as folder:
        bundle.save(folder)
        manifest = serving_store(store_uri).save(
            folder,
            kind=kind,
            config={
                "params": params,
                "dataset": dataset_uri,
                "split": dataset.manifest["split"],
                "tuning": tuning,
                "workers": workers,
            },
            metrics=metrics,
            data_fingerprint=dataset.manifest["fingerprint"],
            preprocessing=preprocessing(key_print),
            aliases=aliases,
        )
    logger.info("saved %s to %s (aliases: %s)", manifest.version, store_uri, ", ".join(aliases))
    if workers is not None:
        # The checkpoints of both fits have served: gc removes them after their retention.
        for splits in FIT_SPLITS:
            runs.mark_saved(workers["storage_path"], run_name(workers, splits), manifest.version)
    return manifest.version


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="ingested dataset folder or s3:// prefix")
    parser.add_argument("--model", default="popularity", choices=sorted(MODELS))
    parser.add_argument("--params", default="{}", help='model hyperparameters as JSON, e.g. \'{"by": "weight"}\'')
    parser.add_argument("--store", default="./artifacts", help="model store folder or s3:// prefix")
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
