"""Train a recommender on an ingested dataset, evaluate it and save it in the model store.

The model is fitted on the train split and scored on validation (the figure to select on), then
refitted on train + validation and scored on test; the refitted model is what is stored, with both
sets of metrics. The version's manifest records what a retrain needs to repeat the training
(``config``: the kind's params, the dataset's URI and version, its split, the search that chose the
params and the Ray Train workers, if any), so that ``encore.privacy.erasure`` can retrain a version on the
same dataset once a listener was removed from it. ``jobs.train`` is its command line.
"""

import logging
import time

import ray

from encore.core import fs
from encore.privacy.ids import id_key, key_fingerprint
from encore.recsys.bundle import RecommenderBundle, preprocessing
from encore.recsys.interactions import InteractionDataset
from encore.recsys.metrics import evaluate
from encore.recsys.models import fit_model, model_class
from encore.serving.versions import serving_store
from encore.store import runs
from encore.store.publish import save_trained

logger = logging.getLogger("encore.train")

#: The fits of a training, as ``fit_and_evaluate`` runs them: selection on train, the stored model on both.
FITS = (("train",), ("train", "validation"))


def run_name(workers: dict, splits: tuple[str, ...]) -> str:
    """The Ray Train run (a name under ``workers["storage_path"]``) of the fit on ``splits``."""
    return f"{workers['name']}-{'-'.join(splits)}"


def run_names(workers: dict) -> list[str]:
    """The Ray Train runs a training with ``workers`` makes, one per fit."""
    return [run_name(workers, splits) for splits in FITS]


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
            raise ValueError(f"only als trains on Ray Train workers, not {kind!r}; leave out --workers")
        from encore.recsys.models.als_train import fit_on_ray

        run = {**workers, "name": run_name(workers, splits)}
        return fit_on_ray(model_class(kind)(**params), user_items, **run)

    started = time.perf_counter()
    selection_model = fit(*FITS[0])
    validation = evaluate(selection_model, dataset.matrix("train"), dataset.matrix("validation"))
    final_model = fit(*FITS[1])
    test = evaluate(final_model, dataset.matrix("train", "validation"), dataset.matrix("test"))
    metrics = {"validation": validation, "test": test, "fit_and_evaluate_seconds": time.perf_counter() - started}
    return RecommenderBundle.from_dataset(final_model, dataset, *FITS[1]), metrics


def train(
    dataset_uri: str,
    kind: str,
    params: dict,
    store_uri: str,
    aliases: list[str],
    tuning: dict | None = None,
    workers: dict | None = None,
    extra_config: dict | None = None,
    reuse: bool = False,
) -> str:
    """Train on Ray and save; returns the version. Without ``workers`` the fits run as one Ray task, so
    they land where the cluster has room; with them, on a Ray Train worker group (ALS).

    ``tuning`` records the search that chose ``params``, if one did; ``extra_config`` is added to the
    recorded config (an erasure records there what it retrained and why). With ``reuse``, when the
    last of ``aliases`` already names a version of this kind trained on the same data with the same
    ``params``, no training happens: every alias points at that version, which is returned."""
    dataset_uri, store_uri = fs.absolute(dataset_uri), fs.absolute(store_uri)
    dataset = InteractionDataset.load(dataset_uri)
    key_print = key_fingerprint(id_key())
    if dataset.manifest["id_key_fingerprint"] != key_print:
        raise ValueError(
            f"{dataset_uri} was ingested under another ENCORE_ID_KEY; "
            "train and serve with the key the data was ingested with"
        )
    if reuse:
        store = serving_store(store_uri)
        found = store.trained_as(
            aliases[-1],
            kind=kind,
            data_fingerprint=dataset.manifest["fingerprint"],
            preprocessing=preprocessing(key_print),
            config={"params": params},
        )
        if found is not None:
            for alias in aliases:
                store.set_alias(alias, found.version)
            logger.info(
                "reusing %s: %s trained with these settings on the same data (%s); train again without reuse",
                found.version, aliases[-1], dataset.manifest["fingerprint"][:12],
            )  # fmt: skip
            return found.version
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
    version = save_trained(
        serving_store(store_uri),
        bundle,
        aliases,
        kind=kind,
        config={
            "params": params,
            "dataset": dataset_uri,
            "dataset_version": dataset.manifest["version"],
            "split": dataset.manifest["split"],
            "tuning": tuning,
            "workers": workers,
            **(extra_config or {}),
        },
        metrics=metrics,
        data_fingerprint=dataset.manifest["fingerprint"],
        preprocessing=preprocessing(key_print),
    )
    if workers is not None:
        # The checkpoints of both fits have served: gc removes them after their retention.
        for name in run_names(workers):
            runs.mark_saved(workers["storage_path"], name, version)
    return version
