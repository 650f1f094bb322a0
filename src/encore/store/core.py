"""The versioned model store.

Layout, the same in a local folder and under an S3 prefix::

    <root>/versions/<version>/<files...>
    <root>/versions/<version>/MANIFEST.json
    <root>/aliases/<name>.json        {"version", "history", "updated_at"}

A version's files are written first and its manifest last, and only versions with a
manifest are visible, so a writer that dies half-way leaves nothing a reader can pick up.

Whoever can write to the store must not be able to harm its readers' machines: every name read
back (version ids, alias targets, file names) is checked before it becomes part of a local path,
and every local path written or deleted is checked to stay inside the store or the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from encore.store.backends import FileDigest, LocalBackend, file_digest, inside, open_backend, shown
from encore.store.errors import ChecksumError, PreprocessingMismatch, StoreError, VersionNotFound
from encore.store.manifest import Manifest, code_version

logger = logging.getLogger(__name__)

MANIFEST_NAME = "MANIFEST.json"
#: Previous targets an alias remembers. Bounded because every save moves "latest":
#: an unbounded history would pin every version ever saved and gc could free nothing.
ALIAS_HISTORY_LIMIT = 10

_KIND = re.compile(r"[a-z0-9][a-z0-9_-]*")
# Alias names and version ids become object keys: no slashes, no leading dot.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# What save names a version; the only names a version read back may have.
_VERSION = re.compile(r"(?P<kind>[a-z0-9][a-z0-9_-]*)-\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{12}")
# One segment of a file's path in a version: no separators ('\\' is one elsewhere), no control
# characters, no lone surrogates (no file system encoding can write them).
_SEGMENT = re.compile(r"[^/\\\x00-\x1f\x7f\ud800-\udfff]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Layout of the cache folder: a new one starts afresh beside copies it could not replace atomically.
_CACHE_LAYOUT = "v2"

Admission = Callable[["ModelStore", Manifest, str], None]


@dataclass(frozen=True)
class LoadedVersion:
    """A verified version ready to use: its files are under ``path``."""

    path: Path
    manifest: Manifest


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _human_size(size: int) -> str:
    value, unit = float(size), "B"
    for bigger in ("kB", "MB", "GB", "TB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"


def _source_files(source: Path) -> list[tuple[str, Path]]:
    """``(relative posix path, path)`` of everything but folders under ``source``, sorted by relative path."""
    if not source.is_dir():
        raise ValueError(f"{source} is not a directory")
    # Anything that is not a folder counts, pipes included: skipping odd files silently
    # would store a version that lacks what the caller meant to save.
    files = sorted((path.relative_to(source).as_posix(), path) for path in source.rglob("*") if not path.is_dir())
    if not files:
        raise ValueError(f"{source} holds no files")
    if any(relative == MANIFEST_NAME for relative, _ in files):
        raise ValueError(f"{source} contains a {MANIFEST_NAME}, a name the store reserves")
    # Loading refuses such names in a manifest; saving them would store a version nobody can load.
    unsafe = [relative for relative, _ in files if not _is_safe_relative(relative)]
    if unsafe:
        raise ValueError(f"{source} holds files whose names the store refuses: {', '.join(map(shown, unsafe))}")
    return files


def _is_safe_relative(relative: object) -> bool:
    """Whether a manifest's file name is a plain relative path that stays inside its version folder.

    No absolute paths, no '.', '..' or empty segments, no backslashes, no control characters, no
    segment longer than a file name can be: the name becomes a local path on every reader.
    """
    return isinstance(relative, str) and all(
        _SEGMENT.fullmatch(part) and part not in (".", "..") and len(part.encode()) <= 255
        for part in relative.split("/")
    )


# The store of whoever names none: the Serve application, the store's command line, the jobs.
DEFAULT_STORE_URI = os.environ.get("ENCORE_STORE_URI") or "./artifacts"


class ModelStore:
    """Versioned storage of model folders in a local directory or an S3 prefix.

    Parameters
    ----------
    uri : str or os.PathLike, default DEFAULT_STORE_URI
        A local path (made absolute) or ``s3://bucket/prefix``; by default ``$ENCORE_STORE_URI``, else
        ``./artifacts``.
    admit : callable, optional
        ``admit(store, manifest, alias)`` is called before an alias moves to a version and raises
        :class:`PromotionRefused` to keep it where it is (``encore.serving.versions.serving_store`` refuses
        what the Serve application could not serve).

    Examples
    --------
    >>> store = ModelStore("s3://models/encore")
    >>> manifest = store.save("out/", kind="popularity", config={}, metrics={"ndcg@10": 0.31},
    ...                       data_fingerprint="sha256:...", preprocessing={"id_key": "k1"})
    >>> store.promote(manifest.version)
    >>> loaded = store.load("production", expected_preprocessing={"id_key": "k1"})
    """

    def __init__(self, uri: str | os.PathLike = DEFAULT_STORE_URI, admit: Admission | None = None):
        self._backend = open_backend(uri)
        self._admit = admit

    @property
    def uri(self) -> str:
        return self._backend.uri

    def __repr__(self) -> str:
        return f"ModelStore({self.uri!r})"

    # ---- writing -------------------------------------------------------------------

    def save(
        self,
        source_dir: str | os.PathLike,
        *,
        kind: str,
        config: dict,
        metrics: dict,
        data_fingerprint: str,
        preprocessing: dict,
        aliases: Iterable[str] = ("latest",),
    ) -> Manifest:
        """Store the files under ``source_dir`` as a new version and point ``aliases`` at it.

        Files are copied in sorted order, hashed while they are copied, and the manifest is
        written last; only then do the aliases move.

        Raises
        ------
        ValueError
            If ``kind`` or an alias name is malformed, or ``source_dir`` holds no files.
        TypeError
            If ``config``, ``metrics`` or ``preprocessing`` cannot be written as JSON.
        """
        if not _KIND.fullmatch(kind):
            raise ValueError(f"invalid model kind {kind!r}: use lowercase letters, digits, '_' and '-'")
        aliases = list(aliases)
        for alias in aliases:
            self._check_alias_name(alias)
        files = _source_files(Path(source_dir))
        # Fail on values JSON cannot hold before copying anything rather than after.
        json.dumps([config, metrics, preprocessing, data_fingerprint])

        now = _utc_now()
        version = f"{kind}-{now:%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4().hex[:12]}"
        recorded = {}
        for relative, path in files:
            digest = self._backend.write_file(self._version_key(version, relative), path)
            recorded[relative] = {"sha256": digest.sha256, "size": digest.size}
        manifest = Manifest(
            version=version,
            kind=kind,
            config=config,
            metrics=metrics,
            files=recorded,
            data_fingerprint=data_fingerprint,
            preprocessing=preprocessing,
            code_version=code_version(),
            created_at=now.isoformat(timespec="microseconds"),
        )
        self._backend.write_bytes(self._version_key(version, MANIFEST_NAME), _to_json(manifest.to_dict()))
        logger.info("saved %s (%d files, %s) to %s", version, len(recorded), _human_size(manifest.total_size), self.uri)
        for alias in aliases:
            self._check_admitted(manifest, alias)
        for alias in aliases:
            self._point_alias(alias, version)
        return manifest

    def set_alias(self, alias: str, ref: str) -> str:
        """Point ``alias`` at the version ``ref`` names, remembering where it pointed before.

        Returns the version id. Each write of the alias record is atomic; two processes
        moving the same alias at the same moment may lose one of the history entries.
        """
        self._check_alias_name(alias)
        manifest = self._manifest(ref)
        self._check_admitted(manifest, alias)
        return self._point_alias(alias, manifest.version)

    def promote(self, ref: str, alias: str = "production") -> str:
        """Point ``alias`` (by default "production") at ``ref``, an alias, a version id or a kind (its
        newest version); returns the version id."""
        try:
            version = self.set_alias(alias, ref)
        except VersionNotFound:
            newest = self.list(kind=ref) if _KIND.fullmatch(ref) else []
            if not newest:
                raise
            version = self.set_alias(alias, newest[0].version)
        logger.info("promoted %s to %s", version, alias)
        return version

    def rollback(self, alias: str = "production") -> str:
        """Point ``alias`` back at the version it pointed at before; returns that version id.

        Raises
        ------
        StoreError
            If the alias does not exist or has no earlier version.
        """
        record = self._read_alias(alias)
        if record is None:
            raise VersionNotFound(f"no alias named {alias!r} in {self.uri}")
        if not record["history"]:
            raise StoreError(
                f"alias {alias!r} has no earlier version to roll back to (it points at {record['version']})"
            )
        previous = record["history"][-1]
        self._write_alias(alias, previous, record["history"][:-1])
        logger.info("rolled %s back from %s to %s", alias, record["version"], previous)
        return previous

    def gc(self, keep: int = 5, dry_run: bool = False, grace_seconds: float = 3600.0) -> list[str]:
        """Delete versions nobody needs; returns the ids removed (or, with ``dry_run``, to remove).

        Removed are complete versions older than the newest ``keep`` of their kind that no
        alias points at, now or in its history, and incomplete versions (no manifest) whose
        newest file is at least ``grace_seconds`` old; the grace period spares writers that
        are still uploading. Entries under ``versions/`` that are not version ids are left alone:
        no store wrote them.
        """
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        present = self._version_ids()
        complete = self.list()
        pinned = {
            version for record in self._alias_records().values() for version in (record["version"], *record["history"])
        }

        doomed = []
        seen_per_kind = Counter()
        for manifest in complete:
            seen_per_kind[manifest.kind] += 1
            if seen_per_kind[manifest.kind] > keep and manifest.version not in pinned:
                doomed.append(manifest.version)
        complete_ids = {manifest.version for manifest in complete}
        now = time.time()
        for version in present:
            if version in complete_ids:
                continue
            newest = self._backend.newest_mtime(f"versions/{version}")
            if newest is None or now - newest >= grace_seconds:
                doomed.append(version)

        for version in doomed:
            if dry_run:
                logger.info("would remove %s from %s", version, self.uri)
                continue
            # Manifest first: the version disappears at once instead of turning up damaged.
            self._backend.delete(self._version_key(version, MANIFEST_NAME))
            self._backend.delete_tree(f"versions/{version}")
            logger.info("removed %s from %s", version, self.uri)
        return doomed

    def export(self, ref: str, destination: str | os.PathLike) -> Path:
        """Copy the version ``ref`` names, verified, to ``destination/<version id>/``: its files and
        its manifest, the folder :meth:`import_version` reads (to ship a trained model, or move one
        between stores). Returns that folder.

        Raises
        ------
        StoreError
            If the folder exists already (an export never overwrites), or the version fails verification.
        """
        loaded = self.load(ref)
        folder = Path(destination).resolve() / loaded.manifest.version
        if folder.exists():
            raise StoreError(f"{folder} exists: export into another folder, or remove it first")
        staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}")
        try:
            for relative in sorted(loaded.manifest.files):
                target = inside(staging, relative, f"version {loaded.manifest.version}")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(inside(loaded.path, relative, f"version {loaded.manifest.version}"), target)
            (staging / MANIFEST_NAME).write_bytes(_to_json(loaded.manifest.to_dict()))
            os.rename(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("exported %s to %s", loaded.manifest.version, folder)
        return folder

    def import_version(self, source: str | os.PathLike, aliases: Iterable[str] = ()) -> Manifest:
        """Add the version :meth:`export` wrote to the local folder ``source``, under its own id, and
        point ``aliases`` at it.

        The folder is distrusted like anything read back from a store: its manifest must name the
        folder, list only safe file names and nothing but them may lie beside it, and each file must
        match its recorded sha256 and size, both before anything is written and as it is copied. The
        manifest is written last, as :meth:`save` does. Importing a version the store already holds
        changes nothing but the aliases, once the two manifests agree.

        Raises
        ------
        StoreError
            If the folder is not an exported version, or differs from the version of that id in the store.
        ChecksumError
            If a file is missing or differs from the manifest.
        """
        source = Path(source).resolve()
        aliases = list(aliases)
        for alias in aliases:
            self._check_alias_name(alias)
        if not _VERSION.fullmatch(source.name):
            raise StoreError(f"{shown(source.name)} is not a version id: import the folder that export wrote")
        manifest = _exported_manifest(source)
        stored = self._read_manifest(manifest.version)
        if stored is not None:
            if stored != manifest:
                raise StoreError(f"{self.uri} holds another {manifest.version} than {source}")
            logger.info("%s is already in %s", manifest.version, self.uri)
        else:
            where = f"version {manifest.version}"
            _check_files(manifest, lambda relative: file_digest(inside(source, relative, where)))
            try:
                _check_files(
                    manifest,
                    lambda relative: self._backend.write_file(
                        self._version_key(manifest.version, relative), inside(source, relative, where)
                    ),
                )
            except ChecksumError:  # changed while it was copied: leave nothing a reader could take for it
                self._backend.delete_tree(f"versions/{manifest.version}")
                raise
            self._backend.write_bytes(self._version_key(manifest.version, MANIFEST_NAME), _to_json(manifest.to_dict()))
            logger.info("imported %s (%d files) into %s", manifest.version, len(manifest.files), self.uri)
        for alias in aliases:
            self._check_admitted(manifest, alias)
        for alias in aliases:
            self._point_alias(alias, manifest.version)
        return manifest

    def delete(self, version: str) -> None:
        """Delete the complete version ``version`` (a version id) for good, as erasure must.

        Refused while an alias names it: move the alias first. The manifest goes first, so the version
        disappears at once; every alias's history forgets it (a rollback never lands on it), and so
        does this machine's cache (:meth:`forget_cached`).

        Raises
        ------
        VersionNotFound
            If there is no such complete version.
        StoreError
            If an alias names it.
        """
        if not _VERSION.fullmatch(version) or self._read_manifest(version) is None:
            raise VersionNotFound(f"no complete version {shown(version)} in {self.uri}")
        records = self._alias_records()
        naming = sorted(alias for alias, record in records.items() if record["version"] == version)
        if naming:
            raise StoreError(f"{version} is what {', '.join(naming)} name(s): move them before deleting it")
        self._backend.delete(self._version_key(version, MANIFEST_NAME))
        self._backend.delete_tree(f"versions/{version}")
        for alias, record in records.items():
            if version in record["history"]:
                kept = [earlier for earlier in record["history"] if earlier != version]
                self._write_alias(alias, record["version"], kept)
        self.forget_cached(version)
        logger.info("deleted %s from %s", version, self.uri)

    def forget_cached(self, version: str) -> int:
        """Remove this machine's cached copies of ``version`` once the store no longer has it; returns how
        many copies went. A copy of a version the store still has is never removed (see ``_cached_copy``);
        one of a deleted version serves nobody again: a reader holds what it loaded in memory."""
        if isinstance(self._backend, LocalBackend) or not _VERSION.fullmatch(version):
            return 0
        if self._read_manifest(version) is not None:
            return 0
        cache = self._cache_folder()
        removed = 0
        for path in [cache / version, *cache.glob(f".{version}.*")]:
            if path.is_symlink() or path.is_file():
                path.unlink(missing_ok=True)
            elif path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        if removed:
            logger.info("removed %d cached copies of %s, deleted from %s", removed, version, self.uri)
        return removed

    # ---- reading -------------------------------------------------------------------

    def resolve(self, ref: str) -> str:
        """The id of the complete version that ``ref`` (an alias or a version id) names.

        Raises
        ------
        VersionNotFound
            If there is no such alias or complete version.
        """
        return self._manifest(ref).version

    def show(self, ref: str) -> Manifest:
        """The manifest of the version ``ref`` names."""
        return self._manifest(ref)

    def list(self, kind: str | None = None) -> list[Manifest]:
        """Manifests of the complete versions, of one ``kind`` if given, newest first."""
        manifests = []
        for version in self._version_ids():
            # Ids start with their kind; reading only plausible manifests saves requests on S3.
            if kind is not None and not version.startswith(f"{kind}-"):
                continue
            manifest = self._read_manifest(version)
            if manifest is not None and (kind is None or manifest.kind == kind):
                manifests.append(manifest)
        return sorted(manifests, key=lambda manifest: (manifest.created_at, manifest.version), reverse=True)

    def aliases(self) -> dict[str, str]:
        """``{alias: version id}`` for every alias."""
        return {alias: record["version"] for alias, record in self._alias_records().items()}

    def load(self, ref: str = "latest", expected_preprocessing: dict | None = None) -> LoadedVersion:
        """Verify a version and return where its files are.

        A local store's version folder is verified in place and returned. An S3 version is
        downloaded to the cache folder (``$ENCORE_CACHE_DIR`` or ``~/.cache/encore/store``),
        verified there, and a cached copy is reused only while it still verifies. The store never
        changes or removes a cached copy it has handed out, so processes can share the cache.

        Parameters
        ----------
        ref : str, default "latest"
            Alias or version id.
        expected_preprocessing : dict, optional
            Each key given must equal the manifest's ``preprocessing[key]``.

        Raises
        ------
        VersionNotFound
            If ``ref`` names nothing or an incomplete version.
        PreprocessingMismatch
            If the version's preprocessing differs from ``expected_preprocessing``.
        ChecksumError
            If a file is missing, truncated or altered.
        StoreError
            If the version's manifest or an alias on the way names something a reader must not use.
        """
        manifest = self._manifest(ref)
        _check_preprocessing(manifest, expected_preprocessing or {})
        if isinstance(self._backend, LocalBackend):
            path = self._backend.path(f"versions/{manifest.version}")
            where = f"version {manifest.version}"
            _check_files(manifest, lambda relative: file_digest(inside(path, relative, where)))
        else:
            path = self._cached_copy(manifest)
        logger.info("loaded %s from %s", manifest.version, self.uri)
        return LoadedVersion(path=path, manifest=manifest)

    def trained_as(
        self, alias: str, *, kind: str, data_fingerprint: str, preprocessing: dict, config: dict
    ) -> Manifest | None:
        """The manifest of the version ``alias`` names if training the same thing again would repeat
        it: of ``kind``, on the data of ``data_fingerprint``, under ``preprocessing``, with each entry
        of ``config`` recorded as it is; None otherwise (no such alias included), so a rerun can
        reuse what is there."""
        try:
            manifest = self._manifest(alias)
        except VersionNotFound:
            return None
        same = (
            manifest.kind == kind
            and manifest.data_fingerprint == data_fingerprint
            and manifest.preprocessing == preprocessing
            and all(manifest.config.get(name) == value for name, value in config.items())
        )
        return manifest if same else None

    def verify(self, ref: str) -> Manifest:
        """Re-hash every file of a version where it is stored (never a cached copy).

        Raises
        ------
        ChecksumError
            Naming each file that is missing or differs from the manifest.
        """
        manifest = self._manifest(ref)
        _check_files(manifest, lambda relative: self._backend.digest(self._version_key(manifest.version, relative)))
        logger.info("verified %s (%d files)", manifest.version, len(manifest.files))
        return manifest

    # ---- internals -----------------------------------------------------------------

    @staticmethod
    def _version_key(version: str, relative: str) -> str:
        return f"versions/{version}/{relative}"

    @staticmethod
    def _check_alias_name(alias: str) -> None:
        if not _NAME.fullmatch(alias):
            raise ValueError(f"invalid alias name {alias!r}: use letters, digits, '_', '-' and '.'")

    def _version_ids(self) -> list[str]:
        """Names under ``versions/`` that are version ids; nothing else there is a version."""
        return [name for name in self._backend.children("versions") if _VERSION.fullmatch(name)]

    def _read_manifest(self, version: str) -> Manifest | None:
        """The manifest of ``version`` (a version id), None if it has none (incomplete or absent).

        Raises
        ------
        StoreError
            If it is unreadable or names anything a reader must not trust (see :func:`_manifest_problems`).
        """
        raw = self._backend.read_bytes(self._version_key(version, MANIFEST_NAME))
        if raw is None:
            return None
        try:
            manifest = Manifest.from_dict(json.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"manifest of {version} in {self.uri} is unreadable: {shown(exc)}") from exc
        problems = _manifest_problems(manifest, version)
        if problems:
            raise StoreError(f"manifest of {version} in {self.uri} is refused: " + "; ".join(problems))
        return manifest

    def _manifest(self, ref: str) -> Manifest:
        if not _NAME.fullmatch(ref):
            raise VersionNotFound(f"no version or alias named {shown(ref)} in {self.uri}")
        record = self._read_alias(ref)
        version = ref if record is None else record["version"]
        if not _VERSION.fullmatch(version):
            raise VersionNotFound(f"no version or alias named {shown(ref)} in {self.uri}")
        manifest = self._read_manifest(version)
        if manifest is not None:
            return manifest
        if self._backend.exists(f"versions/{version}"):
            raise VersionNotFound(
                f"version {version} in {self.uri} is incomplete: it has files but no {MANIFEST_NAME} "
                "(its writer did not finish); gc removes it"
            )
        if record is not None:
            raise VersionNotFound(f"alias {ref!r} points at {version}, which is not in {self.uri}")
        raise VersionNotFound(f"no version or alias named {shown(ref)} in {self.uri}")

    def _read_alias(self, alias: str) -> dict | None:
        """The record of ``alias``, None if there is none.

        Raises
        ------
        StoreError
            If it is unreadable or names, as its target or in its history, something not a version id.
        """
        if not _NAME.fullmatch(alias):
            return None
        raw = self._backend.read_bytes(f"aliases/{alias}.json")
        if raw is None:
            return None
        try:
            record = json.loads(raw)
            record = {"version": record["version"], "history": record["history"], "updated_at": record["updated_at"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"alias {shown(alias)} in {self.uri} is unreadable: {shown(exc)}") from exc
        if not isinstance(record["history"], list):
            raise StoreError(f"alias {shown(alias)} in {self.uri} is unreadable: its history is not a list")
        for version in (record["version"], *record["history"]):
            if not isinstance(version, str) or not _VERSION.fullmatch(version):
                raise StoreError(f"alias {shown(alias)} in {self.uri} names {shown(version)}, not a version id")
        return record

    def _alias_records(self) -> dict[str, dict]:
        records = {}
        for name in self._backend.children("aliases"):
            alias = name.removesuffix(".json")
            if name.endswith(".json") and (record := self._read_alias(alias)) is not None:
                records[alias] = record
        return records

    def _check_admitted(self, manifest: Manifest, alias: str) -> None:
        if self._admit is not None:
            self._admit(self, manifest, alias)

    def _point_alias(self, alias: str, version: str) -> str:
        record = self._read_alias(alias)
        if record is None:
            self._write_alias(alias, version, [])
            logger.info("alias %s -> %s", alias, version)
        elif record["version"] != version:
            history = (record["history"] + [record["version"]])[-ALIAS_HISTORY_LIMIT:]
            self._write_alias(alias, version, history)
            logger.info("alias %s -> %s (was %s)", alias, version, record["version"])
        return version

    def _write_alias(self, alias: str, version: str, history: list[str]) -> None:
        record = {"version": version, "history": history, "updated_at": _utc_now().isoformat(timespec="microseconds")}
        self._backend.write_bytes(f"aliases/{alias}.json", _to_json(record))

    def _cached_copy(self, manifest: Manifest) -> Path:
        """A verified local copy of a remote version, downloaded unless a good one is cached.

        Processes on one node share the cache (Serve replicas) and may load the same version at the
        same moment, while others are still reading the copy they loaded: so a copy, once complete,
        is never changed, moved or deleted. Each copy is downloaded into a folder of its own with a
        unique name, ``.<version>.<random>``, verified there, and only then published by pointing
        the link ``<version>`` at it, which one atomic call does (creating the link, or replacing
        it with a rename). A reader that finds a copy already published keeps that one and deletes
        its own, which nobody else has seen. A published copy that fails verification is replaced
        by moving the link, never repaired in place or removed: a reader may hold it, and every
        other way loses. Removing it first leaves its readers with missing files; repairing it in
        place shows them files changing under them; renaming it breaks the paths they were given.
        The damaged copy stays on disk, logged, for whoever clears the cache once its readers are
        gone. ``load`` returns the copy's own folder, not the link, so a reader keeps the very files
        it verified even when the link moves on.
        """
        cache = self._cache_folder()
        link = inside(cache, manifest.version, "the cache")
        published = _published_copy(cache, link, manifest)
        if published is not None:
            return published
        fresh = self._download(manifest, cache)
        try:
            os.symlink(fresh.name, link)
            return fresh
        except FileExistsError:
            pass  # published by another reader while this one downloaded, or a damaged copy
        published = _published_copy(cache, link, manifest)
        if published is not None:
            shutil.rmtree(fresh)
            return published
        _replace_link(link, fresh.name)
        return fresh

    def _cache_folder(self) -> Path:
        """This store's folder in the cache, ``$ENCORE_CACHE_DIR`` or ``~/.cache/encore/store``."""
        cache_root = Path(os.environ.get("ENCORE_CACHE_DIR") or Path.home() / ".cache" / "encore" / "store")
        cache = cache_root.expanduser().resolve() / _CACHE_LAYOUT / hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        cache.mkdir(parents=True, exist_ok=True)
        return cache

    def _download(self, manifest: Manifest, cache: Path) -> Path:
        """A new folder in ``cache`` holding the version's files, verified; nobody else knows its name."""
        folder = inside(cache, f".{manifest.version}.{uuid.uuid4().hex}", "the cache")
        folder.mkdir()
        where = f"version {manifest.version}"
        try:
            _check_files(
                manifest,
                lambda relative: self._backend.fetch(
                    self._version_key(manifest.version, relative), inside(folder, relative, where)
                ),
            )
            (folder / MANIFEST_NAME).write_bytes(_to_json(manifest.to_dict()))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return folder


def _exported_manifest(source: Path) -> Manifest:
    """The manifest of the exported version in ``source``, checked as :meth:`ModelStore._read_manifest` checks."""
    try:
        manifest = Manifest.from_dict(json.loads((source / MANIFEST_NAME).read_bytes()))
    except FileNotFoundError:
        raise StoreError(f"{source} holds no {MANIFEST_NAME}: import the folder that export wrote") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"the manifest in {source} is unreadable: {shown(exc)}") from exc
    problems = _manifest_problems(manifest, source.name)
    if problems:
        raise StoreError(f"the manifest in {source} is refused: " + "; ".join(problems))
    unlisted = sorted(
        relative
        for relative in (path.relative_to(source).as_posix() for path in source.rglob("*") if not path.is_dir())
        if relative != MANIFEST_NAME and relative not in manifest.files
    )
    if unlisted:
        listed = ", ".join(map(shown, unlisted[:3]))
        raise StoreError(f"the manifest in {source} is refused: {len(unlisted)} unlisted file(s) beside it: {listed}")
    return manifest


def _published_copy(cache: Path, link: Path, manifest: Manifest) -> Path | None:
    """The copy ``link`` points at if it is one of this cache's copies of the version and verifies, else None."""
    try:
        name = os.readlink(link)
    except OSError:  # no link yet, or something else the store did not make: replaced like a damaged copy
        return None
    if not re.fullmatch(rf"\.{re.escape(manifest.version)}\.[0-9a-f]{{32}}", name):
        return None
    copy = cache / name
    try:
        _check_files(manifest, lambda relative: file_digest(inside(copy, relative, f"version {manifest.version}")))
    except StoreError as exc:  # a file changed, missing, or turned into a link leading out
        logger.warning("cached copy %s is damaged (left for readers that may hold it): %s", copy, exc)
        return None
    return copy


def _replace_link(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` in one atomic rename: readers see the old target or the new, never no link."""
    temporary = link.with_name(f".{link.name}.{uuid.uuid4().hex}.link")
    os.symlink(target, temporary)
    try:
        os.replace(temporary, link)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _to_json(data: dict) -> bytes:
    return json.dumps(data, indent=2).encode()


def _check_files(manifest: Manifest, digest_of: Callable[[str], FileDigest | None]) -> None:
    """Compare every manifest file with ``digest_of(relative path)``; raise ChecksumError naming all that differ."""
    problems = []
    for relative, expected in sorted(manifest.files.items()):
        found = digest_of(relative)
        if found is None:
            problems.append(f"{relative} is missing")
        elif found.size != expected["size"]:
            problems.append(f"{relative} has {found.size} bytes, the manifest says {expected['size']}")
        elif found.sha256 != expected["sha256"]:
            problems.append(f"{relative} has sha256 {found.sha256}, the manifest says {expected['sha256']}")
    if problems:
        raise ChecksumError(f"version {manifest.version} failed verification: " + "; ".join(problems))


def _manifest_problems(manifest: Manifest, version: str) -> list[str]:
    """What makes a manifest read from ``versions/<version>/`` untrustworthy, in words; empty if nothing.

    It must name the folder it was read from: one copied or forged there could otherwise make a
    reader fetch, cache or hand out the files of any other folder. Its kind must be the one its id
    starts with, which is what listing by kind relies on. Its file names become local paths on every
    reader, so each must be a safe relative path (and not the manifest's own name), with a digest.
    """
    problems = []
    if manifest.version != version:
        problems.append(f"it names itself {shown(manifest.version)}")
    if manifest.kind != _VERSION.fullmatch(version)["kind"]:
        problems.append(f"its kind {shown(manifest.kind)} is not the one its id starts with")
    if not isinstance(manifest.files, dict):
        return [*problems, "its file list is not a mapping"]
    unsafe = [relative for relative in manifest.files if relative == MANIFEST_NAME or not _is_safe_relative(relative)]
    if unsafe:
        listed = ", ".join(shown(relative) for relative in unsafe[:3])
        problems.append(f"it lists {len(unsafe)} file name(s) no reader may use: {listed}")
    if not all(_is_file_entry(entry) for entry in manifest.files.values()):
        problems.append("a file lacks a valid sha256 or size")
    return problems


def _is_file_entry(entry: object) -> bool:
    """Whether a manifest's record of a file is ``{"sha256": 64 hex digits, "size": bytes}``."""
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("sha256"), str)
        and _SHA256.fullmatch(entry["sha256"]) is not None
        and type(entry.get("size")) is int
        and entry["size"] >= 0
    )


def _check_preprocessing(manifest: Manifest, expected: dict) -> None:
    missing = object()
    mismatches = []
    for key, wanted in expected.items():
        found = manifest.preprocessing.get(key, missing)
        if found != wanted:
            shown = "nothing" if found is missing else repr(found)
            mismatches.append(f"{key}: expected {wanted!r}, found {shown}")
    if mismatches:
        raise PreprocessingMismatch(
            f"version {manifest.version} was built with other preprocessing: " + "; ".join(mismatches)
        )
