"""Implicit-feedback interactions ingested into an Encore dataset, on Ray Data (``jobs.ingest``).

Reads (user, item, weight[, timestamp]) rows from CSV/TSV or Parquet files at a path or
``s3://`` URI, or a Last.fm HetRec 2011 folder (``user_artists.dat`` with artist names and
tags). Files are parsed and validated row by row inside Ray Data workers; user ids are
pseudonymised there, before anything else sees them. Rejected rows go to ``rejects.csv`` with
their source, line, reason and pseudonymised user key (empty where the user field could not be
located); no part of a rejected record is copied, as malformed input can put a raw id anywhere.
The dataset (dense id maps, a seeded per-user train/validation/test split and a fingerprint) is
written as Parquet, a new version beside the previous one, published when complete (see
``encore.recsys.interactions``): an ingest that dies leaves the previous dataset as it was.

For a catalogue whose items are audio files, ``--audio-features`` names the output of an extraction
run (``jobs.extract_features``): each track becomes item ``<file name without suffix>`` with one
``audio_<feature>`` column per GTZAN feature (log where positive, standardised), the item features
the content and hybrid recommenders read. Tracks nobody played yet join the catalogue as items the
content model can rank.
"""

import argparse
import logging

import pandas as pd
import ray

from encore.audio.extract import read_tracks
from encore.audio.schema import GTZAN_FEATURES
from encore.audio.vectors import FeatureScaler, feature_matrix
from encore.core import fs
from encore.privacy.ids import id_key, key_fingerprint
from encore.recsys import hetrec
from encore.recsys.interactions import (
    AUDIO_PREFIX,
    IngestError,
    InteractionDataset,
    SplitConfig,
    merge_duplicates,
    parse_file,
)

logger = logging.getLogger(__name__)

INPUT_SUFFIXES = (".csv", ".tsv", ".dat", ".txt", ".parquet")
REJECTS_SHOWN = 20
REJECTS_FILE = "rejects.csv"


def _parse_batch(batch: pd.DataFrame, key: bytes, scheme: str) -> pd.DataFrame:
    frames = [parse_file(data, scheme + str(path), key) for path, data in zip(batch["path"], batch["bytes"])]
    return pd.concat(frames, ignore_index=True)


def _input_files(input_uri: str, key: bytes) -> tuple[list[str], pd.DataFrame, pd.DataFrame | None]:
    """The interaction files to read, the item catalogue (empty unless the input has one) and the
    tagging events (None unless it has them)."""
    if hetrec.is_hetrec(input_uri):
        files = [fs.join(input_uri, hetrec.INTERACTIONS_FILE)]
        return files, hetrec.load_catalogue(input_uri), hetrec.read_taggings(input_uri, key)
    files = fs.list_files(input_uri, INPUT_SUFFIXES)
    if not files:
        raise IngestError(f"{input_uri}: no interaction files ({', '.join(INPUT_SUFFIXES)})")
    return files, pd.DataFrame({"item_id": pd.Series(dtype=str), "name": pd.Series(dtype=str), "tags": []}), None


def audio_catalogue(features_uri: str) -> pd.DataFrame:
    """``item_id`` (a track's file name without its suffix) and its ``audio_<feature>`` columns, from the
    track table of the extraction run under ``features_uri``. Raises ValueError naming both files when
    two tracks would be one item."""
    tracks = read_tracks(features_uri)
    item_ids = tracks["path"].str.rsplit("/", n=1).str[-1].str.rsplit(".", n=1).str[0]
    repeated = item_ids[item_ids.duplicated(keep=False)]
    if len(repeated):
        first = tracks["path"][item_ids == repeated.iloc[0]].tolist()
        raise ValueError(f"{features_uri}: {first[0]} and {first[1]} would both be item {repeated.iloc[0]!r}")
    values = feature_matrix(tracks, fs.join(features_uri, "tracks.parquet"))
    scaled = FeatureScaler().fit(values).transform(values)
    columns = {f"{AUDIO_PREFIX}{name}": scaled[:, index] for index, name in enumerate(GTZAN_FEATURES)}
    return pd.DataFrame({"item_id": item_ids.to_numpy(dtype=str), **columns})


def ingest(input_uri: str, output_uri: str, split: SplitConfig, audio_features: str | None = None) -> dict:
    """Run the ingest and return its summary (counts, fingerprint, where things were written)."""
    input_uri, output_uri = fs.absolute(input_uri), fs.absolute(output_uri)
    key = id_key()
    files, catalogue, taggings = _input_files(input_uri, key)
    audio_summary = None
    if audio_features is not None:
        audio_features = fs.absolute(audio_features)
        audio = audio_catalogue(audio_features)
        catalogue = catalogue.merge(audio, on="item_id", how="outer")
        audio_summary = {"source": audio_features, "tracks": len(audio)}
    logger.info("reading %d file(s) from %s", len(files), input_uri)

    filesystem, _ = fs.resolve(files[0])
    paths = [fs.resolve(f)[1] for f in files]
    # One file per batch: a file is the unit a reject names, and files parse in parallel.
    parse_options = {"key": key, "scheme": "s3://" if fs.is_s3(input_uri) else ""}
    parsed = (
        ray.data.read_binary_files(paths, include_paths=True, filesystem=filesystem)
        .map_batches(_parse_batch, fn_kwargs=parse_options, batch_size=1, batch_format="pandas")
        .to_pandas()
    )
    rejects = parsed[parsed["reason"] != ""][["source", "line", "reason", "user"]].rename(columns={"user": "user_key"})
    good = parsed[parsed["reason"] == ""]
    pairs = merge_duplicates(good)

    dataset = InteractionDataset.build(
        pairs,
        catalogue,
        split,
        manifest={
            "sources": files,
            "id_key_fingerprint": key_fingerprint(key),
            "rows": {
                "read": len(parsed),
                "accepted": len(good),
                "rejected": len(rejects),
                "duplicates_merged": len(good) - len(pairs),
            },
            **({"audio_features": audio_summary} if audio_summary else {}),
        },
        taggings=taggings,
    )
    if taggings is not None:
        logger.info(
            "tags of %d items from %d tagging events; %d events on validation/test pairs left out",
            sum(map(bool, dataset.items["tags"])), *dataset.manifest["taggings"].values(),
        )  # fmt: skip
    if audio_summary:
        played = dataset.items["item_id"].isin(pairs["item"])
        with_audio = dataset.items[f"{AUDIO_PREFIX}{GTZAN_FEATURES[0]}"].notna()
        logger.info(
            "audio features of %d tracks from %s: %d played items have them, %d tracks nobody played yet "
            "joined the catalogue, %d played items have none",
            audio_summary["tracks"], audio_summary["source"], (played & with_audio).sum(),
            (~played & with_audio).sum(), (played & ~with_audio).sum(),
        )  # fmt: skip
    # The rejects are part of the version: a reader never pairs a dataset with another run's rejects.
    folder = dataset.save(output_uri, attachments={REJECTS_FILE: rejects.to_csv(index=False).encode()})
    rejects_uri = fs.join(folder, REJECTS_FILE)

    for row in rejects.head(REJECTS_SHOWN).itertuples():
        logger.warning("rejected %s line %d: %s", row.source, row.line, row.reason)
    if len(rejects) > REJECTS_SHOWN:
        logger.warning("... and %d more rejected rows", len(rejects) - REJECTS_SHOWN)
    summary = {
        **dataset.manifest["rows"],
        **dataset.manifest["counts"],
        "fingerprint": dataset.manifest["fingerprint"],
        "dataset": output_uri,
        "rejects": rejects_uri,
    }
    logger.info(
        "read %(read)d rows: %(accepted)d accepted, %(rejected)d rejected, %(duplicates_merged)d duplicates merged",
        summary,
    )
    logger.info(
        "%(users)d users, %(items)d items; train %(train)d, validation %(validation)d, test %(test)d interactions",
        summary,
    )
    logger.info(
        "wrote dataset %s (fingerprint %s) and rejects %s", output_uri, summary["fingerprint"][:12], rejects_uri
    )
    return summary


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SplitConfig()
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the per-user split")
    parser.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    parser.add_argument("--validation-fraction", type=float, default=defaults.validation_fraction)
    parser.add_argument(
        "--min-items", type=int, default=defaults.min_items, help="users with fewer items keep them all in train"
    )


def split_config(args: argparse.Namespace) -> SplitConfig:
    return SplitConfig(args.seed, args.test_fraction, args.validation_fraction, args.min_items)
