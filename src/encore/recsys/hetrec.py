"""The Last.fm HetRec 2011 dataset (hetrec2011-lastfm-2k): its catalogue of artists and tags.

The interactions file, ``user_artists.dat``, is an ordinary tab-separated file with a header and
goes through the generic parser; this module adds what only HetRec has: artist names
(``artists.dat``, UTF-8) and the tagging events of users (``user_taggedartists.dat`` with the tag
vocabulary in ``tags.dat``, which is latin-1), which ``InteractionDataset.build`` turns into each
artist's tags.
"""

import io

import pandas as pd

from encore.core import fs
from encore.privacy.ids import pseudonymize

INTERACTIONS_FILE = "user_artists.dat"


def is_hetrec(uri: str) -> bool:
    return fs.exists(fs.join(uri, INTERACTIONS_FILE))


def _read_table(uri: str, encoding: str) -> pd.DataFrame:
    return pd.read_csv(
        io.BytesIO(fs.read_bytes(uri)), sep="\t", encoding=encoding, dtype=str, quoting=3, keep_default_na=False
    )


def load_catalogue(uri: str) -> pd.DataFrame:
    """Artists as items: ``item_id`` (the HetRec artistID as a string), ``name``, and ``tags`` left
    empty (they come from ``read_taggings``)."""
    artists = _read_table(fs.join(uri, "artists.dat"), "utf-8")
    return pd.DataFrame(
        {"item_id": artists["id"].str.strip(), "name": artists["name"], "tags": [[] for _ in range(len(artists))]}
    )


def read_taggings(uri: str, key: bytes) -> pd.DataFrame | None:
    """Tagging events as (user, item, tag), users pseudonymised with ``key`` on read, tags by name
    (events whose tag is not in the vocabulary are dropped); None when the folder has none."""
    tags_uri = fs.join(uri, "user_taggedartists.dat")
    if not fs.exists(tags_uri):
        return None
    tagged = _read_table(tags_uri, "latin-1")
    vocabulary = _read_table(fs.join(uri, "tags.dat"), "latin-1").set_index("tagID")["tagValue"]
    pseudonyms = {user: pseudonymize(user, key) for user in tagged["userID"].unique()}
    taggings = pd.DataFrame(
        {
            "user": tagged["userID"].map(pseudonyms),
            "item": tagged["artistID"].str.strip(),
            "tag": tagged["tagID"].map(vocabulary),
        }
    )
    return taggings.dropna(subset=["tag"]).reset_index(drop=True)
