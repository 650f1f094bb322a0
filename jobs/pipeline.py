"""The end-to-end pipeline: ingest interactions, train and evaluate a recommender, store it,
and promote it to the alias the Serve application answers from.

    python -m jobs.pipeline --input data/lastfm-hetrec2k --dataset artifacts/datasets/lastfm --store artifacts \
        --model-config configs/hetrec-hybrid.json

Under ``ray job submit --working-dir .`` the job runs in an unpacked copy of the repository, so
give absolute paths (or s3:// URIs): the Serve application reads the same store.
"""

import argparse
import json
import logging
from pathlib import Path

from encore.core.cli import user_errors
from encore.core.runtime import init_ray, setup_logging
from encore.genre.train import train_genre
from encore.recsys.ingest import add_split_arguments, ingest, split_config
from encore.recsys.models import MODELS
from encore.recsys.train import train
from encore.store import DEFAULT_STORE_URI

logger = logging.getLogger("encore.pipeline")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="interactions: file, folder, s3:// prefix or HetRec folder")
    parser.add_argument("--dataset", required=True, help="where to write the ingested dataset")
    parser.add_argument("--store", default=DEFAULT_STORE_URI, help="model store folder or s3:// prefix")
    parser.add_argument("--model", default="popularity", choices=sorted(MODELS))
    parser.add_argument("--params", default="{}", help="model hyperparameters as JSON")
    parser.add_argument(
        "--model-config",
        help="JSON file of the model's kind and params (as configs/hetrec-hybrid.json); replaces --model, --params",
    )
    parser.add_argument("--promote-to", default="production", help="alias to point at the new version")
    parser.add_argument(
        "--genre",
        action="store_true",
        help="also train the genre classifier on the bundled GTZAN table; genre-latest and --genre-alias move to it",
    )
    parser.add_argument("--genre-alias", default="genre-production", help="alias for the genre classifier")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the recommender --promote-to names when it was trained on the same data with the same settings",
    )
    add_split_arguments(parser)
    args = parser.parse_args(argv)
    kind, params = args.model, json.loads(args.params)
    if args.model_config:
        config = json.loads(Path(args.model_config).read_text())
        kind, params = config["kind"], config["params"]
    setup_logging()
    init_ray()
    with user_errors():
        summary = ingest(args.input, args.dataset, split_config(args))
        version = train(args.dataset, kind, params, args.store, ["latest", args.promote_to], reuse=args.reuse)
        genre_version = train_genre(args.store, {}, ["genre-latest", args.genre_alias]) if args.genre else None
    logger.info("pipeline done: %s serves as %r from %s", version, args.promote_to, args.store)
    if genre_version:
        logger.info("genre classifier %s serves as %r", genre_version, args.genre_alias)
    return {"ingest": summary, "version": version, "genre_version": genre_version}


if __name__ == "__main__":
    main()
