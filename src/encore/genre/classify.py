"""The genre of every audio file of a folder or ``s3://`` prefix, by a stored genre model (``jobs.classify``).

Two steps on Ray Data:

1. The extraction job (``encore.audio.extract``) reads, hashes, decodes and analyses the files with
   30-second segments, the windows the genre models were trained on; its tables go to
   ``OUTPUT/features`` and a rerun skips files already analysed. Files that cannot be decoded become
   rows of its errors table, with the reason.
2. Actors that load the model once each predict the genre probabilities of every window; a track's
   probabilities are the mean over its windows (the whole track when it is shorter than 30 s).

Written under ``OUTPUT``: ``predictions.parquet`` (path, sha256, duration, windows, one
``prob_<genre>`` column per genre, ``top_genre``, ``top_probability``, ``model_version``) and
``errors.parquet`` (path, size, sha256, reason).
"""

import logging
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from encore.audio.extract import extract_features
from encore.audio.schema import AUDIO_SUFFIXES, GTZAN_FEATURES, WINDOW_SECONDS
from encore.core import fs
from encore.genre.classifier import GenreClassifier
from encore.genre.data import preprocessing
from encore.store import ModelStore

logger = logging.getLogger(__name__)

KIND = "genre"
WINDOWS_PER_BATCH = 256


class WindowClassifier:
    """Ray Data actor: the genre probabilities of a batch of windows, from a model loaded once."""

    def __init__(self, store_uri: str, version: str):
        loaded = ModelStore(store_uri).load(version, expected_preprocessing=preprocessing())
        self.model = GenreClassifier.load(loaded.path)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        probabilities = self.model.predict_proba(batch)
        columns = {f"prob_{name}": probabilities[:, i] for i, name in enumerate(self.model.classes_)}
        return pd.DataFrame({"path": batch["path"].to_numpy(), **columns})


def windows_of_tracks(tracks: pd.DataFrame, segments: pd.DataFrame) -> pd.DataFrame:
    """One row per window to classify (``path`` + the GTZAN columns): a track's whole 30-second
    segments, or the whole track when it has none (it is shorter than one window)."""
    windows = segments.rename(columns={"track_path": "path"})[["path", *GTZAN_FEATURES]]
    windows = windows[windows["path"].isin(tracks["path"])]
    short = tracks[~tracks["path"].isin(windows["path"])][["path", *GTZAN_FEATURES]]
    return pd.concat([windows, short], ignore_index=True)


def _read(uri: str) -> pd.DataFrame:
    filesystem, path = fs.resolve(uri)
    return pq.read_table(path, filesystem=filesystem).to_pandas()


def classify(
    input_uri: str,
    output_uri: str,
    store_uri: str,
    model_ref: str,
    *,
    workers: int | None = None,
    numba_cache_dir: str | None = None,
) -> dict:
    """Run both steps and return the summary."""
    started = time.perf_counter()
    input_uri, output_uri, store_uri = fs.absolute(input_uri), fs.absolute(output_uri), fs.absolute(store_uri)
    store = ModelStore(store_uri)
    manifest = store.show(model_ref)
    if manifest.kind != KIND:
        raise ValueError(f"{model_ref!r} names {manifest.version}, a {manifest.kind} model, not a genre model")
    # Loaded here too, before any audio is read: a model that fails its checksums or was trained on
    # other features stops the job now, and its genres name the output columns.
    loaded = store.load(manifest.version, expected_preprocessing=preprocessing())
    prob_columns = [f"prob_{name}" for name in GenreClassifier.load(loaded.path).classes_]
    extraction = extract_features(
        input_uri,
        fs.join(output_uri, "features"),
        segment_seconds=WINDOW_SECONDS,
        workers=workers,
        numba_cache_dir=numba_cache_dir,
    )
    tracks, errors = _read(extraction["tracks_uri"]), _read(extraction["errors_uri"])
    # The features folder keeps every file ever analysed there: classify this input's files only.
    listed = set(fs.list_files(input_uri, AUDIO_SUFFIXES))
    tracks, errors = tracks[tracks["path"].isin(listed)], errors[errors["path"].isin(listed)]
    windows = windows_of_tracks(tracks, _read(extraction["segments_uri"]))

    predictions = pd.DataFrame(columns=["path", "windows", *prob_columns])
    if len(windows):
        workers = min(workers or int(ray.cluster_resources().get("CPU", 1)), max(1, len(windows) // WINDOWS_PER_BATCH))
        per_window = (
            ray.data.from_pandas(windows)
            .map_batches(
                WindowClassifier,
                fn_constructor_args=(store_uri, manifest.version),
                batch_size=WINDOWS_PER_BATCH,
                batch_format="pandas",
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=1,
            )
            .to_pandas()
        )
        predictions = per_window.groupby("path", sort=True).mean().reset_index()
        predictions.insert(1, "windows", per_window.groupby("path", sort=True).size().to_numpy())
    table = tracks[["path", "sha256", "duration"]].merge(predictions, on="path").sort_values("path")
    probabilities = table[prob_columns].to_numpy(dtype=np.float64).reshape(len(table), len(prob_columns))
    table["top_genre"] = [prob_columns[i].removeprefix("prob_") for i in probabilities.argmax(axis=1)]
    table["top_probability"] = probabilities.max(axis=1, initial=0.0)
    table["model_version"] = manifest.version

    filesystem, path = fs.resolve(output_uri)
    filesystem.create_dir(path, recursive=True)
    metadata = {"encore.model_version": manifest.version, "encore.window_seconds": str(WINDOW_SECONDS)}
    written = {}
    for name, frame in (("predictions", table), ("errors", errors.sort_values("path"))):
        written[f"{name}_uri"] = fs.join(output_uri, f"{name}.parquet")
        arrow = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(metadata)
        pq.write_table(arrow, f"{path}/{name}.parquet", filesystem=filesystem)
    summary = {
        "files": len(listed),
        "classified": len(table),
        "errors": len(errors),
        "model_version": manifest.version,
        "genres": table["top_genre"].value_counts().sort_index().to_dict(),
        "first_errors": list(zip(errors["path"], errors["reason"]))[:5],
        "wall_s": time.perf_counter() - started,
        **written,
    }
    logger.info(
        "%(files)d file(s): %(classified)d classified, %(errors)d error(s) in %(wall_s).1f s with %(model_version)s",
        summary,
    )
    logger.info("top genres: %s", ", ".join(f"{name} {count}" for name, count in summary["genres"].items()) or "none")
    for path_, reason in summary["first_errors"]:
        logger.warning("error: %s: %s", path_, reason)
    logger.info("wrote %s and %s", summary["predictions_uri"], summary["errors_uri"])
    return summary
