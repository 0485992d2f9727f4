"""Sharing fetched key sets across processes through a `SharedStore` (e.g. Redis): one issuer fetch per fleet refresh.

`SharedJwksFetcher` wraps a `JwksFetcher` with the same interface. Its flow (read the shared entry, take the
lease, fetch, publish with the next sequence number, give the lease back; or poll for another process's fetch)
is written once as a generator of store operations (`k8s_jwt_auth._flow`), driven by `fetch` (the store's
blocking methods) and `fetch_async` (its async methods). The rules for taking a shared set are on the class.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeGuard

from ._flow import Flow, arun, run
from ._jwks_fetch import FetchResult, JwksFetcher, fetch_within
from ._keyset import KeySet
from ._transport import FetchError
from ._validate import seconds

if TYPE_CHECKING:
    from ._shared import SharedStore

__all__ = ["DEFAULT_SHARED_KEYS_MAX_AGE", "SharedJwksFetcher"]

logger = logging.getLogger("k8s_jwt_auth.keys")

SHARED_POLL_FIRST = 0.02  # seconds between reads of a shared key set another process is fetching (doubling)
SHARED_POLL_MAX = 0.2
DEFAULT_SHARED_KEYS_MAX_AGE = 60.0  # seconds; see VerifierConfig.shared_keys_max_age


@dataclass(frozen=True, slots=True)
class _Op:
    """One I/O step of the shared fetch flow, run by the sync or the async driver."""

    kind: Literal["get", "lock", "unlock", "set", "replace", "sleep", "fetch"]
    value: bytes = b""
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class _SharedEntry:
    """A key set as shared: its place in the fleet's order of publications, then what it holds."""

    seq: int  # 1 + the highest sequence its publisher had seen: publications only ever go up
    fetched_at: float  # Unix time the fetch from the issuer started (the document is no older)
    max_age: float
    jwks_uri: str
    discovered: bool
    document: bytes

    @property
    def order(self) -> tuple[int, float]:
        return self.seq, self.fetched_at


_NEVER: tuple[int, float] = (0, -math.inf)  # the order of "no key set yet"


class SharedJwksFetcher:
    """A `JwksFetcher` whose documents are shared through a `SharedStore`: one issuer fetch per fleet refresh.

    Same interface as `JwksFetcher` (`fetch()`, `fetch_async()`, `max_duration`). A fetch:

    1. reads the shared entry (namespace `"jwks"`, key = issuer + configured `jwks_uri`): the JWKS document,
       where it came from, its sequence number, when it was fetched (Unix time) and its max age. It is used —
       no request to the issuer — only if it comes later in the fleet's order (sequence, then fetch time) than
       every set this fetcher handed out or published, AND it was fetched at most `max_shared_age` seconds ago.
       So a set replayed into Redis after a rotation (or published late by a slow replica) is never taken once
       it is older than that bound, and a refetch for an unknown `kid` never takes the set it already had.
    2. otherwise takes the lease on that key; the holder fetches from the issuer and publishes the document
       with the next sequence number, unless the store already holds a set later in the order (compared and
       set in one step with stores that offer `replace`, such as `RedisCache`); then gives the lease back;
    3. a process that does not get the lease polls the entry (up to the fetch `timeout`, retrying the lease
       in case the holder failed) and fetches by itself if no usable document appears.

    When the store is unreachable (`available` is false, for stores that say so) it fetches at once. Entries
    are authenticated by the store; anyone who can write them (who has the cache secret) chooses the keys.

    Args:
        fetcher: does the actual fetches.
        shared: the store (e.g. `k8s_jwt_auth.redis_cache.RedisCache`).
        max_age: the max age a fetched document is used for, given its `Cache-Control` max-age
            (`RemoteKeySource` passes its clamping rule); shared entries live that long.
        clock: Unix seconds (the entries' `fetched_at`, compared across processes).
        max_shared_age: the oldest (seconds since its fetch) a shared set may be to be taken.

    Raises:
        ConfigurationError: for a `max_shared_age` that is not a finite number of seconds >= 0.
    """

    namespace = "jwks"

    def __init__(self, fetcher: JwksFetcher, shared: SharedStore, *, max_age: Callable[[float | None], float],
                 clock: Callable[[], float] = time.time, max_shared_age: float = DEFAULT_SHARED_KEYS_MAX_AGE) -> None:
        self.max_shared_age = seconds(max_shared_age, "shared_keys_max_age", setting="SHARED_KEYS_MAX_AGE")
        self.fetcher, self.shared = fetcher, shared
        self.issuer, self.jwks_uri, self.timeout = fetcher.issuer, fetcher.jwks_uri, fetcher.timeout
        self.max_duration = fetcher.max_duration + fetcher.timeout + 1.0  # + polling for another's fetch
        self.key = f"{fetcher.issuer}\n{fetcher.jwks_uri or ''}".encode()
        self._max_age, self._clock = max_age, clock
        self._lock = threading.Lock()
        self._seen = _NEVER  # the order of the latest set handed out or published
        self._latest = 0  # the highest sequence seen in the store
        self._atomic = callable(getattr(shared, "replace", None)) and callable(getattr(shared, "areplace", None))

    def __repr__(self) -> str:
        return f"SharedJwksFetcher({self.fetcher!r}, {self.shared!r})"

    def fetch(self) -> FetchResult:
        """Like `JwksFetcher.fetch`, through the shared store (blocks; never call it on an event loop).

        Raises:
            FetchError: when this process fetched and the fetch failed.
        """
        return _outcome(run(self._flow(), self._step))

    async def fetch_async(self) -> FetchResult:
        """Like `fetch`, without blocking the event loop.

        Raises:
            FetchError: when this process fetched and the fetch failed.
        """
        return _outcome(await arun(self._flow(), self._step_async))

    # -- the flow, written once ------------------------------------------------------------------

    def _flow(self) -> Flow[_Op, FetchResult | FetchError]:
        deadline, delay = time.monotonic() + self.timeout, SHARED_POLL_FIRST
        while True:
            found = self._newer((yield _Op("get")))
            if found is not None:
                return found
            if (yield _Op("lock", seconds=self.fetcher.max_duration + 1.0)):
                found = self._newer((yield _Op("get")))  # stored between our read and our lease?
                outcome = found if found is not None else (yield from self._fetch_and_publish())
                yield _Op("unlock")
                return outcome
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not getattr(self.shared, "available", True):
                return (yield from self._fetch_and_publish())
            yield _Op("sleep", seconds=min(delay, remaining))
            delay = min(2 * delay, SHARED_POLL_MAX)

    def _fetch_and_publish(self) -> Flow[_Op, FetchResult | FetchError]:
        started = self._clock()  # the document is no older than this (a slow fetch must not look newer)
        outcome = yield _Op("fetch")
        if isinstance(outcome, FetchResult) and outcome.document is not None:
            max_age = self._max_age(outcome.max_age)
            with self._lock:
                seq = max(self._latest, self._seen[0]) + 1
                self._seen = max(self._seen, (seq, started))
            header = {"seq": seq, "fetched_at": started, "max_age": max_age, "jwks_uri": outcome.jwks_uri,
                      "discovered": outcome.discovered}
            entry = json.dumps(header, separators=(",", ":")).encode() + b"\n" + outcome.document
            yield from self._publish(entry, max_age)
        assert isinstance(outcome, (FetchResult, FetchError))  # noqa: S101 - what the drivers answer
        return outcome

    def _publish(self, entry: bytes, max_age: float) -> Flow[_Op, None]:
        """Store `entry` unless the store holds a set later in the fleet's order (never newer -> older)."""
        if self._atomic:  # compared and set in one step by the store
            yield _Op("replace", entry, max_age)
            return
        if not self._keeps((yield _Op("get")), entry):  # a store without `replace`: read, then write
            yield _Op("set", entry, max_age)

    def _keeps(self, current: object, entry: bytes) -> bool:
        """Whether the stored set `current` must stay rather than be replaced by our `entry`."""
        stored, ours = _shared_entry(current), _shared_entry(entry)
        if stored is None or ours is None:
            return False
        with self._lock:
            self._latest = max(self._latest, stored.seq)
        return stored.order >= ours.order

    def _newer(self, entry: object) -> FetchResult | None:
        """The shared set, if it comes after every set handed out or published here and is recent enough."""
        parsed = _shared_entry(entry)
        if parsed is None:
            return None
        with self._lock:
            self._latest = max(self._latest, parsed.seq)
            if parsed.order <= self._seen:
                return None
        age = self._clock() - parsed.fetched_at
        if abs(age) > self.max_shared_age:  # maybe replayed into the store; or a replica's clock is off
            logger.debug("not taking the key set of %s another process fetched %.0f s ago (more than "
                         "shared_keys_max_age, %g s): asking the issuer", self.issuer, age, self.max_shared_age)
            return None
        keys = _parse_shared(parsed.document, self.fetcher.max_keys)
        if keys is None:
            return None
        with self._lock:
            self._seen = max(self._seen, parsed.order)
        age = min(max(age, 0.0), parsed.max_age)
        logger.debug("using the key set of %s another process fetched %.0f s ago", self.issuer, age)
        return FetchResult(self.issuer, parsed.jwks_uri, parsed.discovered, keys, parsed.max_age,
                           document=parsed.document, age=age, shared=True)

    # -- the drivers -----------------------------------------------------------------------------

    def _step(self, op: _Op) -> object:
        shared, namespace, key = self.shared, self.namespace, self.key
        if op.kind == "get":
            return shared.get(namespace, key)
        if op.kind == "lock":
            return shared.try_lock(namespace, key, op.seconds)
        if op.kind == "unlock":
            shared.unlock(namespace, key)
            return None
        if op.kind == "set":
            shared.set(namespace, key, op.value, op.seconds)
            return None
        if op.kind == "replace":
            shared.replace(namespace, key, op.value, op.seconds,  # type: ignore[attr-defined]
                           keep=lambda current: self._keeps(current, op.value))
            return None
        if op.kind == "sleep":
            time.sleep(op.seconds)
            return None
        try:
            return self.fetcher.fetch()
        except FetchError as exc:
            return exc

    async def _step_async(self, op: _Op) -> object:
        shared, namespace, key = self.shared, self.namespace, self.key
        if op.kind == "get":
            return await shared.aget(namespace, key)
        if op.kind == "lock":
            return await shared.atry_lock(namespace, key, op.seconds)
        if op.kind == "unlock":
            await shared.aunlock(namespace, key)
            return None
        if op.kind == "set":
            await shared.aset(namespace, key, op.value, op.seconds)
            return None
        if op.kind == "replace":
            await shared.areplace(namespace, key, op.value, op.seconds,  # type: ignore[attr-defined]
                                  keep=lambda current: self._keeps(current, op.value))
            return None
        if op.kind == "sleep":
            await asyncio.sleep(op.seconds)
            return None
        try:
            return await fetch_within(self.fetcher)
        except FetchError as exc:
            return exc


def _shared_entry(entry: object) -> _SharedEntry | None:
    """A shared entry's header and document, or `None` if unusable (entries without a sequence included)."""
    if not isinstance(entry, bytes) or b"\n" not in entry:
        return None
    head, document = entry.split(b"\n", 1)
    try:
        header = json.loads(head)
    except (ValueError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    seq, fetched_at, max_age = header.get("seq"), header.get("fetched_at"), header.get("max_age")
    jwks_uri, discovered = header.get("jwks_uri"), header.get("discovered")
    if not (type(seq) is int and seq > 0 and _finite(fetched_at) and _finite(max_age) and max_age > 0
            and isinstance(jwks_uri, str) and isinstance(discovered, bool)):
        return None
    return _SharedEntry(seq, float(fetched_at), float(max_age), jwks_uri, discovered, document)


def _finite(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_shared(document: bytes, max_keys: int) -> KeySet | None:
    try:
        keys = KeySet.from_jwks(document, max_keys=max_keys)
    except ValueError:
        return None
    return keys if len(keys) else None


def _outcome(outcome: FetchResult | FetchError) -> FetchResult:
    if isinstance(outcome, FetchError):
        raise outcome
    return outcome
