"""The corpus shipped inside the music21 package, as pieces of steps with their labels.

music21 installs a few thousand encoded works (MusicXML, Humdrum, ABC) beside its code. Encore
reads them from the installed package and never copies them into the repository. Their terms
(``music21/corpus/license.txt``): they are distributed with the permission of the encoders and,
to the best of music21's knowledge, out of copyright in the United States or licensed for use, but
some encodings may not be used commercially. The Essen folk songs, for one, are licensed for
non-commercial use only (``essenFolksong/license.txt``); other pieces carry their terms inside the
files. A model trained on them inherits those terms, so a model's manifest records the corpus it
came from.

:data:`STYLES` groups the corpus folders into the styles a model is conditioned on, and
:data:`PROGRAMS` names the instrument each style is rendered with. A source file is named
``music21:<folder>/<file>`` relative to the corpus, so names (and the split, which hashes them) are
the same on every machine.
"""

from pathlib import Path

from encore.composer.checks import estimate_key
from encore.composer.midi import CHOIR_AAHS, CHURCH_ORGAN, FLUTE, PIANO, STRING_ENSEMBLE, VIOLIN, notes_to_steps
from encore.composer.tokens import DataError, Piece

CORPUS_PREFIX = "music21:"
TERMS = (
    "music21 corpus: distributed with the encoders' permission; some encodings (the Essen folk songs among "
    "them) are for non-commercial use only; see music21/corpus/license.txt"
)
SUFFIXES = (".mxl", ".xml", ".musicxml", ".krn", ".abc")  # music, not the roman-numeral analyses (.rntxt)
# Style name -> music21 corpus folders. Folders with a handful of works are grouped by period.
STYLES = {
    "bach": ("bach",),
    "palestrina": ("palestrina",),
    "monteverdi": ("monteverdi",),
    "trecento": ("trecento", "ciconia"),
    "classical": ("mozart", "haydn", "beethoven"),
    "fiddle": ("ryansMammoth",),  # Ryan's Mammoth Collection (1883): dance tunes, one per file
    # Folk songs and airs; the Essen songs are for non-commercial use only.
    "folk": ("essenFolksong", "oneills1850", "airdsAirs", "miscFolk"),
}
# The instrument each style's music is rendered with, a General MIDI program: what it was written for.
PROGRAMS = {
    "bach": CHURCH_ORGAN,  # chorales: a congregation's hymns, played on the organ
    "palestrina": CHOIR_AAHS,  # unaccompanied choral polyphony
    "monteverdi": CHOIR_AAHS,  # madrigals for voices
    "trecento": CHOIR_AAHS,  # songs (ballate, madrigals) for voices
    "classical": STRING_ENSEMBLE,  # mostly string quartets
    "fiddle": VIOLIN,
    "folk": FLUTE,  # songs and airs: one melody, sustained as a voice sings it
}


def style_program(style: str | None) -> int:
    """The General MIDI program music of ``style`` is rendered with; piano for a style named by a user's
    MIDI folders, which says nothing of the instrument."""
    return PROGRAMS.get(style, PIANO)


def corpus_root() -> Path:
    import music21

    return Path(music21.__file__).parent / "corpus"


def corpus_files(styles: list[str], limit: int | None = None) -> list[tuple[str, str]]:
    """``(source, style)`` of every corpus file of ``styles``; ``limit`` takes that many per style,
    spread evenly over the style's files (sorted by name), so a small sample still covers its folders."""
    unknown = [style for style in styles if style not in STYLES]
    if unknown:
        raise DataError(f"unknown music21 corpus style(s) {', '.join(unknown)}; known: {', '.join(STYLES)}")
    root = corpus_root()
    chosen = []
    for style in styles:
        files = sorted(
            path.relative_to(root).as_posix()
            for folder in STYLES[style]
            for path in (root / folder).rglob("*")
            if path.suffix.lower() in SUFFIXES
        )
        if limit is not None and len(files) > limit:
            files = [files[index * len(files) // limit] for index in range(limit)]
        chosen += [(CORPUS_PREFIX + relative, style) for relative in files]
    return chosen


def parse_corpus_file(source: str, step_beats: float) -> list[Piece]:
    """The pieces of one corpus file (an ABC file may hold hundreds of tunes), each with its title, the
    key estimated from its notes, its tempo (None without a metronome mark) and meter (None without a
    time signature). Raises :class:`DataError` naming the file if music21 cannot read it."""
    import music21

    path = corpus_root() / source.removeprefix(CORPUS_PREFIX)
    try:
        parsed = music21.converter.parse(path)
    except Exception as error:  # music21's parsers raise many types; all mean an unreadable file
        raise DataError(f"{source}: music21 cannot parse it ({type(error).__name__}: {error})") from None
    scores = list(parsed.scores) if isinstance(parsed, music21.stream.Opus) else [parsed]
    pieces = []
    for index, score in enumerate(scores):
        notes = [
            (pitch.midi, float(element.offset), float(element.offset + element.quarterLength))
            for element in score.flatten().notes
            for pitch in getattr(element, "pitches", ())
        ]
        steps = notes_to_steps(notes, step_beats)
        if not any(steps):
            continue
        mark = score.recurse().getElementsByClass(music21.tempo.MetronomeMark).first()
        signature = score.recurse().getElementsByClass(music21.meter.TimeSignature).first()
        title = (score.metadata.title if score.metadata else None) or f"{Path(source).stem} {index + 1}"
        pieces.append(
            Piece(
                steps,
                step_beats,
                source=source,
                index=index,
                title=title,
                key=estimate_key(steps),
                tempo=mark.getQuarterBPM() if mark is not None and mark.number else None,
                meter=(signature.numerator, signature.denominator) if signature is not None else None,
            )
        )
    if not pieces:
        raise DataError(f"{source}: holds no notes")
    return pieces
