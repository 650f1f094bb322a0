"""Evaluate recommenders side by side on the test split of an ingested dataset.

Each model given by kind (``--model als`` or ``--model 'ease:{"regularization": 300}'``) is fitted
on train + validation; each stored version (``--version production``) is used as stored, after a
check that it was trained on this dataset. All are ranked over the whole catalogue for the test
users, excluding what they were fitted on. One table: NDCG@10 with a bootstrap 95% interval over
users, Recall@20, Precision@10, MAP@10, coverage@10, NDCG@10 on cold-start items only (items with
few training interactions), and fit time. Printed, and written as JSON and Markdown.

    python -m jobs.evaluate --dataset artifacts/datasets/lastfm-hetrec2k --model popularity \\
        --model 'popularity:{"by": "weight"}' --output artifacts/reports/popularity
"""

import argparse

from encore.core.cli import user_errors
from encore.core.reports import report
from encore.core.runtime import init_ray, setup_logging
from encore.recsys.evaluate import evaluate_all, markdown_table
from encore.recsys.metrics import COLD_MAX_LISTENERS
from encore.store import DEFAULT_STORE_URI


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="ingested dataset folder or s3:// prefix")
    parser.add_argument("--model", action="append", default=[], help="KIND or 'KIND:{json params}' (repeatable)")
    parser.add_argument("--version", action="append", default=[], help="stored version or alias (repeatable)")
    parser.add_argument("--store", default=DEFAULT_STORE_URI, help="model store of --version")
    parser.add_argument(
        "--cold-max", type=int, default=COLD_MAX_LISTENERS, help="items with at most this many training users are cold"
    )
    parser.add_argument("--output", default=None, help="folder or s3:// prefix for evaluation.json and evaluation.md")
    args = parser.parse_args(argv)
    if not args.model and not args.version:
        parser.error("give at least one --model or --version")
    setup_logging()
    init_ray()
    with user_errors():
        rows = evaluate_all(args.dataset, args.model, args.version, args.store, args.cold_max)
    report(rows, markdown_table(rows), args.output)
    return rows


if __name__ == "__main__":
    main()
