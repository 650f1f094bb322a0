"""Evaluate stored composers: likelihoods, and musical checks of what they write against held-out music.

For each ``--version`` (an alias, a version id, or ``composer`` for the newest), one Ray task:

- JSB Chorales test NLL per time step (nats; exact, unconditioned: nothing about a test chorale but
  its own past), if the JSB JSON is at ``--jsb`` (default: the copy beside the repository);
- held-out NLL per time step on the ``--split`` of ``--data`` (pieces from ``jobs.prepare_music``,
  each given its style, key, tempo and meter, for a model trained with them; ``test`` by default,
  ``valid`` to choose settings without looking at the test pieces);
- musical checks (``encore.composer.checks``): ``--samples`` pieces of ``--bars`` bars, each asked
  with the labels of a held-out piece (or from nothing, for an unconditioned model), against the
  held-out pieces: pitch-class histogram distance, notes per step, pitch range, share of notes in
  key (the requested key; the labelled one for held-out music), empty steps, and seconds per piece;
  once per ``--sampling``: ``model`` (the version's own default sampling, what the service
  answers with), ``T`` (temperature T, no cut) or ``T,P`` (temperature T, top-p P).

Held-out music is that split of ``--data`` if given, else JSB's test chorales. Printed as a
table, and written as ``evaluation.json`` and ``evaluation.md`` under ``--output``.

    python -m jobs.evaluate_composer --version composer-latest --data artifacts/datasets/music21 \\
        --output artifacts/reports/composer
"""

import argparse

from encore.composer.evaluate import evaluate_versions, markdown_table
from encore.composer.ray_train import DEFAULT_DATA
from encore.core.cli import user_errors
from encore.core.reports import report
from encore.core.runtime import init_ray, setup_logging
from encore.store import DEFAULT_STORE_URI


def parse_sampling(text: str) -> dict:
    """``model`` -> {} (the version's own); ``T`` -> temperature T; ``T,P`` -> temperature T and top-p P."""
    if text == "model":
        return {}
    try:
        parts = [float(part) for part in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"sampling {text!r} is not 'model', 'T' or 'T,P'")
    return {"temperature": parts[0], "top_p": parts[1] if len(parts) == 2 else None}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=DEFAULT_STORE_URI, help="model store folder or s3:// prefix")
    parser.add_argument("--version", action="append", default=[], help="alias, version id or 'composer' (repeatable)")
    parser.add_argument("--data", default=None, help="pieces from jobs.prepare_music: held-out NLL and music")
    parser.add_argument("--jsb", default=str(DEFAULT_DATA), help="JSB Chorales JSON (skipped if absent)")
    parser.add_argument("--samples", type=int, default=8, help="pieces generated per model")
    parser.add_argument("--bars", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=("valid", "test"), default="test", help="held-out split of --data")
    parser.add_argument(
        "--sampling",
        type=parse_sampling,
        action="append",
        default=None,
        help="'model' (the version's own; the default), 'T' or 'T,P' (temperature, top-p); repeatable",
    )
    parser.add_argument("--output", default=None, help="folder or s3:// prefix for evaluation.json and evaluation.md")
    args = parser.parse_args(argv)
    setup_logging()
    init_ray()
    with user_errors():
        rows = evaluate_versions(
            args.store, args.version or ["composer-latest"], args.jsb, args.data, split=args.split,
            samples=args.samples, bars=args.bars, seed=args.seed, samplings=tuple(args.sampling or [{}]),
        )  # fmt: skip
    report(rows, markdown_table(rows), args.output)
    return rows


if __name__ == "__main__":
    main()
