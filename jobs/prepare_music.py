"""Turn MIDI files, or the corpus shipped with music21, into pieces the composer trains on, on Ray Data.

``--input`` is a folder or ``s3://`` prefix of MIDI files (``.mid``, ``.midi``), or
``music21:STYLE,STYLE`` for the music21 corpus (styles in ``encore.composer.corpus.STYLES``;
``music21:all`` for every one). Ray Data tasks parse the files, several per task, spread over the
cluster's workers. A MIDI file's style is ``--style`` if given, else the name of the folder it sits
in under the input (``jazz/tune.mid`` is "jazz"; a file at the top has none). Keys are estimated
from the notes; tempo and meter are read from the file where it has them.

Written under ``--output``: ``pieces.parquet`` (see ``encore.composer.data``), ``errors.parquet``
(every file that could not be read, with the reason) and ``manifest.json`` (counts, step length,
styles, fingerprint). A file that fails never stops the job and is never dropped silently: it is
an errors row, logged with its reason, and counted in the summary.

    python -m jobs.prepare_music --input music21:bach,folk --limit 100 --output artifacts/datasets/music21
    python -m jobs.prepare_music --input s3://bucket/midi --output s3://bucket/datasets/midi
"""

import argparse

from encore.composer.prepare import prepare
from encore.core.cli import user_errors
from encore.core.runtime import init_ray, setup_logging


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="folder or s3:// prefix of MIDI files, or music21:STYLE,...")
    parser.add_argument("--output", required=True, help="folder or s3:// prefix for the pieces")
    parser.add_argument("--step-beats", type=float, default=0.5, help="quarter notes per step (0.5: eighth notes)")
    parser.add_argument("--style", default=None, help="style of every MIDI file (default: its folder's name)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many files (per style for music21)")
    args = parser.parse_args(argv)
    if not args.step_beats > 0:
        parser.error("--step-beats must be positive")
    setup_logging()
    init_ray()
    with user_errors():
        return prepare(args.input, args.output, step_beats=args.step_beats, style=args.style, limit=args.limit)


if __name__ == "__main__":
    main()
