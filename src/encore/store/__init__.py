"""Versioned model store: model folders saved with a manifest to a local folder or S3.

See :class:`ModelStore`; ``python -m encore.store --help`` lists, inspects, promotes,
rolls back and garbage-collects versions from the command line, and removes Ray Train runs
past retention (:mod:`encore.store.runs`).
"""

import os

from encore.store.core import LoadedVersion, ModelStore
from encore.store.errors import ChecksumError, PreprocessingMismatch, PromotionRefused, StoreError, VersionNotFound
from encore.store.manifest import Manifest

#: Where jobs, searches and the store's command line keep models unless told otherwise.
DEFAULT_STORE_URI = os.environ.get("ENCORE_STORE_URI", "./artifacts")

__all__ = [
    "DEFAULT_STORE_URI",
    "ChecksumError",
    "LoadedVersion",
    "Manifest",
    "ModelStore",
    "PreprocessingMismatch",
    "PromotionRefused",
    "StoreError",
    "VersionNotFound",
]
