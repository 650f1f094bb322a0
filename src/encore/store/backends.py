"""Where a model store's bytes live: a local folder or an S3 prefix.

Both backends address objects by ``/``-separated keys relative to the store root and offer
the same few operations, so :class:`~encore.store.ModelStore` owns the layout and the
rules while a backend only moves bytes.

S3 requests give up after timeouts and retries of our own rather than boto3's defaults (60 s to
connect, 60 s per read, legacy retries: minutes against a server that stopped answering), so a
serving process finds an outage within seconds. The environment may set them:

``ENCORE_S3_CONNECT_TIMEOUT``
    Seconds to open a connection (default 3).
``ENCORE_S3_READ_TIMEOUT``
    Seconds to wait for each read of an answer, not for a whole download (default 5).
``ENCORE_S3_MAX_ATTEMPTS``
    Attempts of one request, the first included (default 3).
``ENCORE_S3_RETRY_MODE``
    botocore's retry mode (default ``standard``: retries transient errors, backing off with jitter).
"""

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from encore.core.fs import replace_file
from encore.store.errors import StoreError

CHUNK_SIZE = 1 << 20


@dataclass(frozen=True)
class FileDigest:
    sha256: str
    size: int


def copy_hashing(source: BinaryIO, sink: BinaryIO | None = None) -> FileDigest:
    """Read ``source`` to the end, hashing it and writing it to ``sink`` if given."""
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(CHUNK_SIZE):
        digest.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink.write(chunk)
    return FileDigest(digest.hexdigest(), size)


def shown(value: object, limit: int = 80) -> str:
    """``repr`` of a value read from a store, cut to ``limit`` characters.

    Names in a store may be hostile: a message quoting one must neither carry megabytes into logs
    and error pages nor let it pass for something else, hence repr (quotes, escaped control characters).
    """
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def inside(root: Path, relative: str, where: str) -> Path:
    """``root / relative``, once sure it resolves inside ``root`` (no '..', absolute path or link leads out).

    Raises
    ------
    StoreError
        Naming ``relative`` (shortened) and ``where``, never ``root``: the message may reach clients.
    """
    path = root / relative
    try:
        resolved = path.resolve()
    except ValueError:  # a NUL byte: no file has such a name
        resolved = None
    if resolved is None or not resolved.is_relative_to(root.resolve()):
        raise StoreError(f"{shown(relative)} is not a path inside {where}")
    return path


def file_digest(path: Path) -> FileDigest | None:
    """Digest of a local file, or None if it does not exist."""
    try:
        with open(path, "rb") as source:
            return copy_hashing(source)
    except FileNotFoundError:
        return None


class _HashingReader:
    """Read-only view of a file that hashes the bytes as they are read.

    It has no ``seek`` on purpose: boto3 then treats it as a stream and reads it exactly
    once, front to back, so the digest describes precisely the bytes that were uploaded.
    """

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._hash = hashlib.sha256()
        self._size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._hash.update(data)
        self._size += len(data)
        return data

    def digest(self) -> FileDigest:
        return FileDigest(self._hash.hexdigest(), self._size)


class LocalBackend:
    """A store rooted at a local folder.

    Every key is checked to resolve inside the folder before it is read, written or deleted, so
    neither a hostile name nor a link planted in the folder reaches anything else on the machine.
    The folder must therefore hold its files itself: link the root elsewhere, not folders inside it.
    """

    def __init__(self, root: Path):
        self.root = root.expanduser().resolve()
        self.uri = str(self.root)

    def path(self, key: str) -> Path:
        return inside(self.root, key, f"store {self.uri}")

    def write_file(self, key: str, source: Path) -> FileDigest:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb") as src, open(target, "wb") as dst:
            digest = copy_hashing(src, dst)
            # The manifest written after the files must never reach the disk before them.
            dst.flush()
            os.fsync(dst.fileno())
        return digest

    def write_bytes(self, key: str, data: bytes) -> None:
        """Replace ``key`` atomically: readers see the old content or the new, never a mix."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_file(target, data)

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            return None

    def digest(self, key: str) -> FileDigest | None:
        return file_digest(self.path(key))

    def children(self, prefix: str) -> list[str]:
        """Names directly under ``prefix``, leaving out dot-files (temporary files of writers)."""
        try:
            return sorted(entry.name for entry in self.path(prefix).iterdir() if not entry.name.startswith("."))
        except FileNotFoundError:
            return []

    def folders(self, prefix: str) -> list[str]:
        """Folders directly under ``prefix`` (not links to folders, not dot-folders)."""
        try:
            entries = list(self.path(prefix).iterdir())
        except FileNotFoundError:
            return []
        return sorted(entry.name for entry in entries if entry.is_dir() and not entry.is_symlink()
                      and not entry.name.startswith("."))  # fmt: skip

    def exists(self, prefix: str) -> bool:
        return self.path(prefix).exists()

    def newest_mtime(self, prefix: str) -> float | None:
        """Latest modification time (epoch seconds) of ``prefix`` or anything under it."""
        top = self.path(prefix)
        if not top.exists():
            return None
        times = [top.stat().st_mtime]
        for folder, _, names in os.walk(top):
            times.extend(os.stat(os.path.join(folder, name)).st_mtime for name in names)
        return max(times)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def delete_tree(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)


def _setting(name: str, default, parse: type):
    """The environment's ``name`` parsed, or ``default`` if it is unset or empty."""
    text = os.environ.get(name)
    if not text:
        return default
    try:
        return parse(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a valid {parse.__name__}") from None


def s3_client_config() -> Config:
    """boto3's timeouts and retries for the store, from the environment (see the module docstring)."""
    return Config(
        connect_timeout=_setting("ENCORE_S3_CONNECT_TIMEOUT", 3.0, float),
        read_timeout=_setting("ENCORE_S3_READ_TIMEOUT", 5.0, float),
        retries={
            "mode": _setting("ENCORE_S3_RETRY_MODE", "standard", str),
            "max_attempts": _setting("ENCORE_S3_MAX_ATTEMPTS", 3, int),
        },
    )


class S3Backend:
    """A store under ``s3://bucket/prefix``.

    The endpoint and credentials come from the usual AWS configuration, including
    ``AWS_ENDPOINT_URL``, so any S3-compatible server works; timeouts and retries from
    ``ENCORE_S3_*`` (see the module docstring), read when the backend is made.
    """

    def __init__(self, uri: str):
        parts = urlsplit(uri)
        if not parts.netloc:
            raise ValueError(f"S3 URI {uri!r} names no bucket")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        # A session of our own: boto3's default session is not safe to share between threads.
        self._client = boto3.session.Session().client("s3", config=s3_client_config())

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise StoreError(f"{self.uri}/{key}: {exc}") from exc

    def write_file(self, key: str, source: Path) -> FileDigest:
        with open(source, "rb") as src, self._errors(key):
            reader = _HashingReader(src)
            self._client.upload_fileobj(reader, self.bucket, self._key(key))
        return reader.digest()

    def write_bytes(self, key: str, data: bytes) -> None:
        """Replace ``key``; a single S3 PUT is atomic."""
        with self._errors(key):
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def _get(self, key: str):
        """The object's streaming body, or None if there is no such object."""
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise

    def read_bytes(self, key: str) -> bytes | None:
        with self._errors(key):
            body = self._get(key)
            return None if body is None else body.read()

    def digest(self, key: str) -> FileDigest | None:
        return self.fetch(key, None)

    def fetch(self, key: str, target: Path | None) -> FileDigest | None:
        """Hash the object, saving it to ``target`` on the way if given; None if it does not exist."""
        with self._errors(key):
            body = self._get(key)
            if body is None:
                return None
            with body, contextlib.ExitStack() as stack:
                sink = None
                if target is not None:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    sink = stack.enter_context(open(target, "wb"))
                return copy_hashing(body, sink)

    def _objects(self, prefix: str) -> Iterator[dict]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix).rstrip("/") + "/"):
            yield from page.get("Contents", [])

    def children(self, prefix: str) -> list[str]:
        """Names directly under ``prefix``: objects and common prefixes ("folders")."""
        start = self._key(prefix).rstrip("/") + "/"
        names = set()
        with self._errors(prefix):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=start, Delimiter="/"):
                names.update(entry["Prefix"][len(start) :].rstrip("/") for entry in page.get("CommonPrefixes", []))
                names.update(entry["Key"][len(start) :] for entry in page.get("Contents", []))
        return sorted(names)

    def folders(self, prefix: str) -> list[str]:
        """Common prefixes ("folders") directly under ``prefix``."""
        start = self._key(prefix).strip("/")
        start = f"{start}/" if start else ""
        names = set()
        with self._errors(prefix):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=start, Delimiter="/"):
                names.update(entry["Prefix"][len(start) :].rstrip("/") for entry in page.get("CommonPrefixes", []))
        return sorted(names)

    def exists(self, prefix: str) -> bool:
        with self._errors(prefix):
            reply = self._client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(prefix) + "/", MaxKeys=1)
        return reply.get("KeyCount", 0) > 0

    def newest_mtime(self, prefix: str) -> float | None:
        with self._errors(prefix):
            times = [entry["LastModified"].timestamp() for entry in self._objects(prefix)]
        return max(times, default=None)

    def delete(self, key: str) -> None:
        with self._errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_tree(self, prefix: str) -> None:
        with self._errors(prefix):
            keys = [entry["Key"] for entry in self._objects(prefix)]
            for start in range(0, len(keys), 1000):  # the most one DeleteObjects call accepts
                batch = [{"Key": key} for key in keys[start : start + 1000]]
                self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})


Backend = LocalBackend | S3Backend


def open_backend(uri: str | os.PathLike) -> Backend:
    """The backend for a local path or an ``s3://bucket/prefix`` URI."""
    text = os.fspath(uri)
    if text.startswith("s3://"):
        return S3Backend(text)
    if "://" in text:
        raise ValueError(f"unsupported store URI {text!r}: use a local path or s3://bucket/prefix")
    return LocalBackend(Path(text))
