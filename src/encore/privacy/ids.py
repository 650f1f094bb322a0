"""Pseudonymisation of user identifiers.

User ids are replaced by a keyed hash (HMAC-SHA256) the moment they enter Encore, in the
ingest job and in the HTTP ingress alike, so the raw id never reaches an artifact or a log.
The key comes from ``ENCORE_ID_KEY``; ingest and serving must use the same key, and every
model records a fingerprint of it so that a model built under another key is refused. While the
key changes (``encore.privacy.rotation``), ``ENCORE_ID_KEY_PREVIOUS`` holds the one being replaced and
serving accepts models built under either.
"""

import hashlib
import hmac
import logging
import os

logger = logging.getLogger(__name__)

ID_KEY_ENV = "ENCORE_ID_KEY"
# Only for local development: anyone who knows it can re-identify users by brute force.
DEVELOPMENT_KEY = "encore-development-key-not-for-production"

_warned_about_default = False


def id_key() -> bytes:
    """The pseudonymisation key from ``ENCORE_ID_KEY``, or the development default (with a warning)."""
    global _warned_about_default
    key = os.environ.get(ID_KEY_ENV)
    if key:
        return key.encode()
    if not _warned_about_default:
        logger.warning(
            "%s is not set: user ids are pseudonymised with the public development key. "
            "Set a secret key for any real data.",
            ID_KEY_ENV,
        )
        _warned_about_default = True
    return DEVELOPMENT_KEY.encode()


def pseudonymize(user_id: str, key: bytes) -> str:
    """Keyed hash of one user id: 32 hex characters (128 bits of HMAC-SHA256)."""
    return hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()[:32]


def key_fingerprint(key: bytes) -> str:
    """A public fingerprint of the key, so artifacts can say which key made them without revealing it."""
    return hmac.new(key, b"encore/key-fingerprint", hashlib.sha256).hexdigest()[:16]


# During a change of key (see ``encore.privacy.rotation``) the key being replaced; serving accepts versions built
# under either key, each user's id pseudonymised with the key of the version that answers.
PREVIOUS_ID_KEY_ENV = "ENCORE_ID_KEY_PREVIOUS"


def previous_id_key() -> bytes | None:
    """The key being replaced, from ``ENCORE_ID_KEY_PREVIOUS``; None outside a change of key."""
    key = os.environ.get(PREVIOUS_ID_KEY_ENV)
    return key.encode() if key else None


def id_keys() -> dict[str, bytes]:
    """The keys a serving process accepts, by fingerprint: ``ENCORE_ID_KEY`` first, then
    ``ENCORE_ID_KEY_PREVIOUS`` if it is set."""
    keys = [id_key(), previous_id_key()]
    return {key_fingerprint(key): key for key in keys if key is not None}


def pseudonyms(user_id: str, keys: dict[str, bytes]) -> dict[str, str]:
    """``{key fingerprint: pseudonym}`` of one user id under each of ``keys`` (as ``id_keys`` gives them):
    what the ingress hands on, so that a version built under any of them finds the user under its own key."""
    return {fingerprint: pseudonymize(user_id, key) for fingerprint, key in keys.items()}
