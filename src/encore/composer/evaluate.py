"""Stored composers evaluated: likelihoods, and musical checks of what they write against held-out music.

For each version (one Ray task): JSB Chorales test NLL per time step (nats; exact, unconditioned),
held-out NLL per time step on a split of prepared pieces (each given its style, key, tempo and meter,
for a model trained with them), and musical checks (``encore.composer.checks``) of generated pieces,
each asked with the labels of a held-out piece, against the held-out pieces, once per sampling.
``jobs.evaluate_composer`` is the command line.
"""

import logging
import statistics
import time
from pathlib import Path

import ray
import torch

from encore.composer.checks import compare
from encore.composer.checks import statistics as piece_statistics
from encore.composer.compose import ComposerBundle
from encore.composer.data import Corpus, load_corpus
from encore.composer.tokens import DataError, load_jsb
from encore.core import fs
from encore.core.keys import parse_key
from encore.store import ModelStore

logger = logging.getLogger(__name__)

CHECKS = ("notes_per_step", "pitch_range", "in_key", "empty_steps")


def _held_out_nll(bundle: ComposerBundle, corpus: Corpus, split: str) -> float:
    """NLL per step of the split's windows, given their conditions if the model was trained with them."""
    conditions = None
    if bundle.conditioned:
        if corpus.styles != bundle.styles:
            raise DataError(f"the model's styles {bundle.styles} are not the data's {corpus.styles}")
        conditions = corpus.conditions[split]
    return bundle.model.nll_per_step(corpus.steps[split], conditions=conditions)


def evaluate_version(
    store_uri: str,
    ref: str,
    jsb: dict | None,
    corpus: Corpus | None,
    samples: int,
    bars: int,
    seed: int,
    split: str = "test",
    samplings: tuple[dict, ...] = ({},),
) -> list[dict]:
    """The table's rows for one version, one per sampling: its likelihoods and musical checks."""
    torch.set_num_threads(1)
    loaded = ModelStore(store_uri).load(ref)
    if loaded.manifest.kind != "composer":
        raise DataError(f"{ref} is a {loaded.manifest.kind} model, not a composer")
    bundle = ComposerBundle.load(loaded.path)
    row = {"model": ref, "version": loaded.manifest.version, "parameters": bundle.model.num_parameters()}
    if jsb is not None:
        try:
            row["jsb_test_nll_per_step"] = bundle.model.nll_per_step(jsb["test"])
        except DataError as error:  # a model too short, or too narrow, for some of JSB's chorales
            row["jsb_not_scored"] = str(error)
            logger.warning("%s cannot score JSB Chorales: %s", ref, error)
    if corpus is not None and corpus.conditions is not None:
        row["held_out_nll_per_step"] = _held_out_nll(bundle, corpus, split)

    if corpus is not None and corpus.labels is not None:
        reference, labels = corpus.steps[split], corpus.labels[split]
        reference_keys = [parse_key(label["key"]) for label in labels]
    else:
        reference, labels, reference_keys = jsb["test"], [{} for _ in jsb["test"]], None
    held_out = piece_statistics(reference, reference_keys)
    held_out_voices = _voices_by_style(reference, [label.get("style") for label in labels])
    rows = []
    for sampling in samplings:
        checks = _musical_checks(bundle, labels, held_out, sampling, samples, bars, seed)
        voices = {
            style: (generated, held_out_voices.get(style)) for style, generated in checks.pop("voices_by_style").items()
        }
        rows.append({**row, **checks, "voices_by_style": voices, "split": split})
    return rows


def _voices_by_style(pieces: list, styles: list) -> dict:
    """Notes per step of the pieces of each style (style None: pieces without one)."""
    by_style = {}
    for piece, style in zip(pieces, styles):
        by_style.setdefault(style, []).append(piece)
    return {
        style: piece_statistics(group)["notes_per_step"] for style, group in by_style.items() if any(map(any, group))
    }


def _musical_checks(
    bundle: ComposerBundle, labels: list[dict], held_out: dict, sampling: dict, samples: int, bars: int, seed: int
) -> dict:
    generated, keys, seconds, styles, used = [], [], [], [], None
    for index in range(samples):
        # Labels spread evenly over the held-out pieces, so the styles are asked for as often as they occur.
        label = labels[index * len(labels) // samples] if bundle.conditioned else {}
        if label.get("style") not in bundle.styles:
            label = {**label, "style": None}
        began = time.perf_counter()
        composition = bundle.compose(**label, **sampling, bars=bars, seed=seed + index)
        seconds.append(time.perf_counter() - began)
        generated.append(composition.steps)
        styles.append(composition.settings["style"])
        keys.append(parse_key(composition.settings["key"]) if bundle.conditioned else None)
        used = {name: composition.settings[name] for name in ("temperature", "top_k", "top_p")}
    checks = compare(piece_statistics(generated, keys), held_out)
    row = {
        "sampling": used,
        "pitch_class_distance": checks["pitch_class_distance"],
        "voices_by_style": _voices_by_style(generated, styles),
    }
    for name in CHECKS:
        row[name] = checks[name]["generated"]
        row[f"held_out_{name}"] = checks[name]["reference"]
    row["seconds_per_piece"] = statistics.median(seconds)
    row["samples"], row["bars"] = samples, bars
    return row


def _voices_text(voices_by_style: dict) -> str:
    """``bach 3.9 (3.8), fiddle 1.3 (1.2)``: generated (held-out) notes per step of each style asked for."""
    return ", ".join(
        f"{style} {generated:.1f} ({'-' if held_out is None else f'{held_out:.1f}'})"
        for style, (generated, held_out) in sorted(voices_by_style.items(), key=lambda item: str(item[0]))
    )


def _sampling_text(sampling: dict) -> str:
    cuts = [f"{name} {sampling[name]:g}" for name in ("top_k", "top_p") if sampling[name] is not None]
    return ", ".join([f"T {sampling['temperature']:g}", *cuts])


def markdown_table(rows: list[dict]) -> str:
    def number(value, digits=2):
        return "" if value is None else f"{value:.{digits}f}"

    lines = [
        "| model | sampling | JSB test NLL/step | held-out NLL/step | pitch-class distance | notes/step "
        "| voices/step by style | pitch range | in key | empty steps | s/piece |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [
            f"{row['model']} ({row['version']})",
            _sampling_text(row["sampling"]),
            number(row.get("jsb_test_nll_per_step")),
            number(row.get("held_out_nll_per_step")),
            number(row["pitch_class_distance"], 3),
            f"{row['notes_per_step']:.2f} ({row['held_out_notes_per_step']:.2f})",
            _voices_text(row["voices_by_style"]),
            f"{row['pitch_range']:.1f} ({row['held_out_pitch_range']:.1f})",
            f"{row['in_key']:.1%} ({row['held_out_in_key']:.1%})",
            f"{row['empty_steps']:.1%} ({row['held_out_empty_steps']:.1%})",
            number(row["seconds_per_piece"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    split = rows[0]["split"] if rows else "test"
    lines.append(
        f"Musical checks: generated ({split} split) music; pitch-class distance is total variation, 0 is the same."
    )
    for row in rows:
        if "jsb_not_scored" in row:
            lines.append(f"{row['model']} has no JSB figure: {row['jsb_not_scored']}.")
    return "\n".join(lines)


def evaluate_versions(
    store_uri: str, versions: list[str], jsb_path: str, data: str | None, split: str = "test", **options
) -> list[dict]:
    """The rows of every version, each evaluated in a Ray task, against JSB Chorales at ``jsb_path``
    (skipped if absent) and the ``split`` of the prepared pieces ``data``, if given; ``options``
    (``samples``, ``bars``, ``seed``, ``samplings``) as :func:`evaluate_version` takes them."""
    jsb = load_jsb(jsb_path) if Path(jsb_path).is_file() else None
    if jsb is None and data is None:
        raise DataError(f"no held-out music: {jsb_path} is absent and no data was given")
    store_uri = fs.absolute(store_uri)
    corpus = None
    if data:
        # Windows and chords every model covers, so that all score the same held-out music.
        store = ModelStore(store_uri)
        configs = [store.show(ref).config["model"] for ref in versions]
        corpus = load_corpus(data, min(c["max_steps"] for c in configs), min(c["max_notes"] for c in configs))
    evaluate = ray.remote(num_cpus=1)(evaluate_version)
    tasks = [evaluate.remote(store_uri, ref, jsb, corpus, split=split, **options) for ref in versions]
    return [row for rows_of_version in ray.get(tasks) for row in rows_of_version]
