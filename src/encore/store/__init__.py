"""Versioned model store: model folders saved with a manifest to a local folder or S3.

See :class:`ModelStore`; ``python -m encore.store --help`` lists, inspects, promotes,
rolls back and garbage-collects versions from the command line, and removes Ray Train runs
past retention (:mod:`encore.store.runs`).
"""

from encore.store.core import DEFAULT_STORE_URI, LoadedVersion, ModelStore
from encore.store.errors import ChecksumError, PreprocessingMismatch, PromotionRefused, StoreError, VersionNotFound
from encore.store.manifest import Manifest

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
