"""Model versions as served: loaded versions cached per replica, names resolved against the store,
traffic split between aliases, what an alias may point to, and the catalogue of versions."""

import asyncio
import bisect
import hashlib
import itertools
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from encore.core.errors import ModelUnavailableError, ServingError, UnknownModelError
from encore.recsys.bundle import RecommenderBundle
from encore.recsys.models import MODELS
from encore.serving import telemetry
from encore.store import (
    ChecksumError,
    LoadedVersion,
    Manifest,
    ModelStore,
    PreprocessingMismatch,
    PromotionRefused,
    StoreError,
    VersionNotFound,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")


async def run_until_cancelled(work: Callable[..., T], *args, **kwargs) -> T:
    """``work(*args, **kwargs, cancelled=event)`` in a thread, so the replica's event loop keeps answering.
    Serve cancels a request whose client went away or timed out; a thread cannot be stopped from outside,
    so ``cancelled`` is set and the work gives up at its next check rather than finishing for no one."""
    cancelled = threading.Event()
    try:
        return await asyncio.to_thread(work, *args, **kwargs, cancelled=cancelled)
    except asyncio.CancelledError:
        cancelled.set()
        raise


@dataclass
class _Name:
    """What a VersionCache knows of one name between two looks at the store."""

    version: str | None = None  # the version it serves, once one was loaded for it
    next_refresh: float = -math.inf  # the clock reading from which the store may be asked again
    failures: int = 0  # refreshes failed in a row, for the back-off
    error: ServingError | None = None  # the answer while it has nothing to serve, until its next refresh
    refresh: Future | None = None  # the one refresh in flight, shared by every request for the name


@dataclass(frozen=True)
class _Outcome:
    """What a refresh found: the version a name names now and its loaded model, or why it has none."""

    version: str | None  # None: the name could not be resolved
    entry: tuple[Any, dict] | None
    error: Exception | None
    at: float  # the clock when it ended
    gone: str | None = None  # the version the name served before, found deleted from the store (erased)


class TrafficSplit:
    """Which of the service's aliases answers a user who names no model: each alias (an arm) takes its share
    of users by weight, by a hash of the user's pseudonym, so a user stays in one arm from request to request
    and replica to replica. The hash is salted with the arms' names: a new experiment draws its arms anew
    rather than giving the same users the new thing every time."""

    MAX_ARMS = 8

    def __init__(self, weights: Mapping[str, float]):
        if not 1 <= len(weights) <= self.MAX_ARMS:
            raise ValueError(f"a traffic split has 1 to {self.MAX_ARMS} arms, not {len(weights)}")
        if not all(isinstance(w, int | float) and math.isfinite(w) and w > 0 for w in weights.values()):
            raise ValueError(f"traffic split weights must be positive numbers: {dict(weights)}")
        self.weights = dict(weights)
        total = sum(self.weights.values())
        self._bounds = list(itertools.accumulate(w / total for w in self.weights.values()))
        self._salt = hashlib.sha256("\0".join(sorted(self.weights)).encode()).digest()

    @property
    def arms(self) -> list[str]:
        return list(self.weights)

    def arm(self, pseudonym: str) -> str:
        """Called for every user of a batch, hence plain Python for one number."""
        point = int.from_bytes(hashlib.blake2b(pseudonym.encode(), key=self._salt, digest_size=8).digest())
        arms = self.arms
        return arms[min(bisect.bisect_right(self._bounds, point / 2**64), len(arms) - 1)]


class VersionCache:
    """The model versions one deployment serves, found in the store by alias, version id or kind.

    ``get(ref)`` answers ``(model, {"kind", "version"})``; ``ref`` is an alias, a version id, or a
    kind (its newest version), and None means ``default_ref``. A name is refreshed (re-resolved, and
    what it names loaded) at most every ``poll_seconds``, so a moved alias is picked up without a
    restart, and the ``capacity`` most recently used versions stay loaded. Only versions of ``kinds`` are
    served. When a name cannot be refreshed, or its new version cannot be served (another kind,
    checksums, another pseudonymisation key, a missing file, a loader that fails), the version it had
    keeps serving, the refusal is logged once per attempt and listed in ``refused`` until the name serves
    a version again.

    A store that is slow or down must not slow the requests. The store is read in threads of the cache's
    own, never on the event loop, and a name has one refresh in flight at a time, whatever number of
    requests ask for it. A request for a name that serves a version waits for its refresh at most
    ``refresh_wait_seconds`` (0: never, it is answered with the version loaded; None: until the refresh
    ends); a request for a name that serves nothing waits for the refresh. A refresh that fails is
    timestamped and not tried again before a back-off: ``backoff_seconds``, doubled at each failure in a
    row up to ``max_backoff_seconds``, never less than ``poll_seconds``; a name the store answers it does
    not have is asked again at the next poll. While the store cannot be reached, a name that serves
    nothing is answered ModelUnavailableError (503) at once instead of waiting on it: the S3 backend's
    timeouts and retries (``ENCORE_S3_*``, see :mod:`encore.store.backends`) bound how long the first
    request that finds the outage waits. ``clock`` (seconds, monotonic) times the polls and back-offs; a
    name never resolved is resolved on first use whatever it reads. ``expected_preprocessing`` is what a
    version's preprocessing must match, or a list of such records, any of which it may match (during a
    change of pseudonymisation key, versions built under either key are served).
    """

    NAMES_LIMIT = 1024  # names remembered, the least recently asked forgotten: clients' made-up names stay few

    def __init__(
        self,
        store: ModelStore,
        default_ref: str,
        kinds: Collection[str],
        load: Callable[[LoadedVersion], Any],
        poll_seconds: float = 10.0,
        capacity: int = 4,
        expected_preprocessing: dict | list[dict] | None = None,
        clock: Callable[[], float] = time.monotonic,
        refresh_wait_seconds: float | None = 0.0,
        backoff_seconds: float = 1.0,
        max_backoff_seconds: float = 60.0,
    ):
        self.store, self.default_ref, self.kinds = store, default_ref, frozenset(kinds)
        self.poll_seconds, self.capacity, self.clock = poll_seconds, capacity, clock
        self.expected_preprocessing = expected_preprocessing
        self.refresh_wait_seconds = refresh_wait_seconds
        self.backoff_seconds, self.max_backoff_seconds = backoff_seconds, max_backoff_seconds
        self._load_model = load
        self._names: OrderedDict[str, _Name] = OrderedDict()
        self._loaded: OrderedDict[str, tuple[Any, dict]] = OrderedDict()  # changed on the event loop only
        # Threads of its own: a refresh outlives the request that started it, and the event loop it ran on.
        self._refreshes = ThreadPoolExecutor(thread_name_prefix="encore-refresh")
        # The store's own back-off, while it cannot be reached: names that serve nothing do not wait on it.
        self._store_failures, self._store_retry_at = 0, -math.inf
        # The versions refused for a name while an older one keeps serving it, for health checks.
        self.refused: dict[str, dict] = {}
        self.family = next((f.name for f in FAMILIES.values() if self.kinds <= f.kinds), "other")  # metrics tag

    def resolve(self, ref: str) -> str:
        """The version ``ref`` names now (blocking: reads the store)."""
        return resolve_name(self.store, ref, self.kinds, self.default_ref)

    def load(self, version: str) -> tuple[Any, dict]:
        """The model of ``version``, loaded (blocking: reads the store, verifies the checksums)."""
        started = time.perf_counter()
        manifest = self.store.show(version)
        if manifest.kind not in self.kinds:
            served = ", ".join(sorted(self.kinds))
            raise UnknownModelError(f"{version} is a {manifest.kind} model; this endpoint serves {served}", "model")
        loaded = self.store.load(version, expected_preprocessing=self._expected_for(manifest))
        entry = (self._load_model(loaded), {"kind": loaded.manifest.kind, "version": loaded.manifest.version})
        logger.info("loaded %s in %.0f ms", version, 1000 * (time.perf_counter() - started))
        telemetry.model_loaded(self.family, loaded.manifest.kind, version, time.perf_counter() - started)
        return entry

    def _expected_for(self, manifest: Manifest) -> dict | None:
        """The accepted preprocessing record ``manifest`` matches, or the first one (the store refuses the
        version naming it)."""
        accepted = self.expected_preprocessing
        if not isinstance(accepted, list):
            return accepted
        matching = (e for e in accepted if all(manifest.preprocessing.get(k) == v for k, v in e.items()))
        return next(matching, accepted[0] if accepted else None)

    async def get(self, ref: str | None = None) -> tuple[Any, dict]:
        ref = ref or self.default_ref
        name = self._name(ref)
        if name.refresh is None and self._due(name):
            if not self._servable(name) and self._store_is_down():
                raise ModelUnavailableError(f"model {ref!r} cannot be resolved: the store cannot be reached", "model")
            name.refresh = self._refreshes.submit(self._refresh, ref, name.version)
        if name.refresh is not None:
            await _wait(name.refresh, self.refresh_wait_seconds if self._servable(name) else None)
            self._take_in(ref, name)
        entry = self._loaded.get(name.version)
        if entry is None:
            error = name.error or ModelUnavailableError(f"model {ref!r} is not loaded now, ask again", "model")
            raise error.with_traceback(None)  # raised again at each request: no traceback piling up
        self._loaded.move_to_end(name.version)
        return entry

    def _name(self, ref: str) -> _Name:
        """What is known of ``ref``, remembered as recently asked."""
        name = self._names.setdefault(ref, _Name())
        self._names.move_to_end(ref)
        while len(self._names) > self.NAMES_LIMIT:
            self._names.popitem(last=False)  # a refresh of it in flight ends unheard
        return name

    def _servable(self, name: _Name) -> bool:
        return name.version in self._loaded

    def _due(self, name: _Name) -> bool:
        """Whether to refresh ``name`` now: its poll or back-off is over, or its version was unloaded."""
        return self.clock() >= name.next_refresh or (name.failures == 0 and not self._servable(name))

    def _store_is_down(self) -> bool:
        return self.clock() < self._store_retry_at

    def _refresh(self, ref: str, served: str | None = None) -> _Outcome:
        """Resolve ``ref`` and load what it names (blocking, in a refresh thread); never raises.

        When ``ref`` no longer names ``served``, the version it served, the store is asked whether that
        version still exists: one deleted (an erasure deletes the versions that hold an erased listener)
        is named in ``gone``, never served again, and this machine's cached copies of it are removed."""
        version = None
        try:
            version = self.resolve(ref)
            cached = self._loaded.get(version)
            entry = cached or self.load(version)
        except Exception as error:  # told the request, on the event loop
            if version is not None:  # resolved, but cannot be served (a name the store has not is no lookup)
                telemetry.model_cache(self.family, "refused")
            return _Outcome(version, None, error, self.clock(), self._gone(served, version))
        telemetry.model_cache(self.family, "hit" if cached is not None else "miss")
        return _Outcome(version, entry, None, self.clock(), self._gone(served, version))

    def _gone(self, served: str | None, current: str | None) -> str | None:
        """``served`` if ``ref`` moved away from it and the store no longer has it; None otherwise or when
        the store cannot say (an outage is no deletion)."""
        if served is None or served == current:
            return None
        try:
            self.store.show(served)
            return None
        except VersionNotFound:
            pass
        except Exception:  # the store cannot be read now: the next refresh asks again
            return None
        try:
            self.store.forget_cached(served)
        except OSError as error:
            logger.warning("cached copies of the deleted %s could not be removed: %r", served, error)
        return served

    def _take_in(self, ref: str, name: _Name) -> None:
        """Apply the outcome of the refresh of ``name`` once it ended, unless a request did (on the event loop)."""
        if name.refresh is None or not name.refresh.done():
            return
        outcome = name.refresh.result()
        name.refresh = None
        if outcome.gone is not None:
            self._unload_deleted(outcome.gone)
        if outcome.error is None:
            self._keep(outcome.version, outcome.entry)
            name.version, name.failures, name.error = outcome.version, 0, None
            name.next_refresh = outcome.at + self.poll_seconds
            self._store_failures, self._store_retry_at = 0, -math.inf
            self.refused.pop(ref, None)
        elif self._servable(name):
            self._failed(name, outcome)
            self._keep_serving(ref, name, outcome)
        else:
            self._failed(name, outcome)
            name.error = _unavailable(ref, outcome)
            if outcome.version is not None:
                logger.error("%r (%s) cannot be served: %r", ref, outcome.version, outcome.error)
            elif not isinstance(outcome.error, ServingError):  # a name the store has not is no error of ours
                logger.error("%r cannot be resolved: %r", ref, outcome.error)

    def _unload_deleted(self, version: str) -> None:
        """Stop serving ``version``, deleted from the store: every name that served it looks at the store
        again at its next request, which waits for that look (it has nothing left to serve meanwhile)."""
        if self._loaded.pop(version, None) is not None:
            logger.info("%s was deleted from the store: unloaded, never served again", version)
        for name in self._names.values():
            if name.version == version:
                name.version, name.failures, name.next_refresh = None, 0, -math.inf

    def _failed(self, name: _Name, outcome: _Outcome) -> None:
        """Time the next refresh of ``name``: at the next poll after the store's answer, else after a back-off."""
        name.failures += 1
        if isinstance(outcome.error, ServingError):
            name.next_refresh = outcome.at + self.poll_seconds
            return
        name.next_refresh = outcome.at + self._backoff(name.failures)
        if outcome.version is None:  # the store could not be read: it backs off too
            self._store_failures += 1
            self._store_retry_at = outcome.at + self._backoff(self._store_failures)

    def _backoff(self, failures: int) -> float:
        """Seconds to wait after ``failures`` in a row: doubling up to a cap, never less than a poll."""
        return max(self.poll_seconds, min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (failures - 1)))

    def _keep(self, version: str, entry: tuple[Any, dict]) -> None:
        """Keep ``entry`` loaded as the most recently used, unloading the least recently used beyond capacity."""
        self._loaded[version] = entry
        self._loaded.move_to_end(version)
        while len(self._loaded) > self.capacity:
            self._loaded.popitem(last=False)

    def _keep_serving(self, ref: str, name: _Name, outcome: _Outcome) -> None:
        """The name's version serves on after a failed refresh; a version it cannot serve is listed as refused."""
        if outcome.version is None:
            logger.error("keeping %s for %r: %r", name.version, ref, outcome.error)
            return
        self.refused[ref] = {"alias": ref, "version": outcome.version, "reason": refusal_reason(outcome.error)}
        logger.error("keeping %s for %r: %s cannot be served: %r", name.version, ref, outcome.version, outcome.error)


def resolve_name(store: ModelStore, ref: str, kinds: Collection[str], default_ref: str | None = None) -> str:
    """The version ``ref`` (an alias, a version id, or one of ``kinds``: its newest version) names now
    (blocking: reads the store)."""
    try:
        return store.resolve(ref)
    except VersionNotFound:
        newest = store.list(kind=ref) if ref in kinds else []
        if not newest:
            if ref == default_ref:
                raise ModelUnavailableError(
                    f"no {' or '.join(sorted(kinds))} model is published as {ref!r} yet", "model"
                ) from None
            raise UnknownModelError(f"no model {ref!r}: not an alias, version or kind in the store", "model") from None
        return newest[0].version


class Names:
    """The version each name a request selects (an alias, a version id or a kind) names, asked of the store in a
    thread at most every ``poll_seconds`` a name, its refusals too; the ``NAMES_LIMIT`` most recently asked are
    remembered. The ingress hands only versions found here, of ``kinds``, to the replicas that load the versions
    requests select, so a made-up name costs those replicas nothing (loading one would evict a model)."""

    NAMES_LIMIT = VersionCache.NAMES_LIMIT

    def __init__(
        self,
        store: ModelStore,
        kinds: Collection[str],
        poll_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store, self.kinds, self.poll_seconds, self.clock = store, frozenset(kinds), poll_seconds, clock
        self._known: OrderedDict[str, tuple[str | ServingError, float]] = OrderedDict()

    async def version(self, ref: str) -> str:
        known = self._known.get(ref)
        if known is None or self.clock() >= known[1]:
            known = (await asyncio.to_thread(self._look_up, ref), self.clock() + self.poll_seconds)
            self._known[ref] = known
        self._known.move_to_end(ref)
        while len(self._known) > self.NAMES_LIMIT:
            self._known.popitem(last=False)
        if isinstance(known[0], ServingError):
            raise known[0].with_traceback(None)
        return known[0]

    def _look_up(self, ref: str) -> str | ServingError:
        try:
            version = resolve_name(self.store, ref, self.kinds)
            kind = self.store.show(version).kind
        except ServingError as error:
            return error
        except StoreError as error:
            logger.error("%r cannot be resolved: %r", ref, error)
            return ModelUnavailableError("the model store cannot be read now, ask again", "model")
        if kind not in self.kinds:
            served = ", ".join(sorted(self.kinds))
            return UnknownModelError(f"{version} is a {kind} model; this endpoint serves {served}", "model")
        return version


async def _wait(refresh: Future, seconds: float | None) -> None:
    """Wait for ``refresh`` to end, at most ``seconds`` (None: however long); it runs on either way."""
    if seconds != 0 and not refresh.done():
        await asyncio.wait([asyncio.wrap_future(refresh)], timeout=seconds)


def _unavailable(ref: str, outcome: _Outcome) -> ServingError:
    """The answer for ``ref`` while it has nothing to serve after ``outcome``."""
    if outcome.version is None:
        if isinstance(outcome.error, ServingError):  # the store has no such name
            return outcome.error
        return ModelUnavailableError(f"model {ref!r} cannot be resolved: {refusal_reason(outcome.error)}", "model")
    reason = refusal_reason(outcome.error)
    return UnknownModelError(f"model {ref!r} ({outcome.version}) could not be loaded: {reason}", "model")


def refusal_reason(error: Exception) -> str:
    """Why a version cannot be served, in words safe to answer: no store location, no loader internals."""
    if isinstance(error, ServingError):
        return error.message
    reasons = {
        PreprocessingMismatch: "it was built under other preprocessing (another pseudonymisation key or schema)",
        ChecksumError: "its files fail their checksums or are missing",
        StoreError: "the store could not provide it",
    }
    return next(
        (reason for kind, reason in reasons.items() if isinstance(error, kind)),
        "its files could not be loaded by this version of Encore",
    )


@dataclass(frozen=True)
class Family:
    """Model kinds one deployment serves, and how its replicas load a version of them."""

    name: str
    kinds: frozenset[str]
    load: Callable[[LoadedVersion], Any]


def _load_recommender(loaded: LoadedVersion) -> RecommenderBundle:
    bundle = RecommenderBundle.load(loaded.path, loaded.manifest.kind)
    bundle.id_key_fingerprint = loaded.manifest.preprocessing.get("id_key_fingerprint")
    return bundle


def _load_composer(loaded: LoadedVersion):
    from encore.composer.compose import ComposerBundle

    return ComposerBundle.load(loaded.path)


def _load_genre(loaded: LoadedVersion):
    from encore.genre.classifier import GenreClassifier

    return GenreClassifier.load(loaded.path)


def _load_soundalike(loaded: LoadedVersion):
    from encore.soundalike.index import SoundalikeIndex

    return SoundalikeIndex.load(loaded.path)


FAMILIES = {
    family.name: family
    for family in (
        Family("recommender", frozenset(MODELS), _load_recommender),
        Family("composer", frozenset({"composer"}), _load_composer),
        Family("genre", frozenset({"genre"}), _load_genre),
        Family("soundalike", frozenset({"soundalike"}), _load_soundalike),
    )
}


def family_of(kind: str) -> Family | None:
    return next((family for family in FAMILIES.values() if kind in family.kinds), None)


def _alias_family(alias: str) -> Family | None:
    """The family an alias is named for: ``production`` serves recommenders, ``composer-production`` composers."""
    return FAMILIES["recommender"] if alias == "production" else FAMILIES.get(alias.split("-")[0])


def admit_for_serving(store: ModelStore, manifest: Manifest, alias: str) -> None:
    """Refuse to point ``alias`` at a version its consumers could not serve.

    The version must be of the family the alias serves (the family of the version it names now, or
    the one its name says), built under the same preprocessing as that version (pseudonymisation key,
    schemas), and load as a replica loads it. A replica would refuse such a version anyway; refusing
    the promote keeps the alias on one that every replica, new ones included, can serve.

    Raises
    ------
    PromotionRefused
        Saying why.
    """
    family = family_of(manifest.kind)
    if family is None:
        raise PromotionRefused(f"{manifest.version}: no deployment serves {manifest.kind!r} models")
    try:
        current = store.show(alias)
    except VersionNotFound:
        current = None
    expected = family_of(current.kind) if current else _alias_family(alias)
    if expected is not None and expected != family:
        serving = f"serves {expected.name} models" + (f" ({current.version})" if current else "")
        raise PromotionRefused(f"{alias!r} {serving}; {manifest.version} is a {manifest.kind} model")
    if current is not None and current.preprocessing != manifest.preprocessing:
        raise PromotionRefused(
            f"{manifest.version} was built under other preprocessing than {current.version}, which {alias!r} "
            f"serves now: {manifest.preprocessing} against {current.preprocessing}"
        )
    if (store.uri, manifest.version) in _ADMITTED_LOADS:
        return
    try:
        family.load(store.load(manifest.version))
    except Exception as error:
        raise PromotionRefused(f"{manifest.version} does not load as a replica loads it: {error!r}") from error
    _ADMITTED_LOADS[store.uri, manifest.version] = None
    while len(_ADMITTED_LOADS) > ADMITTED_LOADS_LIMIT:
        _ADMITTED_LOADS.popitem(last=False)


# Versions that loaded for an admission in this process: a version never changes, so one that loaded
# loads again, and a save that moves two aliases (latest, production) loads a gigabyte once, not twice.
ADMITTED_LOADS_LIMIT = 16
_ADMITTED_LOADS: OrderedDict[tuple[str, str], None] = OrderedDict()


# Bounds of GET /v1/models: an overview for operators and the page's model picker, not the store's full record.
MAX_CATALOGUE_VERSIONS = 50
MAX_METRICS = 48


def metric_summary(metrics: dict, limit: int = MAX_METRICS) -> dict[str, float]:
    """The finite numbers of a version's metrics, two levels deep at most with their names joined by '.'
    (``test.ndcg@10``), ``limit`` in all: bounded however much an evaluation records (a genre model's
    confusion matrix and per-genre scores stay in the store's manifest)."""
    flat = {}
    for name, value in metrics.items():
        for inner, number in value.items() if isinstance(value, dict) else [(None, value)]:
            if isinstance(number, int | float) and not isinstance(number, bool) and math.isfinite(number):
                flat[name if inner is None else f"{name}.{inner}"] = float(number)
    return dict(list(flat.items())[:limit])


def model_catalogue(store: ModelStore, limit: int = MAX_CATALOGUE_VERSIONS) -> dict:
    """The store's aliases and versions as ``GET /v1/models`` answers them (blocking: reads every manifest).

    Every alias that names a complete version, with that version's kind; the versions aliases name and
    then the newest others, ``limit`` in all, listed newest first with their aliases and metric summary."""
    manifests = store.list()
    kinds = {manifest.version: manifest.kind for manifest in manifests}
    aliases = {alias: version for alias, version in sorted(store.aliases().items()) if version in kinds}
    named: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        named.setdefault(version, []).append(alias)
    by_priority = sorted(manifests, key=lambda manifest: manifest.version not in named)  # stable: newest first
    chosen = {manifest.version for manifest in by_priority[:limit]}
    return {
        "aliases": [
            {"alias": alias, "version": version, "kind": kinds[version], "family": _family_name(kinds[version])}
            for alias, version in aliases.items()
        ],
        "versions": [
            {
                "version": manifest.version,
                "kind": manifest.kind,
                "family": _family_name(manifest.kind),
                "created_at": manifest.created_at,
                "aliases": named.get(manifest.version, []),
                "metrics": metric_summary(manifest.metrics),
                **training_data(manifest),
            }
            for manifest in manifests
            if manifest.version in chosen
        ],
        "versions_total": len(manifests),
    }


def training_data(manifest: Manifest, limit: int = 300) -> dict:
    """What a version learnt from and the terms of that data, in words of at most ``limit`` characters, as
    its training recorded them (a composer: how many pieces of which styles); None where it recorded nothing."""
    config = manifest.config
    pieces, styles, terms = config.get("pieces"), config.get("styles"), config.get("terms")
    trained_on = None
    if type(pieces) is int and isinstance(styles, list) and all(isinstance(style, str) for style in styles):
        trained_on = f"{pieces} pieces in the styles {', '.join(styles)}"
    return {
        "trained_on": trained_on[:limit] if trained_on else None,
        "terms": terms[:limit] if isinstance(terms, str) else None,
    }


class Catalogue:
    """:func:`model_catalogue` of a store, read again at most every ``max_age_seconds`` and by one request
    at a time, in a thread: however many people open the page, the manifests are read once an interval."""

    def __init__(self, store: ModelStore, max_age_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.store, self.max_age_seconds, self.clock = store, max_age_seconds, clock
        self._answer: dict | None = None
        self._read_at = -math.inf
        self._lock = asyncio.Lock()

    async def get(self) -> dict:
        async with self._lock:
            if self._answer is None or self.clock() - self._read_at >= self.max_age_seconds:
                try:
                    self._answer = await asyncio.to_thread(model_catalogue, self.store)
                except StoreError as error:
                    logger.error("the catalogue cannot be read: %r", error)
                    raise ModelUnavailableError("the model store cannot be read now, ask again") from None
                self._read_at = self.clock()
        return self._answer


def _family_name(kind: str) -> str | None:
    family = family_of(kind)
    return family.name if family else None


def serving_store(uri: str) -> ModelStore:
    """The model store as jobs and the command line write to it: aliases move only to servable versions."""
    return ModelStore(uri, admit=admit_for_serving)
