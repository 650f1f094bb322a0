"""The command line every search shares: search on validation, then train and store the best."""

import argparse
import logging

from encore.core import fs
from encore.core.runtime import init_ray, setup_logging, user_errors
from encore.core.search import fixed_settings
from encore.recsys import search as tuning
from encore.recsys.train import train

logger = logging.getLogger("encore.recsys.search")


def main(kind: str, param_space, argv: list[str] | None = None, scheduler=None) -> dict:
    """Parse the arguments, run the search, save the best configuration's model in the store;
    ``param_space`` as ``encore.recsys.search.search`` takes it."""
    parser = argparse.ArgumentParser(description=f"Ray Tune search for the {kind} recommender (selects on validation).")
    parser.add_argument("--dataset", required=True, help="ingested dataset folder or s3:// prefix")
    parser.add_argument("--store", default="./artifacts", help="model store for the best configuration")
    parser.add_argument("--results", default=None, help="where Tune keeps its results (default: STORE/tune)")
    parser.add_argument("--num-samples", type=int, default=1, help="trials (for a grid: repeats of it)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search")
    parser.add_argument("--alias", default=f"tuned-{kind}", help="alias for the stored best model")
    parser.add_argument(
        "--fixed",
        type=fixed_settings,
        default={},
        help='settings every trial keeps, as JSON, e.g. \'{"collaborative": "ease"}\' (not searched)',
    )
    args = parser.parse_args(argv)
    setup_logging()
    init_ray()
    with user_errors():
        results = tuning.search(
            kind,
            param_space,
            fs.absolute(args.dataset),
            args.results or fs.join(fs.absolute(args.store), "tune"),
            num_samples=args.num_samples,
            seed=args.seed,
            fixed=args.fixed,
            scheduler=scheduler,
        )
        best = results.get_best_result()
        version = train(
            args.dataset,
            kind,
            best.config,
            args.store,
            ["latest", args.alias],
            tuning={
                "trials": len(results),
                "metric": tuning.SELECTION_METRIC,
                "best_validation": best.metrics[tuning.SELECTION_METRIC],
                "results": results.experiment_path,
            },
        )
    return {"best_config": best.config, "version": version, "results": results.experiment_path}
