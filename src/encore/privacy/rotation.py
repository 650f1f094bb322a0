"""Changing the pseudonymisation key without retraining and without a failed request.

A keyed hash cannot be re-keyed from its output: the raw ids exist only in the original input. A rotation
reads that input with the ingest's parser twice, under the previous key and under the new one, and pairs
the two pseudonyms of every row into a translation ``{previous pseudonym: new pseudonym}``. The translation
lives in this process's memory only: it is built here (never in Ray tasks, whose results pass through the
object store, which may spill to disk), is never logged or written, and is dropped when the job ends.

With it, the rotation rewrites what holds pseudonyms and publishes the result as new versions:

- a dataset: the ``user_key`` of its users and of its rejects. Each user keeps its index and each
  interaction its split (the split is a function of the pseudonyms: splitting again under the new key
  would move interactions between train and test of models already trained); its fingerprint becomes
  :func:`rotated_fingerprint` of the previous one, so it is told apart from an ingest under the new key.
- the recommender versions the store's aliases name (with ``all_versions``, every recommender version
  under the previous key): a new version with the same files but its user map translated, the new key's
  fingerprint, and ``rotated_from`` in its config; the factors do not depend on the key, so nothing is
  retrained. Then the aliases move to them.

Nothing is published when a user of a dataset or version is missing from the input (the count is
reported, never the ids), and a rerun after a failure finishes the job: what is already under the new
key is left as it is. Serving holds both keys meanwhile (``ENCORE_ID_KEY`` the new one,
``ENCORE_ID_KEY_PREVIOUS`` the one being replaced) and answers each user the same from either version.
"""

import hashlib
import io
import logging
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from encore.core import fs
from encore.privacy.ids import DEVELOPMENT_KEY, ID_KEY_ENV, PREVIOUS_ID_KEY_ENV, key_fingerprint
from encore.recsys import hetrec
from encore.recsys.interactions import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    TABLES,
    VERSIONS_FOLDER,
    DatasetError,
    InteractionDataset,
    parse_file,
)
from encore.serving.versions import FAMILIES, family_of
from encore.store import Manifest, ModelStore, PromotionRefused, StoreError

logger = logging.getLogger("encore.privacy.rotation")

# The files jobs.ingest reads in a folder or prefix (its INPUT_SUFFIXES; a test keeps the two equal).
INPUT_SUFFIXES = (".csv", ".tsv", ".dat", ".txt", ".parquet")
REJECTS_FILE = "rejects.csv"
USERS_FILE = "users.parquet"


class RotationError(StoreError):
    """The rotation cannot be done as asked (keys, input, a version or dataset it cannot translate); nothing
    was published. A StoreError, so that jobs report it as ``error: ...`` without a traceback."""


class MissingUsers(RotationError):
    """Users of a dataset or version that the input does not hold: they cannot be translated."""


def rotation_keys(environ: dict[str, str]) -> tuple[bytes, bytes]:
    """``(previous, new)`` keys from ``ENCORE_ID_KEY_PREVIOUS`` and ``ENCORE_ID_KEY`` in ``environ``.

    Keys come from the environment only, never from the command line (shell history, ``ps``). The new key
    must be set (a rotation to the public development key protects nothing); the previous one may be the
    development key, written out."""
    new, previous = environ.get(ID_KEY_ENV), environ.get(PREVIOUS_ID_KEY_ENV)
    if not previous:
        raise RotationError(f"set {PREVIOUS_ID_KEY_ENV} to the key being replaced (and {ID_KEY_ENV} to the new one)")
    if not new:
        raise RotationError(f"set {ID_KEY_ENV} to the new key")
    if new == DEVELOPMENT_KEY:
        raise RotationError(f"{ID_KEY_ENV} is the public development key: rotate to a secret key")
    if new == previous:
        raise RotationError(f"{ID_KEY_ENV} and {PREVIOUS_ID_KEY_ENV} are the same key: nothing to rotate")
    return previous.encode(), new.encode()


def rotated_fingerprint(fingerprint: str, new_key_fingerprint: str) -> str:
    """The data fingerprint of rotated data: a function of the previous fingerprint and the new key, so a
    rotated dataset and the versions trained on it still match each other (``jobs.evaluate`` checks), and
    neither matches an ingest of the same input under the new key, whose split differs."""
    digest = hashlib.sha256(f"{SCHEMA_VERSION}/rotation:{fingerprint}:{new_key_fingerprint}".encode())
    return digest.hexdigest()


@dataclass(repr=False)
class Translation:
    """``{previous pseudonym: new pseudonym}`` of every user of an input, in memory only. Its repr says how
    many users and which keys, never a pseudonym: it may end up in a log or a traceback."""

    previous_fingerprint: str
    new_fingerprint: str
    _pairs: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._pairs)

    def __repr__(self) -> str:
        return f"Translation({len(self)} users, key {self.previous_fingerprint} -> {self.new_fingerprint})"

    def add(self, previous: Iterable[str], new: Iterable[str]) -> None:
        for old, rotated in zip(previous, new, strict=True):
            if old and self._pairs.setdefault(old, rotated) != rotated:
                raise RotationError("two users share a pseudonym under the previous key; the input cannot be trusted")

    def translate(self, keys: Iterable[str]) -> tuple[np.ndarray, int]:
        """The new pseudonym of each of ``keys`` ('' stays ''), and how many are missing from the input
        (their place holds '')."""
        keys = list(keys)
        translated = [self._pairs.get(key, "") if key else "" for key in keys]
        missing = sum(1 for key, new in zip(keys, translated) if key and not new)
        return np.asarray(translated, dtype=object), missing


def input_files(input_uri: str) -> list[str]:
    """The interaction files of an input, as ``jobs.ingest`` finds them: a HetRec folder's
    ``user_artists.dat``, or the CSV/TSV/Parquet files of a file, folder or S3 prefix. (A HetRec folder's
    tagging events hold user ids too, but a dataset keeps only the tags they give items, no user.)"""
    if hetrec.is_hetrec(input_uri):
        return [fs.join(input_uri, hetrec.INTERACTIONS_FILE)]
    files = fs.list_files(input_uri, INPUT_SUFFIXES)
    if not files:
        raise RotationError(f"{input_uri}: no interaction files ({', '.join(INPUT_SUFFIXES)})")
    return files


def build_translation(input_uri: str, previous_key: bytes, new_key: bytes) -> Translation:
    """The translation of every user of the input at ``input_uri``, read with the ingest's parser under both
    keys, one file at a time, in this process.

    The parser keeps a row for every record (rejected ones too, with the pseudonymised user field where it
    can be located), in the same order under either key; the two parses are paired row by row, so the rejects
    of a dataset are translated as well as its users."""
    input_uri = fs.absolute(input_uri)
    translation = Translation(key_fingerprint(previous_key), key_fingerprint(new_key))
    scheme = "s3://" if fs.is_s3(input_uri) else ""
    files = input_files(input_uri)
    for uri in files:
        data = fs.read_bytes(uri)
        source = scheme + fs.resolve(uri)[1]
        before, after = parse_file(data, source, previous_key), parse_file(data, source, new_key)
        del data
        if len(before) != len(after) or not before["line"].equals(after["line"]):
            raise RotationError(f"{source}: the input parses differently under each key")  # cannot happen
        translation.add(before["user"], after["user"])
    logger.info("translation of %d users from %d input file(s), built in memory", len(translation), len(files))
    return translation


# ---- datasets ------------------------------------------------------------------------------------------


@dataclass
class DatasetPlan:
    """A dataset's rotated version, ready to be published (``None`` tables when it is already rotated)."""

    uri: str
    dataset: InteractionDataset | None
    attachments: dict[str, bytes]
    users: int = 0


def plan_dataset(uri: str, translation: Translation) -> DatasetPlan:
    """The rotated version of the dataset published at ``uri``, not yet written.

    Raises MissingUsers when some of its users (or rejects' users) are not in the input, RotationError when
    it was ingested under neither key or holds files a rotation does not know."""
    uri = fs.absolute(uri)
    dataset = InteractionDataset.load(uri)
    key = dataset.manifest.get("id_key_fingerprint")
    if key == translation.new_fingerprint:
        logger.info("dataset %s is already under the new key: left as it is", uri)
        return DatasetPlan(uri, None, {})
    if key != translation.previous_fingerprint:
        raise RotationError(f"{uri}: ingested under key {key}, neither the previous nor the new key")
    unknown = set(dataset.manifest["files"]) - {f"{name}.parquet" for name in TABLES} - {REJECTS_FILE}
    if unknown:
        raise RotationError(f"{uri}: files a rotation does not know ({', '.join(sorted(unknown))}); nothing rotated")
    users, missing = translation.translate(dataset.users["user_key"].tolist())
    attachments = {}
    if REJECTS_FILE in dataset.manifest["files"]:
        rejects = pd.read_csv(io.BytesIO(_dataset_file(uri, dataset.manifest, REJECTS_FILE)), dtype=str,
                              keep_default_na=False)  # fmt: skip
        if "user_key" in rejects:
            keys, missing_rejects = translation.translate(rejects["user_key"].tolist())
            missing += missing_rejects
            rejects = rejects.assign(user_key=keys)
        attachments[REJECTS_FILE] = rejects.to_csv(index=False).encode()
    if missing:
        raise MissingUsers(
            f"{uri}: {missing} user key(s) of the dataset (users and rejects) are not in the input; nothing rotated"
        )
    previous = dataset.manifest
    manifest = {name: value for name, value in previous.items() if name not in ("version", "files")}
    manifest.update(
        id_key_fingerprint=translation.new_fingerprint,
        fingerprint=rotated_fingerprint(previous["fingerprint"], translation.new_fingerprint),
        rotated_from={
            "version": previous["version"],
            "fingerprint": previous["fingerprint"],
            "id_key_fingerprint": translation.previous_fingerprint,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    rotated = InteractionDataset(dataset.interactions, dataset.users.assign(user_key=users), dataset.items, manifest)
    return DatasetPlan(uri, rotated, attachments, users=len(users))


def _dataset_file(uri: str, manifest: dict, name: str) -> bytes:
    data = fs.read_bytes(fs.join(uri, VERSIONS_FOLDER, manifest["version"], name))
    if hashlib.sha256(data).hexdigest() != manifest["files"][name]["sha256"]:
        raise DatasetError(f"{uri}: {name} does not match its sha256 in {MANIFEST_FILE}")
    return data


# ---- model versions ------------------------------------------------------------------------------------


@dataclass
class VersionPlan:
    """A recommender version to rotate: its manifest, its translated user map, the aliases to move."""

    manifest: Manifest
    users: pd.DataFrame
    aliases: list[str]


def versions_to_rotate(store: ModelStore, translation: Translation, all_versions: bool) -> dict[str, list[str]]:
    """``{version: [aliases naming it]}`` of the recommender versions under the previous key that the aliases
    name (and, with ``all_versions``, every other one, with no alias to move)."""
    recommender = FAMILIES["recommender"]
    chosen: dict[str, list[str]] = {}
    for alias, version in sorted(store.aliases().items()):
        try:
            manifest = store.show(version)
        except StoreError:
            logger.warning("alias %s names %s, which cannot be read: left as it is", alias, version)
            continue
        if family_of(manifest.kind) != recommender:
            continue
        key = manifest.preprocessing.get("id_key_fingerprint")
        if key == translation.previous_fingerprint:
            chosen.setdefault(version, []).append(alias)
        elif key != translation.new_fingerprint:
            raise RotationError(f"alias {alias} names {version}, built under key {key}: neither key of the rotation")
    if all_versions:
        for manifest in store.list():
            if (
                family_of(manifest.kind) == recommender
                and manifest.preprocessing.get("id_key_fingerprint") == translation.previous_fingerprint
            ):
                chosen.setdefault(manifest.version, [])
    return chosen


def plan_version(store: ModelStore, version: str, aliases: list[str], translation: Translation) -> VersionPlan:
    """The translated user map of ``version``; MissingUsers when some of its users are not in the input."""
    loaded = store.load(version)
    users = pq.read_table(Path(loaded.path) / USERS_FILE).to_pandas()
    keys, missing = translation.translate(users["user_key"].tolist())
    if missing:
        raise MissingUsers(f"{version}: {missing} of its {len(users)} users are not in the input; nothing rotated")
    return VersionPlan(loaded.manifest, users.assign(user_key=keys), aliases)


def publish_version(store: ModelStore, plan: VersionPlan, translation: Translation) -> Manifest:
    """Save ``plan``'s version again with its user map translated and the new key; moves no alias."""
    source = plan.manifest
    loaded = store.load(source.version)
    with tempfile.TemporaryDirectory(prefix="encore-rotation-") as folder:
        for relative in source.files:  # the files the manifest names (checked on load), nothing else
            target = Path(folder) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(loaded.path) / relative, target)
        pq.write_table(pa.Table.from_pandas(plan.users, preserve_index=False), Path(folder) / USERS_FILE)
        return store.save(
            folder,
            kind=source.kind,
            config={
                **source.config,
                "rotated_from": {"version": source.version, "id_key_fingerprint": translation.previous_fingerprint},
            },
            metrics=source.metrics,
            data_fingerprint=rotated_fingerprint(source.data_fingerprint, translation.new_fingerprint),
            preprocessing={**source.preprocessing, "id_key_fingerprint": translation.new_fingerprint},
            aliases=(),
        )


def rotated_copies(store: ModelStore, translation: Translation) -> dict[str, Manifest]:
    """``{version: its rotated copy}`` of the versions already rotated to the new key (the newest copy of each):
    a run that stopped before moving its aliases is finished with them rather than with new copies."""
    copies: dict[str, Manifest] = {}
    for manifest in store.list():  # newest first
        source = (manifest.config.get("rotated_from") or {}).get("version")
        if source and manifest.preprocessing.get("id_key_fingerprint") == translation.new_fingerprint:
            copies.setdefault(source, manifest)
    return copies


def admit_rotated(store: ModelStore, manifest: Manifest, alias: str) -> None:
    """The admission of a rotation: ``alias`` may move to ``manifest`` only from the version it was rotated
    from (an alias moved meanwhile stays where it was), with the same preprocessing but the key, and when it
    loads as a replica loads it."""
    source = (manifest.config.get("rotated_from") or {}).get("version")
    current = store.show(alias)
    if current.version != source:
        raise PromotionRefused(f"{alias!r} names {current.version} now, not {source}, which {manifest.version} rotates")
    key = manifest.preprocessing.get("id_key_fingerprint")
    if manifest.preprocessing != {**current.preprocessing, "id_key_fingerprint": key}:
        raise PromotionRefused(f"{manifest.version} differs from {current.version} in more than the key")
    family = family_of(manifest.kind)
    try:
        family.load(store.load(manifest.version))
    except Exception as error:
        raise PromotionRefused(f"{manifest.version} does not load as a replica loads it: {error!r}") from error


# ---- the whole rotation --------------------------------------------------------------------------------


def rotate(
    input_uri: str,
    previous_key: bytes,
    new_key: bytes,
    datasets: Iterable[str] = (),
    store_uri: str | None = None,
    all_versions: bool = False,
) -> dict:
    """Rotate ``datasets`` and the recommender versions of the store at ``store_uri`` from ``previous_key`` to
    ``new_key``, with the raw ids of ``input_uri``; returns a summary (counts, version ids, aliases moved).

    Everything is planned (translated, in memory) before anything is written: a dataset or version with users
    missing from the input stops the rotation with nothing published. Then the rotated model versions are
    saved, the aliases move to them, and the rotated datasets are published."""
    translation = build_translation(input_uri, previous_key, new_key)
    dataset_plans = [plan_dataset(uri, translation) for uri in datasets]
    store = ModelStore(store_uri, admit=admit_rotated) if store_uri else None
    version_plans = []
    if store is not None:
        chosen = versions_to_rotate(store, translation, all_versions)
        version_plans = [plan_version(store, version, aliases, translation) for version, aliases in chosen.items()]
    logger.info(
        "rotating %d dataset(s) and %d model version(s) from key %s to %s",
        sum(plan.dataset is not None for plan in dataset_plans),
        len(version_plans),
        translation.previous_fingerprint,
        translation.new_fingerprint,
    )
    summary = {
        "users_in_input": len(translation),
        "previous_key": translation.previous_fingerprint,
        "new_key": translation.new_fingerprint,
        "versions": {},
        "aliases": {},
        "datasets": {},
    }
    done = rotated_copies(store, translation) if version_plans else {}
    for plan in version_plans:
        manifest = done.get(plan.manifest.version)
        if manifest is None:
            manifest = publish_version(store, plan, translation)
            logger.info("%s -> %s (%d users translated)", plan.manifest.version, manifest.version, len(plan.users))
        else:  # published by an earlier run that stopped before moving its aliases
            logger.info("%s -> %s (rotated by an earlier run)", plan.manifest.version, manifest.version)
        summary["versions"][plan.manifest.version] = manifest.version
    for plan in version_plans:
        for alias in plan.aliases:
            summary["aliases"][alias] = store.set_alias(alias, summary["versions"][plan.manifest.version])
            logger.info("moved %s to %s", alias, summary["aliases"][alias])
    for plan in dataset_plans:
        if plan.dataset is None:
            continue
        folder = plan.dataset.save(plan.uri, attachments=plan.attachments)
        summary["datasets"][plan.uri] = {"version": folder.rsplit("/", 1)[-1], "users": plan.users}
        logger.info("published dataset %s version %s (%d users translated)", plan.uri, folder.rsplit("/", 1)[-1],
                    plan.users)  # fmt: skip
    return summary
