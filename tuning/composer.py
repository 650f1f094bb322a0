"""Search the composer: learning rate, width, depth and dropout, with ASHA over epochs.

TPE proposes the configurations (``encore.composer.search.param_space``); trials train on the train
split and report the validation NLL per time step after every epoch; ASHA stops the poor ones early,
and the best (lowest validation NLL, never test) is trained again on Ray Train by
``encore.composer.ray_train`` and stored under the alias ``tuned-composer``, with the search recorded in
its config and Tune's results under ``STORE/tune/``.

    python -m tuning.composer --data artifacts/datasets/music21 --store artifacts --num-samples 8 --epochs 6
"""

import argparse

from encore.composer.ray_train import DEFAULT_DATA
from encore.composer.search import search_and_train
from encore.composer.train import add_arguments, configs_from_arguments
from encore.core.cli import user_errors
from encore.core.runtime import init_ray, setup_logging
from encore.core.search import add_search_arguments
from encore.store import DEFAULT_STORE_URI


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="JSB Chorales JSON or a jobs.prepare_music folder")
    add_search_arguments(parser, store=DEFAULT_STORE_URI, alias="tuned-composer", num_samples=8)
    parser.add_argument(
        "--storage", default=None, help="Ray Train checkpoints of the final run (default: STORE/ray-train)"
    )
    parser.add_argument("--grace-epochs", type=int, default=1, help="epochs every trial gets before ASHA may stop it")
    parser.add_argument("--search-seed", type=int, default=0, help="seed of the random search")
    add_arguments(parser)  # the base configuration; the search overrides lr, d_model, layers, dropout
    args = parser.parse_args(argv)
    try:
        base_model, base_train = configs_from_arguments(args)
    except ValueError as error:
        parser.error(str(error))
    setup_logging()
    init_ray()
    with user_errors():
        return search_and_train(
            args.data, args.store, base_model, base_train, args.alias, results_uri=args.results,
            storage=args.storage, num_samples=args.num_samples, grace_epochs=args.grace_epochs, seed=args.search_seed,
        )  # fmt: skip


if __name__ == "__main__":
    main()
