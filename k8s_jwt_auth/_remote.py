"""`RemoteKeySource`: the issuer's keys over HTTPS (OIDC discovery + JWKS), cached and rotated.

The top of the key-fetching layers (each module imports only the ones below it):

* `k8s_jwt_auth._transport` — one bounded HTTP exchange, `FetchError`, what an HTTP status means;
* `k8s_jwt_auth._jwks_fetch` — `JwksFetcher` fetches once, with no state: discovery (unless a `jwks_uri` is
  configured), then the JWKS;
* `k8s_jwt_auth._shared_fetch` — `SharedJwksFetcher` shares fetched documents through a `SharedStore`;
* this module — `RemoteKeySource` keeps the last good `KeySet` in one cache shared by threads and event loops: a
  `threading.Lock` guards the state (never held during I/O), and a `concurrent.futures.Future` marks the
  fetch in flight, so concurrent callers cause one fetch (single flight).

Cache rules (defaults from `VerifierConfig`):

* keys are fresh for `max_age` = the JWKS response's `Cache-Control: max-age`, clamped to
  `[min(60 s, cache_max_age), cache_max_age]` (default 600 s); without the header, `cache_max_age`.
* past 80 % of `max_age` a caller starts a background refresh (a daemon thread) and is answered at once;
  past `max_age`, callers wait for one refetch.
* a `kid` not in the set triggers a refetch at most once per `cooldown` (30 s), counted from the last
  such refetch; the lookup is retried once, then `InvalidToken("unknown_key")`. Unknown kids are
  remembered until that cooldown ends.
* with a `SharedStore` (`shared=`, e.g. Redis), fetched documents are shared: N processes make one fetch
  per refresh (`SharedJwksFetcher`); a shared document is used for what is left of its max age, but only
  if it comes later than any set this process had and its fetch started at most `shared_keys_max_age`
  (60 s) ago. A `kid` missing from a set taken from the store sends this process to the issuer on the
  same call (subject to single flight and the cooldown).
* a failed fetch never drops good keys: they are served for `max_stale` (3600 s) past their `max_age`,
  with a warning on the `k8s_jwt_auth.keys` logger. Failed fetches are retried after 1, 2, 4 ... s, at
  most `max(cooldown, 1 s)` apart. Without usable keys callers get `KeySetUnavailable` (503).
"""

from __future__ import annotations

import logging
import math
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._flow import wait_async
from ._jwks_fetch import Fetcher, FetchResult, JwksFetcher, fetch_within
from ._keyset import DEFAULT_MAX_KEYS, KeySet, VerificationKey
from ._observer import FetchEvent, Hooks
from ._shared_fetch import DEFAULT_SHARED_KEYS_MAX_AGE, SharedJwksFetcher
from ._transport import DEFAULT_CONNECT_TIMEOUT, FetchError
from ._validate import seconds
from .errors import AuthError, InvalidToken, KeySetUnavailable

if TYPE_CHECKING:
    from ._observer import Observer
    from ._shared import SharedStore
    from .config import VerifierConfig

__all__ = ["KeySourceStatus", "RemoteKeySource"]

logger = logging.getLogger("k8s_jwt_auth.keys")

MIN_MAX_AGE = 60.0  # a Cache-Control max-age below this (or no-cache) is raised to it
REFRESH_AHEAD = 0.8  # refresh in the background once keys are this far into their max age
MAX_UNKNOWN_KIDS = 1024  # bound of the negative cache


@dataclass(frozen=True, slots=True)
class KeySourceStatus:
    """A snapshot of a `RemoteKeySource`, for health checks, metrics and debugging.

    Attributes:
        fresh: the keys are within their max age.
        stale: the keys are past their max age but still served, because refreshes fail.
        cooling_down: an unknown `kid` would not cause a refetch now.
        reloading: a fetch is in flight.
        kids: the key ids of the current set (empty before the first successful fetch).
        max_age: the max age applied to the current keys, in seconds.
        last_refresh_age: seconds since the current keys were fetched.
        fetch_count: fetches started since construction.
        failures: consecutive failed fetches (0 after a success).
        last_error: what the last failed fetch said (`None` after a success).
        retry_in: seconds before a fetch may be retried after a failure (0 when not backing off).
        jwks_uri: where the current keys came from.
    """

    fresh: bool
    stale: bool
    cooling_down: bool
    reloading: bool
    kids: tuple[str | None, ...]
    max_age: float | None
    last_refresh_age: float | None
    fetch_count: int
    failures: int
    last_error: str | None
    retry_in: float
    jwks_uri: str | None


@dataclass(slots=True)
class _Plan:
    """What a caller does next, decided under the lock."""

    key: VerificationKey | None = None
    error: AuthError | None = None
    wait: Future[None] | None = None  # wait for this fetch, then look up again
    lead: int = 0  # > 0: this caller runs fetch number `lead` and settles `wait`
    background: tuple[int, Future[None]] | None = None  # start this fetch in a thread

    def result(self) -> VerificationKey:
        if self.key is None:
            raise self.error if self.error is not None else KeySetUnavailable("no key set")
        return self.key


class RemoteKeySource:
    """Keys from the issuer over HTTPS, cached; one instance serves threads and event loops alike.

    Args:
        issuer: the configured issuer (the discovery document must name exactly this issuer).
        jwks_uri: fetch keys here and skip discovery.
        ca_file: PEM CA bundle for HTTPS (the cluster CA); loaded once into an `ssl.SSLContext`.
        ssl_context: a ready `ssl.SSLContext` (wins over `ca_file`).
        token_file: bearer token file for the fetches, re-read on each fetch; never logged.
        timeout: seconds for each socket operation; 2 × timeout for a whole exchange (see `JwksFetcher`).
        connect_timeout: seconds for connecting (at most `timeout`).
        cache_max_age: the most seconds keys are used before a refetch (`Cache-Control` may lower it,
            not below 60 s).
        cooldown: the fewest seconds between two refetches caused by unknown `kid`s.
        max_stale: seconds past their max age that keys are still served while refreshes fail.
        allow_insecure_http: allow plain http to hosts other than loopback.
        max_response_size: the largest accepted response body, in bytes.
        max_keys: the most keys accepted in one JWKS document; a larger document is refused whole.
        clock: monotonic seconds (`time.monotonic`); inject a fake one in tests.
        wall_clock: Unix seconds (`time.time`), for the fetch times of key sets shared with other processes.
        shared_keys_max_age: with `shared`, a key set another process fetched is taken only if it was fetched
            at most this many seconds ago; otherwise this process asks the issuer (and publishes what it gets).
        observer: told about every fetch (`on_fetch`, or `on_fetch_event` with the duration and URL); a
            `TokenVerifier` given an observer sets it when it is `None`.
        shared: a store shared by processes and pods (e.g. `k8s_jwt_auth.redis_cache.RedisCache`): fetched
            key sets are shared through it, so a fleet fetches once per refresh (see `SharedJwksFetcher`).

    Raises:
        ConfigurationError: for non-https URLs, a bad timeout or an unreadable CA file.
    """

    def __init__(
        self,
        issuer: str,
        *,
        jwks_uri: str | None = None,
        ca_file: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        token_file: str | None = None,
        timeout: float = 5.0,
        cache_max_age: float = 600.0,
        cooldown: float = 30.0,
        max_stale: float = 3600.0,
        allow_insecure_http: bool = False,
        max_response_size: int = 1024 * 1024,
        max_keys: int = DEFAULT_MAX_KEYS,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        clock: Callable[[], float] | None = None,
        observer: Observer | None = None,
        shared: SharedStore | None = None,
        wall_clock: Callable[[], float] | None = None,
        shared_keys_max_age: float = DEFAULT_SHARED_KEYS_MAX_AGE,
    ) -> None:
        self.observer = observer
        cache_max_age = seconds(cache_max_age, "cache_max_age", setting="CACHE_MAX_AGE")
        cooldown = seconds(cooldown, "cooldown", setting="COOLDOWN")
        max_stale = seconds(max_stale, "max_stale", setting="MAX_STALE")
        self.fetcher = JwksFetcher(issuer, jwks_uri=jwks_uri, ca_file=ca_file, ssl_context=ssl_context,
                                   token_file=token_file, timeout=timeout, allow_insecure_http=allow_insecure_http,
                                   max_response_size=max_response_size, max_keys=max_keys,
                                   connect_timeout=connect_timeout)
        self._cache_max_age, self._cooldown, self._max_stale = cache_max_age, cooldown, max_stale
        self.shared = shared
        self._via: Fetcher = self.fetcher if shared is None else SharedJwksFetcher(
            self.fetcher, shared, max_age=self._effective_max_age, clock=wall_clock or time.time,
            max_shared_age=shared_keys_max_age)
        self._clock: Callable[[], float] = clock if clock is not None else time.monotonic
        self._wait_limit = self._via.max_duration + 1.0
        self._lock = threading.Lock()
        self._keys: KeySet | None = None
        self._jwks_uri: str | None = None
        self._fetched_at = self._expires = self._refresh_at = self._max_age = 0.0
        self._seq = self._applied = self._fetch_count = self._failures = 0
        self._from_shared = False  # the current keys were taken from the shared store, not fetched here
        self._inflight: Future[None] | None = None
        self._inflight_since = 0.0  # time.monotonic(), to give up on a fetch whose runner vanished
        self._retry_at = self._unknown_until = -math.inf
        self._last_error: str | None = None
        self._unknown: dict[str, float] = {}  # kid -> end of the cooldown it was found unknown in

    @classmethod
    def from_config(
        cls, config: VerifierConfig, *, clock: Callable[[], float] | None = None,
        ssl_context: ssl.SSLContext | None = None, shared: SharedStore | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> RemoteKeySource:
        """The remote source a `VerifierConfig` describes (`shared`, `wall_clock`: see the class).

        Raises:
            ConfigurationError: when the CA file cannot be loaded.
        """
        return cls(config.issuer, jwks_uri=config.jwks_uri, ca_file=config.ca_file, ssl_context=ssl_context,
                   token_file=config.token_file, timeout=config.timeout, cache_max_age=config.cache_max_age,
                   cooldown=config.cooldown, max_stale=config.max_stale,
                   allow_insecure_http=config.allow_insecure_http, max_response_size=config.max_response_size,
                   max_keys=config.max_keys, connect_timeout=config.connect_timeout, clock=clock, shared=shared,
                   wall_clock=wall_clock, shared_keys_max_age=config.shared_keys_max_age)

    def __repr__(self) -> str:
        return f"RemoteKeySource(issuer={self.fetcher.issuer!r}, jwks_uri={self.fetcher.jwks_uri!r})"

    # -- KeySource -------------------------------------------------------------------------------

    def get(self, kid: str | None, alg: str) -> VerificationKey:
        """The key for `kid`, fetching (or waiting for a fetch) only when needed. Blocks; no event loop.

        Raises:
            InvalidToken: `unknown_key` (claim `kid`) when the current key set has no such key.
            KeySetUnavailable: when there are no usable keys (never fetched, or stale for too long).
        """
        plan = self._plan(kid, alg)
        self._start_background(plan)
        for again in (True, False):  # a second fetch only for a kid missing from a key set another process fetched
            if plan.lead:
                self._run(plan.lead, plan.wait)
            elif plan.wait is not None:
                wait_futures([plan.wait], timeout=self._wait_limit)
            else:
                return plan.result()
            plan = self._settled(kid, alg, again=again)
        return plan.result()

    async def get_async(self, kid: str | None, alg: str) -> VerificationKey:
        """Like `get`, for asyncio: fetches with `httpx.AsyncClient` and never blocks the loop.

        Raises:
            InvalidToken: `unknown_key` (claim `kid`) when the current key set has no such key.
            KeySetUnavailable: when there are no usable keys (never fetched, or stale for too long).
        """
        plan = self._plan(kid, alg)
        self._start_background(plan)
        for again in (True, False):  # as in `get`
            if plan.lead:
                await self._run_async(plan.lead, plan.wait)
            elif plan.wait is not None:
                await wait_async(plan.wait, self._wait_limit)
            else:
                return plan.result()
            plan = self._settled(kid, alg, again=again)
        return plan.result()

    def refresh(self) -> KeySet:
        """Fetch now, whatever the cache state (a failed fetch keeps the current keys).

        Raises:
            KeySetUnavailable: when the fetch fails.
        """
        with self._lock:
            seq, future = self._begin()
        return self._refreshed(self._run(seq, future))

    async def refresh_async(self) -> KeySet:
        """Like `refresh`, with `httpx.AsyncClient`.

        Raises:
            KeySetUnavailable: when the fetch fails.
        """
        with self._lock:
            seq, future = self._begin()
        return self._refreshed(await self._run_async(seq, future))

    def status(self) -> KeySourceStatus:
        """A snapshot of the cache state."""
        now = self._clock()
        with self._lock:
            keys = self._keys
            return KeySourceStatus(
                fresh=keys is not None and now < self._expires,
                stale=keys is not None and self._expires <= now < self._expires + self._max_stale,
                cooling_down=now < self._unknown_until,
                reloading=self._joinable() is not None,
                kids=keys.kids if keys is not None else (),
                max_age=self._max_age if keys is not None else None,
                last_refresh_age=now - self._fetched_at if keys is not None else None,
                fetch_count=self._fetch_count,
                failures=self._failures,
                last_error=self._last_error,
                retry_in=max(0.0, self._retry_at - now),
                jwks_uri=self._jwks_uri,
            )

    # -- decisions, under the lock ---------------------------------------------------------------

    def _plan(self, kid: str | None, alg: str) -> _Plan:
        now = self._clock()
        with self._lock:
            keys = self._usable(now)
            key = keys.find(kid, alg) if keys is not None else None
            if key is not None:
                if now < self._expires or self._failures:  # fresh, or stale because refreshes fail
                    return _Plan(key=key, background=self._background_due(now))
                return self._join_or_lead()  # expired after a good fetch: refetch before answering
            if keys is not None:
                return self._plan_unknown(kid, now)
            if self._joinable() is not None or now >= self._retry_at:
                return self._join_or_lead()
            return _Plan(error=self._unavailable(now))

    def _plan_unknown(self, kid: str | None, now: float) -> _Plan:
        if kid is not None and self._unknown.get(kid, -math.inf) > now:
            return _Plan(error=_unknown_key(kid))
        if self._joinable() is not None:
            return self._join_or_lead()
        if not self._may_refetch_for_unknown(now):
            self._remember_unknown(kid, now)
            return _Plan(error=_unknown_key(kid))
        self._unknown_until = now + self._cooldown
        return self._join_or_lead()

    def _may_refetch_for_unknown(self, now: float) -> bool:
        """Whether a kid missing from the key set may cause a refetch now: not while failed fetches back off,
        and at most once per cooldown — unless the set was taken from the shared store, i.e. another process
        fetched it, maybe before the issuer published this kid: then the issuer has not been asked yet."""
        return now >= self._retry_at and (now >= self._unknown_until or self._from_shared)

    def _settled(self, kid: str | None, alg: str, *, again: bool = False) -> _Plan:
        """The answer after waiting for a fetch. With `again`, a kid missing from a key set taken from the
        shared store leads to (or joins) one more fetch, which does not take that set again; else it is final."""
        now = self._clock()
        with self._lock:
            keys = self._usable(now)
            if keys is None:
                return _Plan(error=self._unavailable(now))
            key = keys.find(kid, alg)
            if key is not None:
                return _Plan(key=key)
            if again and self._from_shared and self._may_refetch_for_unknown(now):
                self._unknown_until = max(self._unknown_until, now + self._cooldown)
                return self._join_or_lead()
            if not self._from_shared:  # the issuer itself was asked: remember the kid for the cooldown
                self._remember_unknown(kid, now)
            return _Plan(error=_unknown_key(kid))

    def _usable(self, now: float) -> KeySet | None:
        if self._keys is not None and now < self._expires + self._max_stale:
            return self._keys
        return None

    def _joinable(self) -> Future[None] | None:
        if self._inflight is not None and time.monotonic() - self._inflight_since > self._wait_limit:
            self._inflight = None  # its runner vanished (e.g. its event loop closed mid-fetch)
        return self._inflight

    def _join_or_lead(self) -> _Plan:
        inflight = self._joinable()
        if inflight is not None:
            return _Plan(wait=inflight)
        seq, future = self._begin()
        return _Plan(wait=future, lead=seq)

    def _background_due(self, now: float) -> tuple[int, Future[None]] | None:
        if now < self._refresh_at or now < self._retry_at or self._joinable() is not None:
            return None
        return self._begin()

    def _begin(self) -> tuple[int, Future[None]]:
        self._seq += 1
        self._fetch_count += 1
        future: Future[None] = Future()
        future.set_running_or_notify_cancel()  # a running future cannot be cancelled by a waiter
        self._inflight, self._inflight_since = future, time.monotonic()
        return self._seq, future

    def _remember_unknown(self, kid: str | None, now: float) -> None:
        if kid is None or now >= self._unknown_until:
            return
        if len(self._unknown) >= MAX_UNKNOWN_KIDS:
            self._unknown = {k: until for k, until in self._unknown.items() if until > now}
        if len(self._unknown) < MAX_UNKNOWN_KIDS:
            self._unknown[kid] = self._unknown_until

    def _unavailable(self, now: float) -> KeySetUnavailable:
        retry = self._retry_at - now if self._retry_at > now else self.fetcher.timeout
        detail = self._last_error or "the key set is still being fetched"
        return KeySetUnavailable(f"no usable verification keys for issuer {self.fetcher.issuer!r}: {detail}",
                                 retry_after=math.ceil(retry))

    # -- fetches ---------------------------------------------------------------------------------

    def _start_background(self, plan: _Plan) -> None:
        if plan.background is None:
            return
        seq, future = plan.background
        thread = threading.Thread(target=self._run, args=(seq, future), name="k8s-jwt-auth-keys", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # cannot start a thread (interpreter shutting down): just don't refresh
            self._settle(future)

    def _run(self, seq: int, future: Future[None] | None) -> FetchError | None:
        start = time.perf_counter()
        try:
            result = self._via.fetch()
            self._report(start, result)
            self._succeeded(seq, result)
        except FetchError as exc:
            self._report(start, exc)
            return self._failed(seq, exc)
        finally:
            self._settle(future)
        return None

    async def _run_async(self, seq: int, future: Future[None] | None) -> FetchError | None:
        start = time.perf_counter()
        try:
            result = await self._fetch_async()
            self._report(start, result)
            self._succeeded(seq, result)
        except FetchError as exc:
            self._report(start, exc)
            return self._failed(seq, exc)
        finally:  # also when the caller is cancelled: waiters must not wait for a fetch nobody runs
            self._settle(future)
        return None

    async def _fetch_async(self) -> FetchResult:
        return await fetch_within(self._via)

    def _settle(self, future: Future[None] | None) -> None:
        with self._lock:
            if self._inflight is future:
                self._inflight = None
        if future is not None and not future.done():
            future.set_result(None)

    def _report(self, start: float, outcome: FetchResult | FetchError) -> None:
        """Tell the observer how a fetch that began at `start` (`time.perf_counter()`) ended."""
        if self.observer is None:
            return
        seconds, issuer = time.perf_counter() - start, self.fetcher.issuer
        if isinstance(outcome, FetchError):
            event = FetchEvent(outcome=outcome.kind, seconds=seconds, issuer=issuer, url=outcome.url,
                               status=outcome.status)
        else:
            event = FetchEvent(outcome="success", seconds=seconds, issuer=issuer, url=outcome.jwks_uri,
                               keys=len(outcome.keys), shared=outcome.shared)
        Hooks(self.observer).fetch(event)

    def _succeeded(self, seq: int, result: FetchResult) -> None:
        max_age = self._effective_max_age(result.max_age)
        fetched_at = self._clock() - min(max(result.age, 0.0), max_age)  # a shared document may be older
        with self._lock:
            if seq < self._applied:  # a newer fetch already answered: never go back to older keys
                return
            self._keys, self._jwks_uri, self._applied = result.keys, result.jwks_uri, seq
            self._from_shared = result.shared
            self._fetched_at, self._max_age = fetched_at, max_age
            self._expires, self._refresh_at = fetched_at + max_age, fetched_at + REFRESH_AHEAD * max_age
            self._failures, self._retry_at, self._last_error = 0, -math.inf, None
        logger.debug("fetched %d keys from %s (kids %s, max age %g s)", len(result.keys), result.jwks_uri,
                     ", ".join(str(k) for k in result.keys.kids), max_age)

    def _failed(self, seq: int, error: FetchError) -> FetchError:
        now = self._clock()
        with self._lock:
            if seq < self._applied:
                return error
            self._failures += 1
            self._retry_at = now + min(max(self._cooldown, 1.0), 2.0 ** min(self._failures - 1, 16))
            self._last_error = error.message
            serving, age, retry = self._usable(now) is not None, now - self._fetched_at, self._retry_at - now
        if serving:
            logger.warning("refreshing the keys of %s failed: %s; still serving the last good keys, fetched %.0f s "
                           "ago (up to %.0f s past their max age); next try in %.0f s", self.fetcher.issuer,
                           error.message, age, self._max_stale, retry)
        else:
            logger.warning("fetching the keys of %s failed: %s; tokens cannot be verified (503) until a fetch "
                           "succeeds; next try in %.0f s", self.fetcher.issuer, error.message, retry)
        return error

    def _refreshed(self, error: FetchError | None) -> KeySet:
        with self._lock:
            keys, retry = self._keys, max(1.0, self._retry_at - self._clock())
        if error is not None or keys is None:
            message = error.message if error is not None else "no key set"
            raise KeySetUnavailable(f"refreshing the keys of {self.fetcher.issuer!r} failed: {message}",
                                    retry_after=math.ceil(retry)) from error
        return keys

    def _effective_max_age(self, advertised: float | None) -> float:
        if advertised is None:
            return self._cache_max_age
        return min(self._cache_max_age, max(min(MIN_MAX_AGE, self._cache_max_age), advertised))


def _unknown_key(kid: str | None) -> InvalidToken:
    shown = kid if kid is None or len(kid) <= 64 else kid[:64] + "..."
    return InvalidToken(f"no key with kid {shown!r} in the issuer's key set", reason="unknown_key", claim="kid")

