"""Genre classification on GTZAN: Encore's classifier against tuned scikit-learn baselines.

Every model (``encore.genre.search.MODELS``: Encore's classifier, logistic regression, RBF SVM,
random forest, gradient boosting) gets the same Ray Tune search: ``--num-samples`` trials proposed
by optuna's seeded TPE sampler, which fit on the train part of the fault-filtered, artist-disjoint
split (Kereliuk, Sturm and Larsen 2015) and are ranked by validation log-loss. The winner of each is
refitted on train + validation and scored on the 290 test tracks: the headline figures, accuracy
and macro-F1, each with a 95% bootstrap interval over test tracks. Beside them, labelled, the same
configuration scored by stratified random 10-fold CV over all 1,000 tracks (pooled out-of-fold
predictions, bootstrap intervals over tracks), where one artist's songs and GTZAN's duplicates fall
on both sides. One run prints one table.

    python -m benchmarks.genre [--num-samples 16] [--seed 0] [--folds 10]
"""

import argparse
import json
import tempfile
import time

import ray

from encore.core.runtime import init_ray
from encore.genre.data import load_splits, load_table, split_table
from encore.genre.search import MODELS, fit_and_evaluate, random_folds, search

NAMES = {
    "encore": "Encore (log features, wide-and-deep ensemble)",
    "logistic_regression": "logistic regression",
    "rbf_svm": "RBF SVM",
    "random_forest": "random forest",
    "gradient_boosting": "gradient boosting (histogram)",
}


@ray.remote(num_cpus=1)
def _score(name: str, config: dict, parts: dict, table, folds: int, seed: int) -> dict:
    _, metrics = fit_and_evaluate(name, config, parts)
    return {**metrics, "random_folds": random_folds(name, config, table, folds, seed)}


def _cell(metrics: dict, name: str) -> str:
    low, high = metrics[f"{name}_ci"]
    return f"{100 * metrics[name]:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-samples", type=int, default=16, help="Tune trials per model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the searches, the models and the folds")
    parser.add_argument("--folds", type=int, default=10, help="random folds of the side figures")
    parser.add_argument("--output", help="also write every figure as JSON here")
    args = parser.parse_args(argv)
    init_ray()
    table = load_table()
    parts = split_table(table, load_splits())
    started = time.perf_counter()
    best = {}
    with tempfile.TemporaryDirectory() as storage:
        for name in MODELS:
            results = search(
                name, parts, storage, num_samples=args.num_samples, seed=args.seed, fixed={"seed": args.seed}
            )
            result = results.get_best_result()
            best[name] = {"config": result.config, "validation_log_loss": result.metrics["log_loss"]}
    scores = ray.get(
        [_score.remote(name, best[name]["config"], parts, table, args.folds, args.seed) for name in MODELS]
    )
    report = {name: {**best[name], **score} for name, score in zip(MODELS, scores)}

    print(
        f"\nGTZAN 30-second features. Artist-disjoint fault-filtered split: train {len(parts['train'])}, "
        f"validation {len(parts['valid'])}, test {len(parts['test'])} tracks; {args.num_samples} TPE trials per "
        f"model ranked by validation log-loss, seed {args.seed}; the winner refitted on train + validation. "
        f"Figures in %, 95% bootstrap intervals over tracks. {time.perf_counter() - started:.0f} s.\n"
    )
    print(
        "| model | validation acc. | **test accuracy** | **test macro-F1** "
        f"| random {args.folds}-fold accuracy | random {args.folds}-fold macro-F1 |"
    )
    print("|---|---|---|---|---|---|")
    for name, metrics in report.items():
        print(
            f"| {NAMES[name]} | {100 * metrics['validation']['accuracy']:.1f} | {_cell(metrics['test'], 'accuracy')} "
            f"| {_cell(metrics['test'], 'macro_f1')} | {_cell(metrics['random_folds'], 'accuracy')} "
            f"| {_cell(metrics['random_folds'], 'macro_f1')} |"
        )
    print("\nChosen configurations:")
    for name, metrics in report.items():
        print(f"  {name}: {json.dumps(metrics['config'])}")
    if args.output:
        with open(args.output, "w") as out:
            json.dump(report, out, indent=2)
    return report


if __name__ == "__main__":
    main()
