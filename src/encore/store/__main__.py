"""Command line for the model store: ``python -m encore.store --help``."""

import argparse
import json
import logging
import sys
from collections import defaultdict

from encore.core import fs
from encore.store import DEFAULT_STORE_URI, Manifest, ModelStore, StoreError, runs

HEADLINE_METRICS = 2
# Shown first in `list` when a model reports them; nested metrics are named like "test.ndcg@10".
PREFERRED_METRICS = ("validation.ndcg@10", "test.ndcg@10", "accuracy", "macro_f1")


def _format_value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _flatten(metrics: dict, prefix: str = "") -> dict:
    flat = {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _headline(metrics: dict) -> list[tuple[str, object]]:
    flat = _flatten(metrics)
    preferred = [(name, flat[name]) for name in PREFERRED_METRICS if name in flat]
    return (preferred or list(flat.items()))[:HEADLINE_METRICS]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _list(store: ModelStore, kind: str | None) -> str:
    manifests = store.list(kind)
    if not manifests:
        return f"no versions in {store.uri}" + (f" of kind {kind!r}" if kind else "")
    aliases_of = defaultdict(list)
    for alias, version in sorted(store.aliases().items()):
        aliases_of[version].append(alias)
    rows = [["VERSION", "KIND", "CREATED (UTC)", "ALIASES", "METRICS"]]
    for manifest in manifests:
        headline = _headline(manifest.metrics)
        rows.append(
            [
                manifest.version,
                manifest.kind,
                manifest.created_at[:19].replace("T", " "),
                ",".join(aliases_of[manifest.version]) or "-",
                " ".join(f"{name}={_format_value(value)}" for name, value in headline) or "-",
            ]
        )
    return _table(rows)


def _show(manifest: Manifest) -> str:
    return json.dumps(manifest.to_dict(), indent=2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m encore.store",
        description="Inspect and manage versioned models in a model store.",
    )
    parser.add_argument(
        "--uri",
        default=DEFAULT_STORE_URI,
        help="store location: a local path or s3://bucket/prefix (default: $ENCORE_STORE_URI or ./artifacts)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the store does")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="list complete versions, newest first")
    listing.add_argument("--kind", help="only versions of this model kind")

    show = commands.add_parser("show", help="print a version's manifest as JSON")
    show.add_argument("ref", help="version id or alias")

    verify = commands.add_parser("verify", help="re-hash every file of a version in the store")
    verify.add_argument("ref", help="version id or alias")

    promote = commands.add_parser(
        "promote", help="point an alias at a version the Serve application can serve from it (refused otherwise)"
    )
    promote.add_argument("ref", help="version id, alias, or kind (its newest version)")
    promote.add_argument("--alias", default="production", help="alias to move (default: production)")

    rollback = commands.add_parser("rollback", help="point an alias back at its previous version")
    rollback.add_argument("--alias", default="production", help="alias to move back (default: production)")

    export = commands.add_parser("export", help="copy a version, verified, into FOLDER/<version id>/ (for import)")
    export.add_argument("ref", help="version id or alias")
    export.add_argument("folder", help="local folder to export into")

    importing = commands.add_parser(
        "import", help="add a version that export wrote, checksums verified, under its own id (refused if tampered)"
    )
    importing.add_argument("folder", help="the exported version's folder (named by its version id)")
    importing.add_argument(
        "--alias", action="append", default=[], help="alias to point at it, as promote would (repeatable)"
    )

    gc = commands.add_parser(
        "gc",
        help="delete old unaliased versions, leftovers of failed saves, and Ray Train runs past retention",
        description="Delete versions nobody needs (older than the newest --keep of their kind and named by no "
        "alias, or left incomplete by a failed save) and Ray Train runs under --checkpoints past retention: "
        "a run whose job saved its model more than --checkpoint-days ago, or an unfinished run (its job never "
        "saved: crashed or still running) not written to for --unfinished-days. Prints every run kept and why.",
    )
    gc.add_argument("--keep", type=int, default=5, help="newest versions to keep per kind (default: 5)")
    gc.add_argument(
        "--checkpoints",
        metavar="PATH",
        help="Ray Train storage of the training jobs: folder or s3:// prefix (default: STORE/ray-train, "
        "their default --storage / --train-storage)",
    )
    gc.add_argument(
        "--checkpoint-days",
        type=float,
        metavar="DAYS",
        default=runs.DEFAULT_CHECKPOINT_DAYS,
        help="keep a finished run's checkpoints this many days after its job saved the model (default: %(default)g)",
    )
    gc.add_argument(
        "--unfinished-days",
        type=float,
        metavar="DAYS",
        default=runs.DEFAULT_UNFINISHED_DAYS,
        help="keep an unfinished run, resumable by running its job again, this many days after its last write "
        "(default: %(default)g)",
    )
    gc.add_argument("--dry-run", action="store_true", help="only print what would be deleted")
    return parser


def _gc(args: argparse.Namespace, store: ModelStore) -> str:
    for option, days in (("--checkpoint-days", args.checkpoint_days), ("--unfinished-days", args.unfinished_days)):
        if not days >= 0:  # refused before anything is removed
            raise ValueError(f"{option} must be >= 0, got {days}")
    removed = store.gc(keep=args.keep, dry_run=args.dry_run)
    checkpoints = args.checkpoints or fs.join(store.uri, "ray-train")
    decisions = runs.collect_runs(
        checkpoints,
        checkpoint_days=args.checkpoint_days,
        unfinished_days=args.unfinished_days,
        dry_run=args.dry_run,
    )
    verb = "would remove" if args.dry_run else "removed"
    lines = [f"{verb} {version}" for version in removed]
    lines += [decision.describe(args.dry_run) for decision in decisions if decision.remove]
    if not lines:
        lines.append("nothing to remove")
    lines += [decision.describe(args.dry_run) for decision in decisions if not decision.remove]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> str:
    store = ModelStore(args.uri)
    match args.command:
        case "list":
            return _list(store, args.kind)
        case "show":
            return _show(store.show(args.ref))
        case "verify":
            manifest = store.verify(args.ref)
            return f"ok: {manifest.version} ({len(manifest.files)} files match the manifest)"
        case "promote":
            from encore.serving.versions import serving_store  # the models' code: only promote needs it

            return f"{args.alias} -> {serving_store(args.uri).promote(args.ref, alias=args.alias)}"
        case "export":
            return f"exported to {store.export(args.ref, args.folder)}"
        case "import":
            from encore.serving.versions import serving_store

            manifest = serving_store(args.uri).import_version(args.folder, aliases=args.alias)
            pointed = "".join(f"\n{alias} -> {manifest.version}" for alias in args.alias)
            return f"imported {manifest.version} ({len(manifest.files)} files verified){pointed}"
        case "rollback":
            return f"{args.alias} -> {store.rollback(alias=args.alias)}"
        case "gc":
            return _gc(args, store)
    raise AssertionError(f"unhandled command {args.command}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        print(run(args))
    except (StoreError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
