"""Side experiment: genre models trained on GTZAN's 3-second segments against the 30-second rows.

The 3-second table at hand covers three genres only, classical, jazz and rock (see
``../shared/data/gtzan-features/SOURCE.md``), so it answers one narrow question and no headline:
does a model trained on 3-second segments, whose track prediction is the mean of its segments'
class probabilities, classify whole tracks better than the same model trained on the tracks'
30-second rows? Both train on train + validation of the fault-filtered, artist-disjoint split
(Kereliuk, Sturm and Larsen 2015) restricted to the three genres and are scored on its test songs.
A segment lies in its song's part, so no song straddles train and test. No search: Encore's
``GenreClassifier`` with its defaults and a logistic regression with the C the 10-genre benchmark
chose (0.03), the same settings on both tables. One run prints one table: track accuracy with a 95%
bootstrap interval over test songs, and for the segment models the accuracy of single segments.

    python -m benchmarks.segments [--segments ../shared/data/gtzan-features/features_3_sec.classical-jazz-rock.csv]
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from encore.audio.vectors import feature_matrix
from encore.genre.classifier import evaluate
from encore.genre.data import load_splits, load_table, split_table
from encore.genre.search import make_model

DEFAULT_SEGMENTS = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "gtzan-features"
    / "features_3_sec.classical-jazz-rock.csv"
)
MODELS = {
    "Encore (GenreClassifier defaults)": ("encore", {}),
    "logistic regression (C 0.03)": ("logistic_regression", {"C": 0.03}),
}


def load_segments(path: str | Path) -> pd.DataFrame:
    """The 3-second table with a ``song`` column (``jazz.00012.3.wav`` belongs to ``jazz.00012.wav``)."""
    table = pd.read_csv(path)
    feature_matrix(table, str(path))  # every feature present and finite, or a ValueError naming the file
    parts = table["filename"].str.split(".")
    if not (parts.str.len() == 4).all():
        bad = table["filename"][parts.str.len() != 4].iloc[0]
        raise ValueError(f"{path}: {bad!r} is not a segment name like 'jazz.00012.3.wav'")
    table["song"] = parts.str[0] + "." + parts.str[1] + ".wav"
    return table


def track_probabilities(probabilities: np.ndarray, tracks: np.ndarray) -> tuple[pd.Index, np.ndarray]:
    """Each track's class probabilities: the mean over its rows (one row for a 30-second track)."""
    means = pd.DataFrame(probabilities.astype(np.float64), index=tracks).groupby(level=0, sort=True).mean()
    # Renormalised: float32 rows that sum to 1 within 1e-7 would make the log-loss warn.
    return means.index, means.to_numpy() / means.to_numpy().sum(axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", default=str(DEFAULT_SEGMENTS), help="the 3-second GTZAN feature table")
    args = parser.parse_args(argv)
    segments = load_segments(args.segments)
    genres = sorted(segments["label"].unique())
    splits = {part: [name for name in names if name.split(".")[0] in genres] for part, names in load_splits().items()}
    tracks = split_table(load_table(), splits)
    songs = {part: set(names) for part, names in splits.items()}
    seen = songs["train"] | songs["valid"]
    segment_parts = {
        "seen": segments[segments["song"].isin(seen)],
        "test": segments[segments["song"].isin(songs["test"])],
    }
    track_parts = {"seen": pd.concat([tracks["train"], tracks["valid"]], ignore_index=True), "test": tracks["test"]}
    truth = tracks["test"].set_index("filename")["label"]

    rows = []
    for name, (kind, config) in MODELS.items():
        for table, parts, key in (
            ("30-second rows", track_parts, "filename"),
            ("3-second segments", segment_parts, "song"),
        ):
            model = make_model(kind, config).fit(parts["seen"], parts["seen"]["label"])
            per_row = model.predict_proba(parts["test"])
            names, probabilities = track_probabilities(per_row, parts["test"][key].to_numpy())
            metrics = evaluate(truth.loc[names].to_numpy(), probabilities, model.classes_)
            segment_accuracy = None
            if key == "song":
                predicted = np.asarray(model.classes_)[per_row.argmax(axis=1)]
                segment_accuracy = float(np.mean(predicted == parts["test"]["label"].to_numpy()))
            rows.append((name, table, len(parts["seen"]), metrics, segment_accuracy))

    print(
        f"\nGTZAN {', '.join(genres)}: fault-filtered artist-disjoint split restricted to these genres, "
        f"trained on train + validation ({len(seen)} songs), tested on {len(songs['test'])} songs "
        f"({len(segment_parts['test'])} segments). Figures in %, 95% bootstrap intervals over test songs.\n"
    )
    print("| model | trained on | training rows | **track accuracy** | track macro-F1 | single-segment accuracy |")
    print("|---|---|---:|---|---|---|")
    for name, table, count, metrics, segment_accuracy in rows:
        low, high = metrics["accuracy_ci"]
        f1_low, f1_high = metrics["macro_f1_ci"]
        single = "" if segment_accuracy is None else f"{100 * segment_accuracy:.1f}"
        print(
            f"| {name} | {table} | {count} | {100 * metrics['accuracy']:.1f} [{100 * low:.1f}, {100 * high:.1f}] "
            f"| {100 * metrics['macro_f1']:.1f} [{100 * f1_low:.1f}, {100 * f1_high:.1f}] | {single} |"
        )
    return {f"{name} / {table}": metrics["accuracy"] for name, table, _, metrics, _ in rows}


if __name__ == "__main__":
    main()
