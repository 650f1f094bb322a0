"""The report every evaluation gives: its table printed, and kept as JSON rows and Markdown if asked."""

import json
import logging

from encore.core import fs

logger = logging.getLogger(__name__)


def report(rows: list[dict], table: str, output_uri: str | None = None) -> None:
    """Print ``table``; with ``output_uri``, also write ``evaluation.json`` (the rows) and
    ``evaluation.md`` (the table) under it."""
    print(table)
    if output_uri is None:
        return
    output = fs.absolute(output_uri)
    fs.write_bytes(fs.join(output, "evaluation.json"), json.dumps(rows, indent=2).encode())
    fs.write_bytes(fs.join(output, "evaluation.md"), (table + "\n").encode())
    logger.info("wrote %s/evaluation.json and evaluation.md", output)
