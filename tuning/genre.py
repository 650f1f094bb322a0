"""Search the genre classifier's hyperparameters with Ray Tune on the validation split, then store the best.

Trials fit on the train part of the artist-disjoint GTZAN split and report validation log-loss,
accuracy and macro-F1; test never takes part in the choice. The best configuration is trained and
evaluated by ``jobs.train_genre`` and stored as kind ``genre`` under ``--alias`` (default
``tuned-genre``), with the search recorded in its config and Tune's results under ``STORE/tune/``.

    python -m tuning.genre --store artifacts --num-samples 16
"""

import argparse
import logging

from encore.core import fs
from encore.core.runtime import init_ray, setup_logging, user_errors
from encore.core.search import fixed_settings
from encore.genre.data import load_splits, load_table, split_table
from encore.genre.search import SELECTION_METRIC, SELECTION_MODE, search
from jobs.train_genre import train

logger = logging.getLogger("encore.recsys.search")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="./artifacts", help="model store for the best configuration")
    parser.add_argument("--results", default=None, help="where Tune keeps its results (default: STORE/tune)")
    parser.add_argument("--num-samples", type=int, default=16, help="configurations to try")
    parser.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler and of the models")
    parser.add_argument("--alias", default="tuned-genre", help="alias for the stored best model")
    parser.add_argument(
        "--fixed",
        type=fixed_settings,
        default={},
        help="settings every trial keeps, as JSON, e.g. '{\"members\": 2}' (not searched)",
    )
    args = parser.parse_args(argv)
    setup_logging()
    init_ray()
    with user_errors():
        parts = split_table(load_table(), load_splits())
        results = search(
            "encore",
            parts,
            args.results or fs.join(fs.absolute(args.store), "tune"),
            num_samples=args.num_samples,
            seed=args.seed,
            fixed={"seed": args.seed, **args.fixed},
        )
        best = results.get_best_result()
        version = train(
            args.store,
            best.config,
            ["genre-latest", args.alias],
            tuning={
                "trials": len(results),
                "metric": f"validation {SELECTION_METRIC} ({SELECTION_MODE})",
                "best_validation": {name: best.metrics[name] for name in ("log_loss", "accuracy", "macro_f1")},
                "seed": args.seed,
                "results": results.experiment_path,
            },
        )
    return {"best_config": best.config, "version": version, "results": results.experiment_path}


if __name__ == "__main__":
    main()
