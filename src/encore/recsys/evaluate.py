"""Recommenders side by side on the test split of an ingested dataset (``jobs.evaluate`` is the command line).

Each model given by kind is fitted on train + validation; each stored version is used as stored, after
a check that it was trained on this dataset. All are ranked over the whole catalogue for the test
users, excluding what they were fitted on: NDCG@10 with a bootstrap 95% interval over users,
Recall@20, Precision@10, MAP@10, coverage@10, NDCG@10 on cold-start items only (items with few
training interactions), and fit time.
"""

import json
import time

import ray

from encore.core import fs
from encore.recsys.bundle import RecommenderBundle
from encore.recsys.interactions import InteractionDataset
from encore.recsys.metrics import bootstrap_interval, cold_items, per_user_metrics, restrict_items
from encore.recsys.models import fit_model
from encore.store import ModelStore

COLUMNS = ("ndcg@10", "recall@20", "precision@10", "map@10", "coverage@10")


def parse_model_spec(spec: str) -> tuple[str, dict]:
    """``"kind"`` or ``"kind:{json params}"``."""
    kind, _, params = spec.partition(":")
    try:
        return kind, json.loads(params) if params else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"model {spec!r}: parameters are not valid JSON ({error})") from None


def score_model(name: str, model, fit_seconds: float | None, dataset: InteractionDataset, cold_max: int) -> dict:
    seen, test = dataset.matrix("train", "validation"), dataset.matrix("test")
    values, coverage = per_user_metrics(model, seen, test)
    row = {"model": name, "users": len(values["ndcg@10"]), "fit_seconds": fit_seconds}
    row.update({metric: float(values[metric].mean()) for metric in COLUMNS if metric in values})
    row.update(coverage)
    row["ndcg@10_ci95"] = bootstrap_interval(values["ndcg@10"])
    cold = cold_items(seen, cold_max)
    cold_test = restrict_items(test, cold)
    row["cold_items"] = int(len(cold))
    if cold_test.nnz:
        cold_values, _ = per_user_metrics(model, seen, cold_test, ks=(10,))
        row["cold_ndcg@10"] = float(cold_values["ndcg@10"].mean())
        row["cold_users"] = int(len(cold_values["ndcg@10"]))
    return row


def fit_and_score(kind: str, params: dict, dataset: InteractionDataset, cold_max: int) -> dict:
    started = time.perf_counter()
    model = fit_model(kind, params, dataset.matrix("train", "validation"), dataset.items)
    name = kind + (f" {json.dumps(params, sort_keys=True)}" if params else "")
    return score_model(name, model, time.perf_counter() - started, dataset, cold_max)


def load_and_score(store_uri: str, ref: str, dataset: InteractionDataset, cold_max: int) -> dict:
    loaded = ModelStore(store_uri).load(ref)
    if loaded.manifest.data_fingerprint != dataset.manifest["fingerprint"]:
        raise ValueError(
            f"{loaded.manifest.version} was trained on other data (fingerprint "
            f"{loaded.manifest.data_fingerprint[:12]}, this dataset {dataset.manifest['fingerprint'][:12]})"
        )
    bundle = RecommenderBundle.load(loaded.path, loaded.manifest.kind)
    return score_model(loaded.manifest.version, bundle.model, None, dataset, cold_max)


def markdown_table(rows: list[dict]) -> str:
    header = [
        "model",
        "NDCG@10 (95% CI)",
        "Recall@20",
        "Precision@10",
        "MAP@10",
        "Coverage@10",
        "cold NDCG@10",
        "fit s",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        low, high = row["ndcg@10_ci95"]
        cells = [
            row["model"],
            f"{row['ndcg@10']:.4f} ({low:.4f}–{high:.4f})",
            f"{row['recall@20']:.4f}",
            f"{row['precision@10']:.4f}",
            f"{row['map@10']:.4f}",
            f"{row['coverage@10']:.4f}",
            f"{row['cold_ndcg@10']:.4f}" if "cold_ndcg@10" in row else "–",
            f"{row['fit_seconds']:.1f}" if row["fit_seconds"] is not None else "stored",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate_all(dataset_uri: str, models: list[str], versions: list[str], store_uri: str, cold_max: int) -> list[dict]:
    """One Ray task per model, so models are fitted in parallel across the cluster."""
    dataset = InteractionDataset.load(fs.absolute(dataset_uri))
    dataset_ref = ray.put(dataset)
    tasks = [ray.remote(fit_and_score).remote(*parse_model_spec(spec), dataset_ref, cold_max) for spec in models]
    tasks += [ray.remote(load_and_score).remote(fs.absolute(store_uri), ref, dataset_ref, cold_max) for ref in versions]
    return sorted(ray.get(tasks), key=lambda row: -row["ndcg@10"])
