"""Erase a listener: their rows leave every dataset, every model version and Ray Train run that holds them.

A listener is known to Encore only by their pseudonymised key (``encore.privacy.ids``). ``erase(user_key, ...)``:

1. **Datasets** (those given and those the store's recommender versions were trained on): a dataset that
   holds the key gets a new version without the listener's interactions, user row and rejects, built as
   the ingest builds one (``InteractionDataset.build``: the split of every other listener is unchanged, as
   it depends on their own pairs and the seed only), and every other version of it is deleted, the
   previous one included (an ingest keeps that one for readers; an erasure may not).
2. **Model versions**: every recommender version whose user map (``users.parquet``) holds the key. One an
   alias names is replaced first, then the aliases move to the replacement (through the serving admission
   check): by exact removal where the model allows it (:func:`remove_user`), else by a retrain that repeats
   the recorded training (kind, params, search, Ray Train workers) on the erased dataset
   (``encore.recsys.train``). Then every version that holds the key is deleted, and every alias's history
   forgets it, so a rollback never lands on it. Other kinds (genre, sound-alike, composer) are trained on
   audio and music, never on listening data, and are not searched.
3. **Ray Train checkpoints**: the runs of every deleted version (its ``config.workers``), and every run of
   ALS factors that no remaining version names (whose data cannot be told, so may be the listener's).
4. **Verification**: every file under the store, the datasets and the checkpoint storages is searched for
   the key (Parquet decoded too); the erasure fails if one still holds it.

It returns a report of what was found and removed: the pseudonymised key, never a raw id. The report is
personal data itself (it names the key), so it is written outside the store, datasets and checkpoints.
"""

import io
import json
import logging
import re
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import scipy.sparse as sp

from encore.core import fs
from encore.core.errors import EncoreError
from encore.recsys.bundle import RecommenderBundle
from encore.recsys.interactions import (
    MANIFEST_FILE,
    TABLES,
    VERSIONS_FOLDER,
    InteractionDataset,
    SplitConfig,
)
from encore.recsys.models import MODELS, Blend, ContentBased, Hybrid, Popularity, Recommender
from encore.recsys.models.als_train import CHECKPOINT_FILE
from encore.recsys.train import run_names
from encore.serving.versions import serving_store
from encore.store import Manifest, ModelStore

logger = logging.getLogger("encore.privacy.erasure")

USER_KEY = re.compile(r"[0-9a-f]{32}")
REJECTS_FILE = "rejects.csv"
DEFAULT_CHECKPOINTS = "ray-train"  # jobs' default Ray Train storage, under the store
# What infra/s3/bucket.yaml sets by default; the report reads the bucket's own rule where it may.
DEFAULT_NONCURRENT_DAYS = 30

EXACT = {
    "popularity": (
        "an item's score is a sum over listeners of one term per listener (1 if they played it, or their "
        "weight): subtracting the listener's terms and dropping their row of the kept matrix leaves what a fit "
        "without them computes (integer sums, as play counts are, are exact in floating point)"
    ),
    "content": (
        "item features come from the catalogue alone and each listener's profile from their own row only: "
        "dropping their row of the kept matrix and of the profiles leaves what a fit without them computes"
    ),
    "hybrid": (
        "its parts are removable exactly (see them) and its per-item listener counts are sums of one term per "
        "listener, from which the listener's is subtracted"
    ),
    "blend": "every part is removable exactly (see them); the blend weights are settings, not learned",
}
RETRAIN = {
    "als": "item factors are solved from every listener's interactions, the listener's included",
    "ease": "the item-item weights are a closed-form regression over every listener's rows",
    "item_knn": "item similarities are computed over every listener's interactions",
    "user_knn": "similarities and weighting depend on the whole matrix, not the listener's row only",
    "rp3beta": "item-item walk probabilities and popularity pass through every listener",
}


class ErasureError(EncoreError):
    """The erasure cannot be carried out as asked (and says why); nothing unsafe was left half done."""


def check_user_key(user_key: str) -> str:
    if not isinstance(user_key, str) or not USER_KEY.fullmatch(user_key):
        raise ErasureError("a user key is 32 lowercase hex characters, as encore.privacy.ids.pseudonymize gives")
    return user_key


# ---- exact removal from a fitted model -----------------------------------------------------------------


def _submodels(model: Recommender) -> list[Recommender]:
    return [value for name, value in vars(model).items() if name.endswith("_") and isinstance(value, Recommender)]


def exactly_removable(model: Recommender) -> bool:
    """Whether :func:`remove_user` can take a listener out of ``model`` as a fit without them would be."""
    if isinstance(model, Popularity | ContentBased):
        return True
    if isinstance(model, Hybrid | Blend):
        return all(exactly_removable(part) for part in _submodels(model))
    return False


def _without_row(matrix, row: int):
    keep = np.ones(matrix.shape[0], dtype=bool)
    keep[row] = False
    return sp.csr_matrix(matrix)[keep] if sp.issparse(matrix) else np.asarray(matrix)[keep]


def remove_user(model: Recommender, row: int) -> None:
    """Take the listener of row ``row`` out of a fitted ``model`` in place, rows after it moving up by one.

    Only for a model :func:`exactly_removable` accepts (ValueError otherwise): the result equals the model
    fitted on its training matrix without that row (``EXACT`` says why, kind by kind).
    """
    if not exactly_removable(model):
        raise ValueError(f"a {model.kind} model cannot drop a listener without a retrain: {RETRAIN.get(model.kind)}")
    played = sp.csr_matrix(model.user_items_[row])
    if isinstance(model, Popularity):
        counted = played if model.by == "weight" else (played > 0)
        model.item_scores_ = model.item_scores_ - np.asarray(counted.toarray(), dtype=np.float64).ravel()
    elif isinstance(model, ContentBased):
        model.user_profiles_ = _without_row(model.user_profiles_, row)
    elif isinstance(model, Hybrid):
        model.listeners_ = model.listeners_ - np.asarray((played > 0).toarray(), dtype=np.float64).ravel()
    for part in _submodels(model):
        remove_user(part, row)
    model.user_items_ = _without_row(model.user_items_, row)


def remove_from_bundle(bundle: RecommenderBundle, user_key: str) -> RecommenderBundle:
    """The bundle without the listener: model rows, user map (renumbered) and item popularity."""
    row = bundle.user_index(user_key)
    if row is None:
        return bundle
    played = np.asarray((sp.csr_matrix(bundle.model.user_items_[row]) > 0).toarray()).ravel()
    remove_user(bundle.model, row)
    users = bundle.users[bundle.users["user_key"] != user_key].copy()
    users["user_idx"] = np.where(users["user_idx"] > row, users["user_idx"] - 1, users["user_idx"]).astype(
        bundle.users["user_idx"].dtype
    )
    items = bundle.items.copy()
    by_index = items["item_idx"].to_numpy()
    items["popularity"] = items["popularity"].to_numpy() - played[by_index].astype(items["popularity"].dtype)
    return RecommenderBundle(bundle.model, users.reset_index(drop=True), items)


# ---- datasets -------------------------------------------------------------------------------------------


def _dataset_folder(uri: str, version: str) -> str:
    return fs.join(uri, VERSIONS_FOLDER, version)


def _attachments(uri: str, manifest: dict) -> dict[str, bytes]:
    folder = _dataset_folder(uri, manifest["version"])
    tables = {f"{name}.parquet" for name in TABLES}
    return {name: fs.read_bytes(fs.join(folder, name)) for name in manifest["files"] if name not in tables}


def _pairs(dataset: InteractionDataset) -> pd.DataFrame:
    """The merged (user, item, weight, timestamp) pairs the dataset was built from."""
    rows = dataset.interactions
    return pd.DataFrame(
        {
            "user": dataset.users.set_index("user_idx")["user_key"].reindex(rows["user_idx"]).to_numpy(dtype=str),
            "item": dataset.items.set_index("item_idx")["item_id"].reindex(rows["item_idx"]).to_numpy(dtype=str),
            "weight": rows["weight"].to_numpy(np.float64),
            "timestamp": rows["timestamp"].to_numpy(np.float64),
        }
    )


def _found_in_dataset(uri: str, user_key: str) -> dict:
    dataset = InteractionDataset.load(uri)
    users = dataset.users[dataset.users["user_key"] == user_key]
    interactions = int(dataset.interactions["user_idx"].isin(users["user_idx"]).sum())
    attachments = _attachments(uri, dataset.manifest)
    rejects = 0
    if REJECTS_FILE in attachments:
        table = pd.read_csv(io.BytesIO(attachments[REJECTS_FILE]), dtype=str, keep_default_na=False)
        rejects = int((table.get("user_key", pd.Series(dtype=str)) == user_key).sum())
    unknown = sorted(name for name, data in attachments.items() if name != REJECTS_FILE and user_key.encode() in data)
    if unknown:
        raise ErasureError(f"{uri}: {', '.join(unknown)} of version {dataset.manifest['version']} hold the key "
                           "and are no files an erasure knows how to rewrite")  # fmt: skip
    return {
        "dataset": dataset,
        "attachments": attachments,
        "users": len(users),
        "interactions": interactions,
        "rejects": rejects,
    }


def _delete_other_versions(uri: str, keep: str) -> list[str]:
    filesystem, path = fs.resolve(uri)
    selector = pafs.FileSelector(f"{path}/{VERSIONS_FOLDER}", allow_not_found=True)
    deleted = []
    for entry in filesystem.get_file_info(selector):
        if entry.base_name != keep:
            if entry.type == pafs.FileType.Directory:
                filesystem.delete_dir(entry.path)
            else:
                filesystem.delete_file(entry.path)
            deleted.append(entry.base_name)
    return sorted(deleted)


def erase_from_dataset(uri: str, user_key: str, found: dict) -> dict:
    """Publish a version of the dataset at ``uri`` without the listener and delete every other version."""
    dataset: InteractionDataset = found["dataset"]
    old = dataset.manifest
    config = SplitConfig(**old["split"])
    pairs = _pairs(dataset)
    kept = pairs[pairs["user"] != user_key].reset_index(drop=True)
    catalogue = dataset.items.drop(columns=["item_idx"])
    carried = {
        name: value
        for name, value in old.items()
        if name not in ("schema", "fingerprint", "split", "counts", "version", "files")
    }
    erasures = [*old.get("erasures", []), {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "users": found["users"], "interactions": found["interactions"], "rejects": found["rejects"],
    }]  # fmt: skip
    rebuilt = InteractionDataset.build(kept, catalogue, config, {**carried, "erasures": erasures})
    _check_others_unchanged(dataset, rebuilt, user_key)
    attachments = dict(found["attachments"])
    if REJECTS_FILE in attachments:
        table = pd.read_csv(io.BytesIO(attachments[REJECTS_FILE]), dtype=str, keep_default_na=False)
        if "user_key" in table:
            table = table[table["user_key"] != user_key]
        attachments[REJECTS_FILE] = table.to_csv(index=False).encode()
    folder = rebuilt.save(uri, attachments=attachments)
    version = folder.rstrip("/").rsplit("/", 1)[-1]
    deleted = _delete_other_versions(uri, version)
    logger.info("%s: published version %s without the listener; deleted versions %s", uri, version, deleted)
    return {
        "uri": uri,
        "found": {name: found[name] for name in ("users", "interactions", "rejects")},
        "old_version": old["version"],
        "new_version": version,
        "old_fingerprint": old["fingerprint"],
        "new_fingerprint": rebuilt.manifest["fingerprint"],
        "versions_deleted": deleted,
        "sources": old.get("sources", []),
    }


def _check_others_unchanged(before: InteractionDataset, after: InteractionDataset, user_key: str) -> None:
    """Every other listener keeps their interactions and split, every item its id: or the erasure stops."""
    columns = ["user", "item", "weight", "timestamp", "split"]

    def table(dataset: InteractionDataset) -> pd.DataFrame:
        pairs = _pairs(dataset).assign(split=dataset.interactions["split"].to_numpy())
        return pairs[pairs["user"] != user_key][columns].sort_values(["user", "item"]).reset_index(drop=True)

    if not table(before).equals(table(after)) or not before.items["item_id"].equals(after.items["item_id"]):
        raise ErasureError("rebuilding the dataset without the listener changed other listeners' rows")


# ---- the store, checkpoints, and searching ---------------------------------------------------------------


def _holds(store: ModelStore, manifest: Manifest, user_key: str) -> bool:
    loaded = store.load(manifest.version)
    users = pq.read_table(loaded.path / "users.parquet", columns=["user_key"]).column("user_key").to_pylist()
    return user_key in users


def _runs_of(manifest: Manifest) -> list[tuple[str, str]]:
    """(storage, run name) of the Ray Train runs a version's config names."""
    config = manifest.config if isinstance(manifest.config, dict) else {}
    workers = config.get("workers")
    runs = []
    if isinstance(workers, dict) and isinstance(workers.get("name"), str) and workers.get("storage_path"):
        runs += [(fs.absolute(workers["storage_path"]), name) for name in run_names(workers)]
    if isinstance(config.get("run"), str):  # composers record their run by name only
        runs.append(("", config["run"]))
    return runs


def _children(uri: str) -> list[pafs.FileInfo]:
    filesystem, path = fs.resolve(uri)
    return filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))


def _has_als_factors(run_uri: str) -> bool:
    return any(
        entry.type == pafs.FileType.Directory
        and entry.base_name.startswith("checkpoint_")
        and fs.exists(fs.join(run_uri, entry.base_name, CHECKPOINT_FILE))
        for entry in _children(run_uri)
    )


def _delete_tree(uri: str) -> None:
    filesystem, path = fs.resolve(uri)
    filesystem.delete_dir(path)


def search(roots: Iterable[str], user_key: str) -> dict:
    """Every file under ``roots`` that holds ``user_key``: its bytes, and for Parquet its decoded values."""
    needle = user_key.encode()
    searched, found = 0, []
    for root in sorted(set(roots)):
        if not fs.exists(root):
            continue
        filesystem, path = fs.resolve(root)
        selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
        for entry in filesystem.get_file_info(selector):
            if entry.type != pafs.FileType.File:
                continue
            searched += 1
            uri = ("s3://" if fs.is_s3(root) else "") + entry.path
            data = fs.read_bytes(uri)
            hit = needle in data
            if not hit and entry.path.endswith(".parquet"):
                try:
                    hit = user_key in json.dumps(pq.read_table(io.BytesIO(data)).to_pylist(), default=str)
                except Exception:  # not readable as Parquet: its bytes were searched
                    pass
            if hit:
                found.append(uri)
    return {"files_searched": searched, "found": found}


def _inside(uri: str, roots: Iterable[str]) -> bool:
    uri = fs.absolute(uri)
    return any(uri == root or uri.startswith(root.rstrip("/") + "/") for root in roots)


def _noncurrent_days(store_uri: str) -> dict:
    """How long the bucket keeps deleted objects as noncurrent versions: its lifecycle rule if it may be read."""
    if not fs.is_s3(store_uri):
        return {"storage": "local", "note": "a local store keeps no versions: deleted files are gone"}
    bucket = store_uri.removeprefix("s3://").split("/", 1)[0]
    stated = {
        "storage": "s3",
        "bucket": bucket,
        "noncurrent_days": DEFAULT_NONCURRENT_DAYS,
        "source": "infra/s3/bucket.yaml default",
    }
    try:
        import boto3

        rules = boto3.client("s3").get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        days = [
            rule["NoncurrentVersionExpiration"]["NoncurrentDays"]
            for rule in rules
            if rule.get("Status") == "Enabled" and "NoncurrentVersionExpiration" in rule
        ]
        if days:
            return {**stated, "noncurrent_days": max(days), "source": "the bucket's lifecycle configuration"}
        return {**stated, "noncurrent_days": None, "source": "the bucket has no noncurrent-version expiration rule"}
    except Exception:  # no permission to read it, or no lifecycle: say what infra/ sets
        return stated


# ---- the erasure ----------------------------------------------------------------------------------------


def erase(
    user_key: str,
    store_uri: str,
    datasets: Iterable[str] = (),
    checkpoints: Iterable[str] = (),
    *,
    expected_key_fingerprint: str | None = None,
    report_uri: str | None = None,
    dry_run: bool = False,
    verify: bool = True,
) -> dict:
    """Erase the listener ``user_key`` (pseudonymised) from the store at ``store_uri``, the ``datasets`` given
    and those its versions name, and the Ray Train ``checkpoints`` storages (default ``STORE/ray-train``
    and those versions name); returns the report, also written to ``report_uri`` if given.

    ``expected_key_fingerprint`` (when the key was made here from a raw id) refuses datasets and versions
    pseudonymised under another key, where the key could never be found. ``dry_run`` finds and plans only.

    Raises ErasureError when a version an alias names cannot be replaced, a report location would hold the
    key inside what is erased, or the verification still finds the key.
    """
    check_user_key(user_key)
    started = time.perf_counter()
    store_uri = fs.absolute(store_uri)
    store = serving_store(store_uri)
    manifests = store.list()
    recommenders = [manifest for manifest in manifests if manifest.kind in MODELS]
    dataset_uris = {fs.absolute(uri) for uri in datasets}
    dataset_uris |= {fs.absolute(m.config["dataset"]) for m in recommenders if isinstance(m.config.get("dataset"), str)}
    storages = {fs.join(store_uri, DEFAULT_CHECKPOINTS), *(fs.absolute(uri) for uri in checkpoints)}
    storages |= {storage for manifest in manifests for storage, _ in _runs_of(manifest) if storage}
    roots = {store_uri, *dataset_uris, *storages}
    if report_uri is not None and _inside(report_uri, roots):
        raise ErasureError(
            "the report names the listener's key: write it outside the store, the datasets and the checkpoints"
        )
    report: dict = {
        "user_key": user_key,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "dry_run": dry_run,
        "store": store_uri,
        "datasets": [],
        "versions": {"searched": len(recommenders), "republished": [], "deleted": [], "not_searched": {}},
        "checkpoints": {"deleted": [], "kept": []},
        "complete": False,
    }
    for manifest in manifests:
        if manifest.kind not in MODELS:
            report["versions"]["not_searched"][manifest.kind] = (
                report["versions"]["not_searched"].get(manifest.kind, 0) + 1
            )
    try:
        _erase(report, store, recommenders, sorted(dataset_uris), sorted(storages), user_key,
               expected_key_fingerprint, dry_run)  # fmt: skip
        if verify and not dry_run:
            report["verification"] = search(roots, user_key)
            if report["verification"]["found"]:
                raise ErasureError(f"the key is still in {len(report['verification']['found'])} file(s)")
        report["complete"] = not dry_run
    except Exception as error:
        report["error"] = str(error)
        raise
    finally:
        report["backups"] = _noncurrent_days(store_uri)
        report["seconds"] = round(time.perf_counter() - started, 2)
        report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        if report_uri is not None:
            write_report(report, report_uri)
    return report


def _erase(report, store, recommenders, dataset_uris, storages, user_key, expected_key_fingerprint, dry_run):
    # 1. Datasets.
    found_in = {}
    for uri in dataset_uris:
        if not fs.exists(fs.join(uri, MANIFEST_FILE)):
            report["datasets"].append({"uri": uri, "missing": True})
            continue
        found = _found_in_dataset(uri, user_key)
        recorded = found["dataset"].manifest.get("id_key_fingerprint")
        if expected_key_fingerprint is not None and recorded != expected_key_fingerprint:
            raise ErasureError(f"{uri} was ingested under another ENCORE_ID_KEY: the listener's key cannot be found "
                               "there; run the erasure with the key the data was ingested with")  # fmt: skip
        if found["users"] or found["rejects"]:
            found_in[uri] = found
        else:
            report["datasets"].append({"uri": uri, "found": {"users": 0, "interactions": 0, "rejects": 0}})
    # 2. Model versions: which hold the key, and how the aliased ones are replaced; all planned before any
    # change, so that a version that cannot be replaced stops the erasure with nothing changed.
    holding = []
    for manifest in recommenders:
        recorded = manifest.preprocessing.get("id_key_fingerprint")
        if _holds(store, manifest, user_key):
            holding.append(manifest)
        elif expected_key_fingerprint is not None and recorded not in (None, expected_key_fingerprint):
            raise ErasureError(f"{manifest.version} was trained under another ENCORE_ID_KEY: the listener's key "
                               "cannot be found there")  # fmt: skip
    aliases = store.aliases()
    plans = []
    for manifest in holding:
        named_by = sorted(alias for alias, version in aliases.items() if version == manifest.version)
        if named_by:
            plans.append(_plan(store, manifest, named_by))
    if dry_run:
        for uri, found in found_in.items():
            counts = {name: found[name] for name in ("users", "interactions", "rejects")}
            report["datasets"].append({"uri": uri, "found": counts, "version": found["dataset"].manifest["version"]})
        report["versions"]["republished"] = [{k: v for k, v in plan.items() if k != "bundle"} for plan in plans]
        report["versions"]["deleted"] = [manifest.version for manifest in holding]
        report["checkpoints"]["deleted"] = _doomed_runs(store, holding, storages, dry_run=True)
        return

    erased: dict[str, dict] = {}  # old fingerprint -> the dataset's entry
    for uri, found in found_in.items():
        entry = erase_from_dataset(uri, user_key, found)
        report["datasets"].append(entry)
        erased[entry["old_fingerprint"]] = entry
    for plan in plans:
        report["versions"]["republished"].append(_republish(store, plan, user_key, erased))

    # 3. Delete what holds the listener, then the checkpoints of it and of unknown lineage.
    for manifest in holding:
        store.delete(manifest.version)
        report["versions"]["deleted"].append(manifest.version)
    deleted_runs = _doomed_runs(store, holding, storages, dry_run=False)
    report["checkpoints"]["deleted"] = [run for run in deleted_runs if run.get("deleted")]
    report["checkpoints"]["kept"] = [run for run in deleted_runs if not run.get("deleted")]
    report["residual"] = _residual(report)


def _plan(store: ModelStore, manifest: Manifest, named_by: list[str]) -> dict:
    plan = {"old": manifest.version, "kind": manifest.kind, "aliases": named_by}
    bundle = RecommenderBundle.load(store.load(manifest.version).path, manifest.kind)
    if exactly_removable(bundle.model):
        return {**plan, "method": "exact-removal", "why": EXACT[manifest.kind], "bundle": bundle}
    config = manifest.config if isinstance(manifest.config, dict) else {}
    dataset = config.get("dataset")
    if not isinstance(config.get("params"), dict) or not isinstance(dataset, str):
        raise ErasureError(f"{manifest.version} ({', '.join(named_by)}) must be retrained, but its manifest "
                           "records no params and dataset to retrain from")  # fmt: skip
    if not fs.exists(fs.join(fs.absolute(dataset), MANIFEST_FILE)):
        raise ErasureError(f"{manifest.version} ({', '.join(named_by)}) must be retrained but its dataset "
                           f"{dataset} is gone")  # fmt: skip
    why = RETRAIN.get(manifest.kind, "its learned state depends on every listener")
    return {**plan, "method": "retrained", "why": why, "dataset": fs.absolute(dataset)}


def _republish(store: ModelStore, plan: dict, user_key: str, erased: dict) -> dict:
    """Save the replacement of ``plan["old"]`` and move its aliases to it; returns the report entry."""
    old = store.show(plan["old"])
    config = dict(old.config) if isinstance(old.config, dict) else {}
    note = {"replaces": old.version, "method": plan["method"], "at": datetime.now(UTC).isoformat(timespec="seconds")}
    if plan["method"] == "exact-removal":
        bundle = remove_from_bundle(plan["bundle"], user_key)
        lineage = erased.get(old.data_fingerprint)
        fingerprint_now = old.data_fingerprint
        if lineage is not None:
            fingerprint_now = lineage["new_fingerprint"]
            config["dataset_version"] = lineage["new_version"]
        else:
            note["data_fingerprint"] = "of the data it was trained on before the listener was removed"
        note["metrics"] = "measured before the removal"
        with tempfile.TemporaryDirectory() as folder:
            bundle.save(folder)
            saved = store.save(
                folder,
                kind=old.kind,
                config={**config, "erasure": note},
                metrics=old.metrics,
                data_fingerprint=fingerprint_now,
                preprocessing=old.preprocessing,
                aliases=[],
            )
        new = saved.version
    else:
        from encore.recsys.train import train

        workers = config.get("workers")
        if isinstance(workers, dict) and workers.get("name"):
            base = str(workers["name"]).split("-erase-")[0]
            workers = {**workers, "name": f"{base}-erase-{datetime.now(UTC):%Y%m%dT%H%M%S}"}
        else:
            workers = None
        new = train(plan["dataset"], old.kind, config["params"], store.uri, [], tuning=config.get("tuning"),
                    workers=workers, extra_config={"erasure": note})  # fmt: skip
    for alias in plan["aliases"]:
        store.set_alias(alias, new)
    logger.info("%s replaced by %s (%s); %s moved to it", old.version, new, plan["method"], ", ".join(plan["aliases"]))
    return {k: v for k, v in plan.items() if k != "bundle"} | {"new": new}


def _doomed_runs(store: ModelStore, holding: list[Manifest], storages: list[str], dry_run: bool) -> list[dict]:
    """Ray Train runs to delete: those of the versions that held the listener, and ALS runs no version names."""
    doomed = {(storage, name) for manifest in holding for storage, name in _runs_of(manifest) if storage}
    remaining = [manifest for manifest in store.list() if manifest.version not in {m.version for m in holding}]
    named = {name for manifest in remaining for _, name in _runs_of(manifest)}
    runs = []
    for storage in storages:
        for entry in _children(storage):
            if entry.type != pafs.FileType.Directory:
                continue
            uri = fs.join(storage, entry.base_name)
            if (storage, entry.base_name) in doomed:
                why = "a run of a version that held the listener"
            elif entry.base_name not in named and _has_als_factors(uri):
                why = "ALS factors of a run no version names: its data cannot be told, so may be the listener's"
            else:
                runs.append({"run": uri, "deleted": False, "why": "named by a version that does not hold the listener"
                             if entry.base_name in named else "not ALS factors of listening data"})  # fmt: skip
                continue
            if not dry_run:
                _delete_tree(uri)
            runs.append({"run": uri, "deleted": True, "why": why})
    return runs


def _residual(report: dict) -> list[str]:
    notes = [
        "Item tags in the datasets are counts of tagging events over all listeners (each item's top tags, no "
        "user key): the listener's tagging events still count there until the dataset is ingested again from "
        "an input without them.",
        "Serve replicas stop serving a deleted version at their next look at the store (poll_seconds) and "
        "remove their cached copies of it then.",
    ]
    sources = sorted({source for entry in report["datasets"] for source in entry.get("sources", [])})
    if sources:
        notes.append("The ingest's input still holds the raw id: erase it there too, or the next ingest brings "
                     "the listener back: " + ", ".join(sources))  # fmt: skip
    return notes


def summary(report: dict) -> str:
    """One line of what an erasure's ``report`` says was done (or, for a dry run, planned)."""
    versions = report["versions"]
    rewritten = sum(1 for entry in report["datasets"] if entry.get("new_version") or entry.get("version"))
    return (
        f"{rewritten} dataset(s) rewritten, {len(versions['republished'])} version(s) republished, "
        f"{len(versions['deleted'])} deleted, {len(report['checkpoints']['deleted'])} checkpoint run(s) deleted"
    )


def write_report(report: dict, uri: str | Path) -> None:
    fs.write_bytes(fs.absolute(uri), json.dumps(report, indent=2).encode())
