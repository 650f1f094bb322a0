"""Change the user-id pseudonymisation key of datasets and stored recommenders, without retraining.

The keys come from the environment, never the command line: ``ENCORE_ID_KEY`` the new key,
``ENCORE_ID_KEY_PREVIOUS`` the one being replaced. ``--input`` is the original input of the dataset
(what ``jobs.ingest`` read: the only place the raw ids exist). Translates, in this process's memory
only, the pseudonyms of each ``--dataset`` and of the recommender versions the store's aliases name
(``--all-versions``: every recommender version under the previous key), publishes them as new versions
and moves the aliases to them. Nothing is published if a user is missing from the input. See
``encore.privacy.rotation`` and the README's privacy section for the procedure around it.

    export ENCORE_ID_KEY="$(cat ~/.encore/id_key.new)" ENCORE_ID_KEY_PREVIOUS="$(cat ~/.encore/id_key)"
    python -m jobs.rotate_key --input data/lastfm-hetrec2k --dataset artifacts/datasets/lastfm-hetrec2k \\
        --store artifacts

It needs no Ray cluster: the translation is built in this process, which is where it must stay.
"""

import argparse
import json
import logging
import os

from encore.core.cli import user_errors
from encore.core.runtime import setup_logging
from encore.privacy.rotation import rotate, rotation_keys

logger = logging.getLogger("encore.rotate_key")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="the original input (file, folder, s3:// prefix, HetRec folder)")
    parser.add_argument("--dataset", action="append", default=[], help="dataset folder or s3:// prefix (repeatable)")
    parser.add_argument("--store", help="model store folder or s3:// prefix whose recommenders to rotate")
    parser.add_argument(
        "--all-versions", action="store_true", help="every recommender version under the previous key, not only aliased"
    )
    args = parser.parse_args(argv)
    if not args.dataset and not args.store:
        parser.error("name at least one --dataset or a --store")
    setup_logging()
    with user_errors():
        previous, new = rotation_keys(dict(os.environ))
        summary = rotate(args.input, previous, new, args.dataset, args.store, args.all_versions)
    logger.info("rotation done: %s", json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
