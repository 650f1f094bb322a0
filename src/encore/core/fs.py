"""One way to reach local paths and ``s3://`` URIs: pyarrow filesystems.

S3 endpoints come from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` so that any
S3-compatible server works (MinIO, moto in the tests); credentials follow the usual AWS chain.
"""

import os
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    options = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    if endpoint:
        parsed = urlparse(endpoint)
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    return pafs.S3FileSystem(**options)


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The filesystem for ``uri`` and the path inside it (absolute for local paths)."""
    uri = str(uri)
    if is_s3(uri):
        return s3_filesystem(), uri.removeprefix("s3://").rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def absolute(uri: str | os.PathLike) -> str:
    """``uri`` as an absolute local path or unchanged S3 URI: jobs may run in another working directory."""
    uri = str(uri)
    return uri.rstrip("/") if is_s3(uri) else str(Path(uri).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Replace ``uri`` with ``data`` in one step: a reader sees the old content or the new, never a part.

    An S3 object appears when its upload completes; a local file is written beside its target, flushed
    to disk and renamed over it, so that a manifest written after its files never reaches the disk first.
    """
    fs, path = resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if is_s3(uri):
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return
    replace_file(Path(path), data)


def replace_file(target: Path, data: bytes) -> None:
    """Write ``data`` beside ``target``, flush it to disk and rename it over ``target``: one step for readers."""
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_files(uri: str, suffixes: tuple[str, ...]) -> list[str]:
    """Files under ``uri`` (or ``uri`` itself if it is a file) whose names end with one of ``suffixes``."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri}: no such file or directory")
    prefix = "s3://" if is_s3(uri) else ""
    if info.type == pafs.FileType.File:
        return [prefix + path]
    selector = pafs.FileSelector(path, recursive=True)
    return sorted(
        prefix + entry.path
        for entry in fs.get_file_info(selector)
        if entry.type == pafs.FileType.File and entry.path.lower().endswith(suffixes)
    )
