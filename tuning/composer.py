"""Search the composer: learning rate, width, depth and dropout, with ASHA over epochs.

TPE proposes the configurations (``encore.composer.search.param_space``); trials train on the train
split and report the validation NLL per time step after every epoch; ASHA stops the poor ones early,
and the best (lowest validation NLL, never test) is trained again on Ray Train by
``jobs.train_composer`` and stored under the alias ``tuned-composer``, with the search recorded in
its config and Tune's results under ``STORE/tune/``.

    python -m tuning.composer --data artifacts/datasets/music21 --store artifacts --num-samples 8 --epochs 6
"""

import argparse
import logging

from encore.composer import DataError
from encore.composer.data import load_corpus
from encore.composer.search import SELECTION_METRIC, configs, search
from encore.composer.train import add_arguments, configs_from_arguments
from encore.core import fs
from encore.core.runtime import init_ray, setup_logging, user_errors
from jobs.train_composer import DEFAULT_DATA, train_composer

logger = logging.getLogger("encore.recsys.search")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="JSB Chorales JSON or a jobs.prepare_music folder")
    parser.add_argument("--store", default="./artifacts", help="model store for the best configuration")
    parser.add_argument("--results", default=None, help="where Tune keeps its results (default: STORE/tune)")
    parser.add_argument(
        "--storage", default=None, help="Ray Train checkpoints of the final run (default: STORE/ray-train)"
    )
    parser.add_argument("--num-samples", type=int, default=8, help="configurations to try")
    parser.add_argument("--grace-epochs", type=int, default=1, help="epochs every trial gets before ASHA may stop it")
    parser.add_argument("--search-seed", type=int, default=0, help="seed of the random search")
    parser.add_argument("--alias", default="tuned-composer", help="alias for the stored best model")
    add_arguments(parser)  # the base configuration; the search overrides lr, d_model, layers, dropout
    args = parser.parse_args(argv)
    try:
        base_model, base_train = configs_from_arguments(args)
    except ValueError as error:
        parser.error(str(error))
    setup_logging()
    init_ray()
    store = fs.absolute(args.store)
    with user_errors():
        try:
            corpus = load_corpus(args.data, base_model.max_steps, base_model.max_notes)
            results = search(
                corpus,
                base_model,
                base_train,
                args.results or fs.join(store, "tune"),
                num_samples=args.num_samples,
                grace_epochs=args.grace_epochs,
                seed=args.search_seed,
            )
            best = results.get_best_result()
            model_config, train_config = configs(best.config, base_model, base_train)
            version = train_composer(
                args.data,
                store,
                model_config,
                train_config,
                storage=args.storage or fs.join(store, "ray-train"),
                aliases=("composer-latest", args.alias),
                tuning={
                    "trials": len(results),
                    "metric": SELECTION_METRIC,
                    "best_config": best.config,
                    "best_validation": best.metrics[SELECTION_METRIC],
                    "results": results.experiment_path,
                },
            )
        except DataError as error:
            raise SystemExit(f"error: {error}") from None
    return {"best_config": best.config, "version": version, "results": results.experiment_path}


if __name__ == "__main__":
    main()
