"""Exceptions raised by the model store; all derive from :class:`StoreError`, an input error: the
message names the version, alias or file at fault."""

from encore.core.errors import InputError


class StoreError(InputError):
    """A model store operation failed; the message says what and where."""


class VersionNotFound(StoreError):
    """No complete version or alias answers to the given reference."""


class ChecksumError(StoreError):
    """A stored file is missing or differs from what the manifest recorded."""


class PreprocessingMismatch(StoreError):
    """A version was built with preprocessing other than the caller expects."""


class PromotionRefused(StoreError):
    """An alias was not moved to a version its consumers could not serve."""
