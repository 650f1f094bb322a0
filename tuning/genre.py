"""Search the genre classifier's hyperparameters with Ray Tune on the validation split, then store the best.

Trials fit on the train part of the artist-disjoint GTZAN split and report validation log-loss,
accuracy and macro-F1; test never takes part in the choice. The best configuration is trained and
evaluated by ``encore.genre.train`` and stored as kind ``genre`` under ``--alias`` (default
``tuned-genre``), with the search recorded in its config and Tune's results under ``STORE/tune/``.

    python -m tuning.genre --store artifacts --num-samples 16
"""

import argparse

from encore.core.cli import user_errors
from encore.core.runtime import init_ray, setup_logging
from encore.core.search import add_search_arguments
from encore.genre.train import search_and_train
from encore.store import DEFAULT_STORE_URI


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_search_arguments(
        parser, store=DEFAULT_STORE_URI, alias="tuned-genre", num_samples=16, fixed_example='{"members": 2}'
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler and of the models")
    args = parser.parse_args(argv)
    setup_logging()
    init_ray()
    with user_errors():
        return search_and_train(
            args.store, args.alias, results_uri=args.results, num_samples=args.num_samples, seed=args.seed,
            fixed=args.fixed,
        )  # fmt: skip


if __name__ == "__main__":
    main()
