"""The Last.fm HetRec 2011 dataset (hetrec2011-lastfm-2k): its catalogue of artists and tags.

The interactions file, ``user_artists.dat``, is an ordinary tab-separated file with a header and
goes through the generic parser; this module adds what only HetRec has: artist names
(``artists.dat``, UTF-8) and the tags users gave them (``user_taggedartists.dat`` with the tag
vocabulary in ``tags.dat``, which is latin-1).
"""

import io

import pandas as pd

from encore import fs

INTERACTIONS_FILE = "user_artists.dat"
TOP_TAGS = 10


def is_hetrec(uri: str) -> bool:
    return fs.exists(fs.join(uri, INTERACTIONS_FILE))


def _read_table(uri: str, encoding: str) -> pd.DataFrame:
    return pd.read_csv(
        io.BytesIO(fs.read_bytes(uri)), sep="\t", encoding=encoding, dtype=str, quoting=3, keep_default_na=False
    )


def load_catalogue(uri: str, top_tags: int = TOP_TAGS) -> pd.DataFrame:
    """Artists as items: ``item_id`` (the HetRec artistID as a string), ``name`` and ``tags``,
    the ``top_tags`` tags applied by the most users, most used first. User ids in the tagging
    file are dropped on read: only per-artist counts are kept."""
    artists = _read_table(fs.join(uri, "artists.dat"), "utf-8")
    items = pd.DataFrame({"item_id": artists["id"].str.strip(), "name": artists["name"]})
    tags_uri = fs.join(uri, "user_taggedartists.dat")
    if not fs.exists(tags_uri):
        return items.assign(tags=[[] for _ in range(len(items))])
    tagged = _read_table(tags_uri, "latin-1")[["artistID", "tagID"]]
    vocabulary = _read_table(fs.join(uri, "tags.dat"), "latin-1").set_index("tagID")["tagValue"]
    counts = tagged.value_counts().rename("uses").reset_index()
    counts = counts.sort_values(["artistID", "uses", "tagID"], ascending=[True, False, True])
    counts["tag"] = counts["tagID"].map(vocabulary)
    top = counts.dropna(subset=["tag"]).groupby("artistID").head(top_tags)
    tags_by_artist = top.groupby("artistID")["tag"].agg(list)
    items["tags"] = [tags_by_artist.get(item_id, []) for item_id in items["item_id"]]
    return items
