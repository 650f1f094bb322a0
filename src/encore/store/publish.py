"""Saving what a job trained: one step from a fitted object to a version its aliases name."""

import logging
import tempfile
from collections.abc import Iterable
from typing import Protocol

from encore.store.core import ModelStore

logger = logging.getLogger(__name__)


class Saveable(Protocol):
    def save(self, folder: str) -> None: ...


def save_trained(store: ModelStore, trained: Saveable, aliases: Iterable[str], **manifest) -> str:
    """Write ``trained`` to a scratch folder and save it in ``store`` as a new version with ``manifest``
    (``kind``, ``config``, ``metrics``, ``data_fingerprint``, ``preprocessing``: see ``ModelStore.save``),
    then move ``aliases`` to it; returns the version."""
    aliases = list(aliases)
    with tempfile.TemporaryDirectory() as folder:
        trained.save(folder)
        saved = store.save(folder, aliases=aliases, **manifest)
    logger.info("saved %s to %s (aliases: %s)", saved.version, store.uri, ", ".join(aliases))
    return saved.version
