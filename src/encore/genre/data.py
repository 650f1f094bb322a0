"""The genre classifier's data: the GTZAN 30-second feature table and the fault-filtered,
artist-disjoint split of Kereliuk, Sturm and Larsen (2015).

The files are not part of the installed package: they come with no licence, for research and
evaluation use only (``data/gtzan-features/SOURCE.md``), so Encore keeps them in its repository and
never redistributes them in a wheel. :func:`data_dir` finds them: ``$ENCORE_GTZAN_DIR`` when set
(an installed package, as in the Docker image, which sets it), else the repository's
``data/gtzan-features`` beside the source tree the package runs from (a checkout or an editable
install); anything else is an error that says how to point at them.
"""

import hashlib
import os
from pathlib import Path

import pandas as pd

from encore.audio.schema import FEATURE_VERSION, SAMPLE_RATE, WINDOW_SECONDS
from encore.audio.vectors import feature_matrix

DATA_DIR_VARIABLE = "ENCORE_GTZAN_DIR"
SOURCE_TREE_DATA_DIR = Path(__file__).resolve().parents[3] / "data" / "gtzan-features"
TABLE_NAME = "features_30_sec.csv"
SPLITS = ("train", "valid", "test")
SPLIT_FILE = "splits/gtzan_fault_filtered_{}.txt"


def data_dir() -> Path:
    """The folder holding ``features_30_sec.csv`` and ``splits/`` (see the module docstring).

    Raises FileNotFoundError when ``$ENCORE_GTZAN_DIR`` names a folder without the table, or when it
    is unset and the package does not run from Encore's source tree."""
    configured = os.environ.get(DATA_DIR_VARIABLE)
    folder = Path(configured) if configured else SOURCE_TREE_DATA_DIR
    if (folder / TABLE_NAME).is_file():
        return folder
    if configured:
        raise FileNotFoundError(f"{DATA_DIR_VARIABLE}={configured}: no {TABLE_NAME} there")
    raise FileNotFoundError(
        f"the GTZAN feature table is not installed with the package (it is for research use only); set "
        f"{DATA_DIR_VARIABLE} to a folder holding {TABLE_NAME} and splits/, such as data/gtzan-features "
        "of Encore's repository"
    )


def preprocessing() -> dict:
    """What a process that computes features for a stored genre model must share with its training data."""
    return {"feature_version": FEATURE_VERSION, "sample_rate": SAMPLE_RATE, "window_seconds": WINDOW_SECONDS}


def load_table(path: str | Path | None = None) -> pd.DataFrame:
    """The GTZAN 30-second feature table (by default the one in :func:`data_dir`): ``filename``, ``label``
    and the 57 feature columns.

    Raises ValueError naming the file and what is wrong: a missing column, a value that is not a
    finite number, a repeated file name, or a label that is not the file name's prefix.
    """
    path = path or data_dir() / TABLE_NAME
    table = pd.read_csv(path)
    for column in ("filename", "label"):
        if column not in table.columns:
            raise ValueError(f"{path}: no {column!r} column")
    feature_matrix(table, str(path))
    repeated = table["filename"][table["filename"].duplicated()]
    if len(repeated):
        raise ValueError(f"{path}: file name {repeated.iloc[0]!r} appears more than once")
    mislabelled = table[table["filename"].str.split(".").str[0] != table["label"]]
    if len(mislabelled):
        row = mislabelled.iloc[0]
        raise ValueError(f"{path}: {row['filename']!r} is labelled {row['label']!r}, not its file name's genre")
    return table


def load_splits(folder: str | Path | None = None) -> dict[str, list[str]]:
    """``{"train", "valid", "test"}`` file names (``blues.00029.wav``) of the fault-filtered split, by
    default the one in :func:`data_dir`.

    The split files list ``genre/genre.NNNNN.wav`` one per line. Raises ValueError when a line does
    not look like that or a file appears in two parts.
    """
    splits, seen = {}, {}
    for part in SPLITS:
        path = Path(folder or data_dir()) / SPLIT_FILE.format(part)
        names = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            genre, _, name = line.strip().partition("/")
            if not name.startswith(f"{genre}.") or not name.endswith(".wav"):
                raise ValueError(f"{path}, line {number}: expected 'genre/genre.NNNNN.wav', found {line!r}")
            if name in seen:
                raise ValueError(f"{path}, line {number}: {name} is also in the {seen[name]} split")
            seen[name] = part
            names.append(name)
        splits[part] = names
    return splits


def split_table(table: pd.DataFrame, splits: dict[str, list[str]]) -> dict[str, pd.DataFrame]:
    """The rows of each part of ``splits``, in the split files' order; raises ValueError for a name the table lacks."""
    indexed = table.set_index("filename", drop=False)
    parts = {}
    for part, names in splits.items():
        missing = [name for name in names if name not in indexed.index]
        if missing:
            raise ValueError(f"the {part} split names {len(missing)} file(s) the table lacks, e.g. {missing[0]}")
        parts[part] = indexed.loc[names].reset_index(drop=True)
    return parts


def data_fingerprint(*paths: str | Path) -> str:
    """sha256 over the bytes of the files a model was trained and evaluated on."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return f"sha256:{digest.hexdigest()}"
