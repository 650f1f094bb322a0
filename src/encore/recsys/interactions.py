"""Implicit-feedback interactions: parsing with row-level validation, the per-user split, and
the ingested dataset on disk or S3.

A dataset is published like a model version, the same way in a local folder and under an S3 prefix::

    <uri>/manifest.json                 counts, fingerprint, "version" and each file's sha256
    <uri>/versions/<version>/<files>    interactions.parquet, users.parquet, items.parquet, rejects.csv

A new version's files are written first and the manifest, one object replaced in one step, last:
until then readers keep getting the previous version, whose files are untouched, and ``load``
refuses any file whose checksum does not match.

Parsing works on one file at a time (the ingest job runs it inside Ray Data workers) and never
raises on a bad row: every row either becomes an interaction or a reject that names its source,
line and reason. User ids are pseudonymised while parsing, so a raw id never leaves this module.
Malformed input can put a user id anywhere (a file without a header row, a comma that shifts the
columns), so nothing this module reports quotes the input: a reject carries the pseudonymised user
field when one can be located, reasons name fields and their kind, never a value, and a header is
described by the kind of each column.
"""

import codecs
import csv
import hashlib
import io
import json
import math
import os
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import scipy.sparse as sp

from encore.core import fs
from encore.core.errors import InputError
from encore.privacy.ids import pseudonymize

SCHEMA_VERSION = "interactions/v1"

# Header names accepted for each role, compared case-insensitively.
COLUMN_ALIASES = {
    "user": {"user", "user_id", "userid"},
    "item": {"item", "item_id", "itemid", "artistid", "artist_id", "track_id"},
    "weight": {"weight", "plays", "play_count", "playcount", "count"},
    "timestamp": {"timestamp", "ts", "time"},
}
AUDIO_PREFIX = "audio_"  # catalogue columns holding an item's audio features
TOP_TAGS = 10  # tags kept per item from tagging events, the most used first
PARSED_COLUMNS = ["user", "item", "weight", "timestamp", "source", "line", "reason"]
SPLITS = ("train", "validation", "test")
MANIFEST_FILE = "manifest.json"
VERSIONS_FOLDER = "versions"
TABLES = ("interactions", "users", "items")
# Where datasets of the single-folder layout kept their files; a new version replaces them.
UNVERSIONED_FILES = ("interactions.parquet", "users.parquet", "items.parquet", "rejects.csv")
# Read back from a manifest, these become paths: only the names ``save`` writes are accepted.
_VERSION_ID = re.compile(r"\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\.[a-z]+")


class IngestError(InputError, ValueError):
    """A whole input is unusable (no header we understand, unreadable file)."""


class DatasetError(IngestError):
    """A dataset cannot be trusted as it is (a file missing or altered, no checksums); an IngestError,
    so that jobs report it as a problem with their input."""


@dataclass(frozen=True)
class SplitConfig:
    """Per-user holdout: ``test_fraction`` of each user with at least ``min_items`` items goes to
    test; of the rest, ``validation_fraction`` goes to validation while at least ``min_items`` remain."""

    seed: int = 42
    test_fraction: float = 0.2
    validation_fraction: float = 0.2
    min_items: int = 5


def _map_header(header: list[str], source: str, described: str) -> dict[str, int]:
    """The position of each role in ``header``; ``described`` tells the columns apart in the error, as
    the names themselves may be a user id (a file without a header row)."""
    positions = {}
    for index, name in enumerate(header):
        for role, aliases in COLUMN_ALIASES.items():
            if name.strip().lower() in aliases and role not in positions:
                positions[role] = index
    missing = [role for role in ("user", "item", "weight") if role not in positions]
    if missing:
        raise IngestError(
            f"{source}: header has no column for {', '.join(missing)} (found {described}; "
            f"accepted names: {', '.join(sorted(a for r in missing for a in COLUMN_ALIASES[r]))})"
        )
    return positions


def _kind(text: str) -> str:
    """What a field holds, in one word: how a reason or a header error speaks of it without quoting it."""
    text = text.strip()
    if not text:
        return "empty"
    for kind, parse in (("integer", int), ("number", float), ("date", datetime.fromisoformat)):
        try:
            parse(text)
            return kind
        except ValueError:
            pass
    return "text"


def _described(header: list[str]) -> str:
    return ", ".join(f"column {index}: {_kind(name)}" for index, name in enumerate(header, start=1))


def _parse_timestamp(text: str) -> float:
    """Seconds since the epoch from a number or an ISO-8601 date; ValueError otherwise."""
    try:
        return float(text)
    except ValueError:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()


def _validate(fields: dict[str, str]) -> tuple[float, float, str]:
    """(weight, timestamp, reason) for one row; reason is '' when the row is good."""
    if not fields["user"]:
        return math.nan, math.nan, "missing user id"
    if not fields["item"]:
        return math.nan, math.nan, "missing item id"
    try:
        weight = float(fields["weight"])
    except ValueError:
        return math.nan, math.nan, f"weight is not a number (found {_kind(fields['weight'])})"
    if not math.isfinite(weight):
        return math.nan, math.nan, "weight is not finite"
    if weight < 0:
        return math.nan, math.nan, "weight is negative"
    timestamp = math.nan
    if fields.get("timestamp"):
        try:
            timestamp = _parse_timestamp(fields["timestamp"])
        except ValueError:
            return math.nan, math.nan, "timestamp is neither a number nor an ISO-8601 date"
    return weight, timestamp, ""


def _checked(fields: dict[str, str], source: str, line: int) -> tuple:
    """One parsed row from the fields of a record whose user field is already pseudonymised."""
    weight, timestamp, reason = _validate(fields)
    if reason:
        return _rejected(source, line, reason, fields["user"])
    return (fields["user"], fields["item"], weight, timestamp, source, line, "")


def _rejected(source: str, line: int, reason: str, user_key: str = "") -> tuple:
    """A rejected row: where it is, why, and whose it is when the user field could be located."""
    return (user_key, "", math.nan, math.nan, source, line, reason)


def _rows_to_frame(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=PARSED_COLUMNS)
    return frame.astype(
        {
            "user": str,
            "item": str,
            "weight": "float64",
            "timestamp": "float64",
            "source": str,
            "line": "int64",
            "reason": str,
        }
    )


def _split(line: bytes, delimiter: str) -> list[str]:
    """The fields of one line; UnicodeDecodeError or csv.Error when it cannot be split reliably."""
    return next(csv.reader([line.decode("utf-8")], delimiter=delimiter, strict=True), [])


def _header(line: bytes, source: str) -> tuple[list[str], str]:
    """The header's names and the delimiter (a tab if the header has one, else a comma)."""
    delimiter = "\t" if b"\t" in line else ","
    try:
        return _split(line, delimiter), delimiter
    except UnicodeDecodeError:
        raise IngestError(f"{source}: header line is not valid UTF-8") from None
    except csv.Error as error:
        raise IngestError(f"{source}: header line cannot be split into fields ({error})") from None


def parse_delimited(data: bytes, source: str, key: bytes) -> pd.DataFrame:
    """Parse a CSV or tab-separated file with a header line.

    Returns one row per data line with the columns of ``PARSED_COLUMNS``: good rows have an
    empty ``reason``; rejected rows keep their line number (1-based, the header is line 1), the
    reason and, where the record has the header's field count, the pseudonymised user field.

    A record is one line, split on its own: a stray quote or a byte that is not UTF-8 costs that
    line, never the lines after it, and line numbers stay those of the file.
    """
    lines = data.removeprefix(codecs.BOM_UTF8).splitlines()
    if not lines:
        raise IngestError(f"{source}: file is empty")
    header, delimiter = _header(lines[0], source)
    positions = _map_header(header, source, _described(header))
    rows = []
    for line_number, line in enumerate(lines[1:], start=2):
        try:
            values = _split(line, delimiter)
        except UnicodeDecodeError:
            rows.append(_rejected(source, line_number, "not valid UTF-8"))
            continue
        except csv.Error as error:
            rows.append(_rejected(source, line_number, f"cannot be split into fields ({error})"))
            continue
        if all(not value.strip() for value in values):
            continue  # blank lines carry no record
        if len(values) != len(header):
            # Which field is the user's is unknown once the count is off: nothing of the record is kept.
            rows.append(_rejected(source, line_number, f"expected {len(header)} fields, found {len(values)}"))
            continue
        fields = {role: values[index].strip() for role, index in positions.items()}
        fields["user"] = pseudonymize(fields["user"], key) if fields["user"] else ""
        rows.append(_checked(fields, source, line_number))
    return _rows_to_frame(rows)


def parse_parquet(data: bytes, source: str, key: bytes) -> pd.DataFrame:
    """Parse a Parquet file; rejected rows are numbered from 1 in file order."""
    table = pq.read_table(io.BytesIO(data))
    described = ", ".join(f"column {index}: {field.type}" for index, field in enumerate(table.schema, start=1))
    positions = _map_header(table.column_names, source, described)
    columns = {role: table.column(index).to_pylist() for role, index in positions.items()}
    rows = []
    for row_number in range(table.num_rows):
        fields = {
            role: ("" if values[row_number] is None else str(values[row_number]).strip())
            for role, values in columns.items()
        }
        fields["user"] = pseudonymize(fields["user"], key) if fields["user"] else ""
        rows.append(_checked(fields, source, row_number + 1))
    return _rows_to_frame(rows)


def parse_file(data: bytes, source: str, key: bytes) -> pd.DataFrame:
    """Parse one interactions file; a file that cannot be read at all becomes a single reject.

    Arrow's message is left out of that reject: it is not ours to promise it never quotes the data."""
    try:
        if source.lower().endswith(".parquet"):
            return parse_parquet(data, source, key)
        return parse_delimited(data, source, key)
    except IngestError as error:
        return _rows_to_frame([_rejected(source, 0, str(error))])
    except pa.ArrowException as error:
        return _rows_to_frame([_rejected(source, 0, f"{source}: not a readable Parquet file ({type(error).__name__})")])


def merge_duplicates(good: pd.DataFrame) -> pd.DataFrame:
    """Sum the weights of repeated (user, item) pairs; keep the latest timestamp."""
    return good.groupby(["user", "item"], as_index=False, sort=True).agg(
        weight=("weight", "sum"), timestamp=("timestamp", "max")
    )


def assign_split(pairs: pd.DataFrame, config: SplitConfig) -> pd.Series:
    """The split of each (user, item) pair: a function of the pairs and the seed only.

    Each pair gets a seeded hash; within a user, the pairs with the smallest hashes go to test
    and the next ones to validation. No dependence on row order or on other users.
    """
    hash_key = hashlib.sha256(f"encore-split-{config.seed}".encode()).hexdigest()[:16]
    order = pd.util.hash_pandas_object(pairs[["user", "item"]], index=False, hash_key=hash_key)
    frame = pd.DataFrame({"user": pairs["user"].to_numpy(), "order": order.to_numpy()})
    rank = frame.groupby("user")["order"].rank(method="first").to_numpy() - 1
    count = frame.groupby("user")["order"].transform("size").to_numpy()

    n_test = np.where(count >= config.min_items, np.maximum(1, np.round(count * config.test_fraction)), 0)
    remaining = count - n_test
    n_validation = np.where(
        (count >= config.min_items) & (remaining >= config.min_items),
        np.maximum(1, np.round(remaining * config.validation_fraction)),
        0,
    )
    split = np.full(len(pairs), "train", dtype=object)
    split[rank < n_test + n_validation] = "validation"
    split[rank < n_test] = "test"
    return pd.Series(split, index=pairs.index, name="split")


def item_tags(taggings: pd.DataFrame, held_out: pd.DataFrame, top: int = TOP_TAGS) -> tuple[pd.Series, int]:
    """Each item's ``top`` tags by number of tagging events, most used first (ties by name), from
    ``taggings`` (user, item, tag) without the events on ``held_out`` (user, item) pairs; returns the
    tag lists by item and how many events were left out.

    A user's tags on an item held out for evaluation would tell a content model what it is asked to
    predict, through the tags that user also gave their training items.
    """
    marked = taggings.merge(held_out.drop_duplicates(), on=["user", "item"], how="left", indicator=True)
    kept = marked[marked["_merge"] == "left_only"]
    counts = kept.groupby(["item", "tag"]).size().rename("uses").reset_index()
    counts = counts.sort_values(["item", "uses", "tag"], ascending=[True, False, True])
    return counts.groupby("item").head(top).groupby("item")["tag"].agg(list), len(taggings) - len(kept)


def fingerprint(pairs: pd.DataFrame, config: SplitConfig) -> str:
    """sha256 over the canonical interactions and the split settings."""
    canonical = pairs.sort_values(["user", "item"], kind="stable")[["user", "item", "weight", "timestamp"]]
    digest = hashlib.sha256(SCHEMA_VERSION.encode())
    digest.update(json.dumps(config.__dict__, sort_keys=True).encode())
    digest.update(pd.util.hash_pandas_object(canonical, index=False).to_numpy().tobytes())
    return digest.hexdigest()


@dataclass
class InteractionDataset:
    """An ingested dataset: dense id maps, interactions with their split, and its manifest.

    ``interactions`` has columns user_idx, item_idx, weight, timestamp, split; ``users`` maps
    user_idx to the pseudonymised ``user_key``; ``items`` maps item_idx to ``item_id``, ``name``
    and ``tags``.
    """

    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    manifest: dict

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def matrix(self, *splits: str) -> sp.csr_matrix:
        """Users x items matrix of summed weights over the given splits."""
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; choose from {SPLITS}")
        rows = self.interactions[self.interactions["split"].isin(splits)]
        return sp.csr_matrix(
            (rows["weight"].to_numpy(np.float32), (rows["user_idx"].to_numpy(), rows["item_idx"].to_numpy())),
            shape=(self.n_users, self.n_items),
        )

    @classmethod
    def build(
        cls,
        pairs: pd.DataFrame,
        items: pd.DataFrame,
        config: SplitConfig,
        manifest: dict,
        taggings: pd.DataFrame | None = None,
    ) -> "InteractionDataset":
        """Dense ids and the split from merged (user, item, weight, timestamp) pairs.

        ``items`` (item_id, name, tags, optionally ``audio_*`` feature columns) is the catalogue: it may
        hold items nobody played yet. ``taggings`` (user, item, tag events, users pseudonymised as in
        ``pairs``) replace the catalogue's tags with ``item_tags`` of the events outside the validation
        and test pairs.
        """
        split = assign_split(pairs, config).to_numpy()
        if taggings is not None:
            held_out = pairs.loc[split != "train", ["user", "item"]]
            tags, left_out = item_tags(taggings, held_out)
            items = items.assign(tags=[tags.get(item, []) for item in items["item_id"]])
            manifest = {**manifest, "taggings": {"used": len(taggings) - left_out, "held_out": left_out}}
        user_keys = np.sort(pairs["user"].unique())
        catalogue = items.set_index("item_id")
        item_ids = np.union1d(pairs["item"].unique(), catalogue.index.to_numpy(dtype=str))
        catalogue = catalogue.reindex(item_ids)
        users = pd.DataFrame({"user_idx": np.arange(len(user_keys), dtype=np.int32), "user_key": user_keys})
        items_table = pd.DataFrame(
            {
                "item_idx": np.arange(len(item_ids), dtype=np.int32),
                "item_id": item_ids,
                "name": catalogue["name"].fillna(pd.Series(item_ids, index=item_ids)).to_numpy(dtype=str),
                "tags": [list(t) if isinstance(t, list) else [] for t in catalogue["tags"]],
                # Audio features, NaN for an item without audio.
                **{
                    column: catalogue[column].to_numpy(np.float64)
                    for column in catalogue
                    if column.startswith("audio_")
                },
            }
        )
        interactions = pd.DataFrame(
            {
                "user_idx": np.searchsorted(user_keys, pairs["user"].to_numpy()).astype(np.int32),
                "item_idx": np.searchsorted(item_ids, pairs["item"].to_numpy()).astype(np.int32),
                "weight": pairs["weight"].to_numpy(np.float32),
                "timestamp": pairs["timestamp"].to_numpy(np.float64),
                "split": split,
            }
        )
        manifest = {
            **manifest,
            "schema": SCHEMA_VERSION,
            "fingerprint": fingerprint(pairs, config),
            "split": config.__dict__,
            "counts": {
                "users": len(users),
                "items": len(items_table),
                "interactions": len(interactions),
                **{name: int((interactions["split"] == name).sum()) for name in SPLITS},
            },
        }
        return cls(interactions, users, items_table, manifest)

    def save(self, uri: str | os.PathLike, attachments: dict[str, bytes] | None = None) -> str:
        """Publish the dataset under ``uri`` (a folder or S3 prefix) as a new version; returns its folder.

        The tables and ``attachments`` (files of this version besides the tables, such as the ingest's
        rejects) go to a fresh version folder first; ``manifest.json``, naming the version and each file's
        sha256, is replaced last. A writer that dies before then leaves the previous version published.
        """
        uri = str(uri)
        previous = _published_version(uri)
        version = f"{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4().hex[:8]}"
        folder = fs.join(uri, VERSIONS_FOLDER, version)
        files = {f"{name}.parquet": _parquet_bytes(getattr(self, name)) for name in TABLES} | (attachments or {})
        for name, data in files.items():
            fs.write_bytes(fs.join(folder, name), data)
        checksums = {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for name, data in files.items()
        }
        manifest = {**self.manifest, "version": version, "files": checksums}
        fs.write_bytes(fs.join(uri, MANIFEST_FILE), json.dumps(manifest, indent=2).encode())
        _remove_superseded(uri, version, previous)
        return folder

    @classmethod
    def load(cls, uri: str | os.PathLike) -> "InteractionDataset":
        """The version ``uri``'s manifest points at, each of its files checked against its sha256 first.

        Raises DatasetError for a file missing or altered (a half-written version included) and for a
        dataset of the single-folder layout, which has no checksums to check.
        """
        uri = str(uri)
        manifest = _read_manifest(uri)
        folder = fs.join(uri, VERSIONS_FOLDER, manifest["version"])
        contents = {
            name: _verified(uri, folder, name, recorded.get("sha256")) for name, recorded in manifest["files"].items()
        }
        tables = {name: pq.read_table(pa.BufferReader(contents[f"{name}.parquet"])).to_pandas() for name in TABLES}
        tables["items"]["tags"] = tables["items"]["tags"].map(list)
        return cls(tables["interactions"], tables["users"], tables["items"], manifest)


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    return buffer.getvalue()


def _published_version(uri: str) -> str | None:
    """The version ``uri``'s manifest points at; None without one, for the single-folder layout, and for a
    manifest that is not JSON (the single-folder layout wrote it in place): ingesting again must repair
    any dataset."""
    manifest_uri = fs.join(uri, MANIFEST_FILE)
    if not fs.exists(manifest_uri):
        return None
    try:
        version = json.loads(fs.read_bytes(manifest_uri)).get("version")
    except ValueError:
        return None
    return version if _VERSION_ID.fullmatch(str(version)) else None


def _remove_superseded(uri: str, published: str, previous: str | None) -> None:
    """Delete the versions older than ``previous``, the one ``published`` just replaced, which a reader
    that read the old manifest a moment ago may still be reading; a version newer than it that no manifest
    names (a writer died, or is still writing) goes the next time. Never ``published``, whatever the
    clocks that named the versions say. Files of the single-folder layout go at once: a reader of that
    layout would take them for the new version's."""
    filesystem, path = fs.resolve(uri)
    if previous is None:
        for name in UNVERSIONED_FILES:
            if fs.exists(fs.join(uri, name)):
                filesystem.delete_file(f"{path}/{name}")
        return
    selector = pafs.FileSelector(f"{path}/{VERSIONS_FOLDER}", allow_not_found=True)
    for entry in filesystem.get_file_info(selector):
        name = entry.base_name
        if entry.type == pafs.FileType.Directory and _VERSION_ID.fullmatch(name) and previous > name != published:
            filesystem.delete_dir(entry.path)


def _read_manifest(uri: str) -> dict:
    """``uri``'s manifest, refused unless it names a version and files ``save`` could have written."""
    manifest_uri = fs.join(uri, MANIFEST_FILE)
    if not fs.exists(manifest_uri):
        raise FileNotFoundError(f"{uri}: not an ingested dataset (no {MANIFEST_FILE}); run jobs.ingest first")
    manifest = json.loads(fs.read_bytes(manifest_uri))
    if manifest.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"{uri}: dataset schema {manifest.get('schema')!r}, expected {SCHEMA_VERSION!r}")
    if "files" not in manifest:
        raise DatasetError(
            f"{uri}: a dataset of the single-folder layout, without checksums; run jobs.ingest again to rewrite it "
            "(the same input, seed and ENCORE_ID_KEY give the same dataset and fingerprint)"
        )
    files = manifest["files"]
    if not (
        _VERSION_ID.fullmatch(str(manifest.get("version")))
        and isinstance(files, dict)
        and all(_FILE_NAME.fullmatch(str(name)) and isinstance(entry, dict) for name, entry in files.items())
        and {f"{name}.parquet" for name in TABLES} <= set(files)
    ):
        raise DatasetError(f"{uri}: {MANIFEST_FILE} does not name a version and the files of a dataset")
    return manifest


def _verified(uri: str, folder: str, name: str, sha256: str | None) -> bytes:
    """A file's content, refused unless it is the content the manifest recorded."""
    if not fs.exists(fs.join(folder, name)):
        raise DatasetError(f"{uri}: {name} of version {folder.rsplit('/', 1)[-1]} is missing")
    data = fs.read_bytes(fs.join(folder, name))
    if hashlib.sha256(data).hexdigest() != sha256:
        raise DatasetError(
            f"{uri}: {name} of version {folder.rsplit('/', 1)[-1]} does not match its sha256 in {MANIFEST_FILE}: "
            "altered or incompletely written"
        )
    return data
