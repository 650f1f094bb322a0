"""Erase a listener from every dataset, model version and Ray Train checkpoint (``encore.privacy.erasure``).

    python -m jobs.erase --user RAW_ID --store artifacts --report /secure/erasures/ticket-123.json
    python -m jobs.erase --user-key 3f2a... --store s3://bucket/prod --dataset s3://bucket/data/lastfm

``--user`` is pseudonymised at once with ``ENCORE_ID_KEY``, the key the data was ingested with (datasets
and versions made under another key are refused); ``--user-key`` takes the pseudonymised form. Under
``ray job submit`` the entrypoint, arguments included, stays in Ray's job records: give ``--user-key``
there (``--print-key`` prints it for a raw id without erasing anything). Aliased versions that held the
listener are replaced (exact removal or a retrain, on Ray, as ``jobs.train`` trains) and the aliases
moved; then every version and checkpoint that held them is deleted, and the store, datasets and
checkpoints are searched for the key. The report (JSON: what was found and removed, with the
pseudonymised key, never the raw id) goes to ``--report`` (outside the store) or to standard output.
"""

import argparse
import json
import logging
import sys

from encore.core.cli import user_errors
from encore.core.runtime import init_ray, setup_logging
from encore.privacy.erasure import check_user_key, erase, summary
from encore.privacy.ids import id_key, key_fingerprint, pseudonymize
from encore.store import DEFAULT_STORE_URI

logger = logging.getLogger("encore.erase")


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="the listener's raw id, pseudonymised here with ENCORE_ID_KEY")
    who.add_argument("--user-key", help="the listener's pseudonymised key (32 hex characters)")
    parser.add_argument("--store", default=DEFAULT_STORE_URI, help="model store folder or s3:// prefix")
    parser.add_argument(
        "--dataset",
        action="append",
        default=[],
        help="a dataset to erase from, besides those the store's versions name",
    )
    parser.add_argument(
        "--checkpoints",
        action="append",
        default=[],
        help="a Ray Train storage, besides STORE/ray-train and those the versions name",
    )
    parser.add_argument("--report", help="where to write the report (outside the store); default: standard output")
    parser.add_argument("--dry-run", action="store_true", help="find and plan only: change nothing")
    parser.add_argument("--skip-verify", action="store_true", help="do not search every file for the key afterwards")
    parser.add_argument("--print-key", action="store_true", help="print the pseudonymised key of --user and stop")
    args = parser.parse_args(argv)
    setup_logging()
    expected = None
    if args.user is not None:
        key = id_key()
        user_key, expected = pseudonymize(args.user, key), key_fingerprint(key)
    else:
        user_key = args.user_key
    with user_errors():
        check_user_key(user_key)
    if args.print_key:
        print(user_key)
        return None
    init_ray()
    with user_errors():
        report = erase(
            user_key,
            args.store,
            args.dataset,
            args.checkpoints,
            expected_key_fingerprint=expected,
            report_uri=args.report,
            dry_run=args.dry_run,
            verify=not args.skip_verify,
        )
    if args.report is None:
        json.dump(report, sys.stdout, indent=2)
        print()
    logger.info("erasure %s: %s", "planned" if args.dry_run else "done", summary(report))
    return report


if __name__ == "__main__":
    main()
