"""Who may call Encore: API keys of client applications, their scopes, the models they may select,
and their rate limits.

Keys live in a JSON file (locally ``artifacts/api_keys.json``; in Kubernetes a mounted Secret) that
holds only their SHA-256, never the keys: a key is 32 random bytes, so a plain hash cannot be
reversed and is safe to compare by lookup. Each entry::

    {"name": "web", "sha256": "…", "scopes": ["recommend", "classify"], "rate": "20/second",
     "models": ["production", "als"]}

``scopes`` are :data:`SCOPES`: ``recommend``, ``classify`` (and sound-alike search), ``compose``,
``catalogue`` (read ``GET /v1/models``: the store's aliases, versions, kinds and metrics, which a page needs
to offer a choice of model; reading it selects and loads nothing), and ``admin``, which implies every other
scope and may select any model. ``models`` lists the names a client may send as ``"model"`` (``"*"``:
any); without it, the aliases the service serves, so a client cannot make replicas load and evict
arbitrary versions. ``rate`` is a `limits` rate string, counted
per ingress replica. The file is read again when it changes, so a key is revoked without a restart.

    python -m encore.serving.access create --name web --scopes recommend,classify   # prints the key once
    python -m encore.serving.access list
    python -m encore.serving.access revoke --name web
"""

import argparse
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from encore.core.errors import ServingError

SCOPES = ("recommend", "classify", "compose", "catalogue", "admin")
DEFAULT_RATE = "50/second"
ANY_MODEL = "*"
KEY_PREFIX = "enc_"
DEFAULT_KEYS_FILE = os.environ.get("ENCORE_API_KEYS_FILE") or "artifacts/api_keys.json"


class Unauthorized(
    ServingError, status=401, code="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="encore"'}
):
    """No key, or one that no client holds."""


class Forbidden(ServingError, status=403, code="forbidden"):
    """A key without the scope, or the model, that the request needs."""


class RateLimited(ServingError, status=429, code="rate_limited"):
    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


@dataclass(frozen=True)
class Client:
    """A client application, as its key entry describes it."""

    name: str
    scopes: frozenset[str]
    rate: RateLimitItem
    models: frozenset[str] | None  # None: the service's own aliases

    def may_select(self, model: str, served: Collection[str]) -> bool:
        if "admin" in self.scopes:
            return True
        allowed = served if self.models is None else self.models
        return ANY_MODEL in allowed or model in allowed


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _client(entry: dict) -> Client:
    unknown = set(entry["scopes"]) - set(SCOPES)
    if unknown:
        raise ValueError(f"key {entry['name']!r}: unknown scopes {sorted(unknown)}; known: {', '.join(SCOPES)}")
    models = entry.get("models")
    return Client(
        name=entry["name"],
        scopes=frozenset(entry["scopes"]),
        rate=parse(entry.get("rate", DEFAULT_RATE)),
        models=None if models is None else frozenset(models),
    )


def read_keys(path: Path) -> dict[str, Client]:
    """The clients of a key file, by the SHA-256 of their key; raises ValueError for a malformed file."""
    try:
        entries = json.loads(path.read_text())["keys"]
        clients = {entry["sha256"]: _client(entry) for entry in entries}
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a key file: {error!r}") from None
    return clients


def _write_keys(path: Path, entries: list[dict]) -> None:
    """Replace the file in one rename: a replica reading it never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(json.dumps({"keys": entries}, indent=2) + "\n")
    staging.chmod(0o600)
    staging.replace(path)


def _entries(path: Path) -> list[dict]:
    return json.loads(path.read_text())["keys"] if path.exists() else []


def create_key(
    path: Path, name: str, scopes: Collection[str], rate: str = DEFAULT_RATE, models: Collection[str] | None = None
) -> str:
    """Add a client to the key file and return its new key, which is stored nowhere."""
    entries = [entry for entry in _entries(path) if entry["name"] != name]
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entry = {"name": name, "sha256": hash_key(key), "scopes": sorted(scopes), "rate": rate}
    if models is not None:
        entry["models"] = sorted(models)
    _client(entry)  # refuse unknown scopes and malformed rates before writing
    _write_keys(path, [*entries, entry])
    return key


def revoke_key(path: Path, name: str) -> bool:
    entries = _entries(path)
    kept = [entry for entry in entries if entry["name"] != name]
    _write_keys(path, kept)
    return len(kept) < len(entries)


class Access:
    """The checks of one ingress replica: a key that names a client, the scope of the operation, the
    client's rate and the models it may select. ``served`` are the aliases the service serves."""

    def __init__(
        self,
        keys_file: str | Path,
        served: Collection[str],
        reload_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.keys_file, self.served = Path(keys_file), frozenset(served)
        self.reload_seconds, self.clock = reload_seconds, clock
        self._clients: dict[str, Client] = {}
        self._read: tuple[float, float | None] = (-float("inf"), None)  # (when looked at, file mtime)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def clients(self) -> dict[str, Client]:
        """The key file's clients, read again when its modification time changed; a file that cannot
        be read leaves the service refusing every key rather than answering with stale ones."""
        looked_at, mtime = self._read
        if self.clock() - looked_at >= self.reload_seconds:
            try:
                now_mtime = self.keys_file.stat().st_mtime
                if now_mtime != mtime:
                    self._clients = read_keys(self.keys_file)
            except (OSError, ValueError):
                now_mtime, self._clients = None, {}
            self._read = (self.clock(), now_mtime)
        return self._clients

    def admit(self, key: str | None, scope: str) -> Client:
        """The client of ``key`` if it may use ``scope`` now; else Unauthorized, Forbidden or RateLimited."""
        client = self.clients().get(hash_key(key)) if key else None
        if client is None:
            message = "an API key is required: header X-API-Key or Authorization: Bearer"
            raise Unauthorized(message if not key else "the API key is not valid")
        if scope not in client.scopes and "admin" not in client.scopes:
            raise Forbidden(f"this key lacks the {scope!r} scope")
        if not self._limiter.hit(client.rate, client.name):
            reset = self._limiter.get_window_stats(client.rate, client.name).reset_time
            raise RateLimited(f"rate limit of {client.rate} spent", max(1, int(reset - time.time()) + 1))
        return client

    def check_model(self, client: Client, model: str | None) -> None:
        """Refuse a ``"model"`` the client may not select, before any replica loads it."""
        if model is not None and not client.may_select(model, self.served):
            raise Forbidden(f"this key may not select model {model!r}", "model")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m encore.serving.access", description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", default=DEFAULT_KEYS_FILE)
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="add a client and print its new key (shown once)")
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", required=True, help=f"comma-separated, of: {', '.join(SCOPES)}")
    create.add_argument("--rate", default=DEFAULT_RATE, help="as in '20/second' or '1000/hour'")
    create.add_argument("--models", help="comma-separated names it may select ('*': any); default: the served aliases")
    commands.add_parser("list", help="clients, scopes and rates (never keys)")
    revoke = commands.add_parser("revoke", help="remove a client; replicas notice within seconds")
    revoke.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    path = Path(args.file)
    if args.command == "create":
        models = args.models.split(",") if args.models else None
        print(create_key(path, args.name, args.scopes.split(","), args.rate, models))
    elif args.command == "list":
        for entry in _entries(path):
            models = ",".join(entry.get("models", ["(served aliases)"]))
            print(f"{entry['name']}\tscopes={','.join(entry['scopes'])}\trate={entry['rate']}\tmodels={models}")
    elif not revoke_key(path, args.name):
        raise SystemExit(f"error: no key named {args.name!r} in {path}")


if __name__ == "__main__":
    main()
