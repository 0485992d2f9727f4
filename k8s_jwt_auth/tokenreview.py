"""TokenReview mode: the API server confirms a locally verified token (`authentication.k8s.io/v1`).

Local verification proves that the cluster signed a token and that it has not expired; it cannot see that
the pod or the service account it is bound to was deleted since. A `TokenReviewer` asks the API server:

```
POST {url}/apis/authentication.k8s.io/v1/tokenreviews
Authorization: Bearer <this service's own token, re-read from token_file on every request>

{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
 "spec": {"token": "<the caller's token>", "audiences": ["<configured audiences>"]}}
```

and maps the answer (HTTP 201 in every case; a failed review has no `authenticated` field):

* authenticated, for the same user (and, when both sides name them, the same pod UID and credential id)
  and for at least one configured audience → the identity with `reviewed=True` and the user's `groups`;
* not authenticated → `InvalidToken`: `expired` ("... has expired"), `bad_audience` (the error is about
  audiences; quoted names and audiences in the text are not looked at), otherwise `token_revoked` (e.g.
  "service account token has been invalidated" after the pod was deleted, `serviceaccounts "NAME" not
  found`, "pod UID (...) does not match service account pod ref claim (...)" or "service account UID (...)
  does not match claim (...)" after a re-creation). Authenticated for another user, pod or credential →
  `claim_mismatch`; authenticated for none of our audiences → `bad_audience`;
* no usable answer (unreachable, timeout, TLS, 401, 403, 5xx, non-JSON or malformed document, unreadable
  token file) → `TokenReviewUnavailable` (503, `review_unavailable`, `retry_after`), or with
  `fallback_to_local=True` the identity unchanged (`reviewed=False`). A warning is logged on the
  `k8s_jwt_auth.tokenreview` logger once per outage, and an info line when reviews work again. After a
  failed request, reviews are not retried for 1, 2, 4 ... s (at most 30 s, or longer if the API server
  sends `Retry-After`); meanwhile callers are answered at once, so an API server that does not answer
  cannot stall every request for the full timeout.

Answers (positive and negative, never "unavailable") are cached by the SHA-256 digest of the token (with
the configured audiences) for `cache_ttl` seconds and never beyond the token's expiry, in a bounded
`cachetools.TTLCache` guarded by a `threading.Lock` (never held during I/O). Concurrent reviews of the
same token cause one request (single flight, a `concurrent.futures.Future` waiters wait on without
blocking an event loop). With a `shared` store (`k8s_jwt_auth._shared.SharedStore`, e.g. Redis) answers
are also shared by replicas under the namespace `"tr"`, as compact JSON.

The flow (local cache, single flight, shared cache, POST, store) is written once as a generator of I/O
steps, driven by `review` (blocking `httpx.Client`, no event loop needed) and `review_async`
(`httpx.AsyncClient`, never blocks the loop). Requests reuse kept-alive connections
(`k8s_jwt_auth._transport.SessionPool`): one blocking client shared by every thread, and one async client per
event loop (a client is bound to its loop), at most `max_connections` connections each, idle ones closed
after `KEEPALIVE_EXPIRY` seconds. `close()`/`aclose()` release them. A request that meets a kept-alive connection
the API server had just closed is sent again on a new one (a TokenReview creates nothing: it is safe to
repeat). The token is never logged and never appears in an error message; logs name a token by its
fingerprint.

This module holds the reviewer. What an answer says (`TokenReviewResult`, re-exported here) lives in
`k8s_jwt_auth._review_result`, the HTTP exchange and the meaning of an HTTP status in
`k8s_jwt_auth._transport`, and the two drivers in `k8s_jwt_auth._flow`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

import httpx
from cachetools import TTLCache

from ._flow import Flow, arun, run, wait_async
from ._observer import UNOBSERVED, Hooks, ReviewObservation, Unobserved
from ._review_result import (
    EXTRA_CREDENTIAL_ID,
    EXTRA_NODE_NAME,
    EXTRA_NODE_UID,
    EXTRA_POD_NAME,
    EXTRA_POD_UID,
    Entry,
    TokenReviewResult,
    check_user,
    decode_entry,
    encode_entry,
    rejected,
)
from ._transport import (
    DEFAULT_CONNECT_TIMEOUT,
    FetchError,
    Response,
    SessionPool,
    bearer_header,
    check_status,
    exchange,
    exchange_async,
    ssl_context_from,
    url_problem,
)
from ._validate import seconds, whole_number
from .config import DEFAULT_API_SERVER
from .errors import ConfigurationError, InvalidToken, TokenReviewUnavailable
from .identity import WorkloadIdentity

if TYPE_CHECKING:
    from ._observer import Observer
    from ._shared import SharedStore
    from .config import VerifierConfig

__all__ = [
    "EXTRA_CREDENTIAL_ID",
    "EXTRA_NODE_NAME",
    "EXTRA_NODE_UID",
    "EXTRA_POD_NAME",
    "EXTRA_POD_UID",
    "KEEPALIVE_EXPIRY",
    "REVIEW_PATH",
    "SHARED_NAMESPACE",
    "TokenReviewInfo",
    "TokenReviewResult",
    "TokenReviewer",
]

logger = logging.getLogger("k8s_jwt_auth.tokenreview")

REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
SHARED_NAMESPACE = "tr"
MAX_BACKOFF = 30.0  # the longest pause between review attempts after failures (seconds)
MAX_RETRY_AFTER = 300.0  # a server's Retry-After is honoured up to this
# Seconds an idle kept-alive connection is kept: below kube-apiserver's idle timeout (90 s) and the 60 s of
# common load balancers, so that we, not the server, close it (no request races the server's close).
KEEPALIVE_EXPIRY = 30.0
_JSON = "application/json"


# -- observability -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenReviewInfo:
    """Counters of a `TokenReviewer` (a snapshot).

    Attributes:
        reviews: calls of `review`/`review_async`.
        requests: TokenReview requests sent to the API server.
        hits: reviews answered from the local cache (or by a concurrent review of the same token).
        shared_hits: reviews answered from the shared store.
        failures: requests without a usable answer.
        maxsize: the most answers the local cache keeps (0: no local cache).
        currsize: answers in the local cache now.
        available: `False` during an outage (the last request failed).
    """

    reviews: int
    requests: int
    hits: int
    shared_hits: int
    failures: int
    maxsize: int
    currsize: int
    available: bool


# -- the I/O steps the flow yields --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Wait:
    """Wait (bounded) for a concurrent review of the same token."""

    future: Future[_Outcome | None]


@dataclass(frozen=True, slots=True)
class _SharedGet:
    key: bytes


@dataclass(frozen=True, slots=True)
class _SharedSet:
    key: bytes
    value: bytes
    ttl: float


@dataclass(frozen=True, slots=True)
class _Post:
    url: str
    body: bytes = field(repr=False)  # holds the token
    headers: tuple[tuple[str, str], ...] = field(repr=False)  # holds our own token


_Op = Union[_Wait, _SharedGet, _SharedSet, _Post]  # noqa: UP007 - runtime alias on 3.10
_Outcome = Union[TokenReviewResult, TokenReviewUnavailable]  # noqa: UP007
_Flow = Flow[_Op, WorkloadIdentity]
_Seen = Union[ReviewObservation, Unobserved]  # noqa: UP007



# -- the reviewer ------------------------------------------------------------------------------------


class TokenReviewer:
    """Confirms locally verified tokens with the API server's TokenReview API. Thread-safe; sync and async.

    Args:
        url: the API server (`https://kubernetes.default.svc` in a pod).
        audiences: the audiences to review for (`spec.audiences`): the verifier's audiences.
        token_file: this service's own token (in a pod `/var/run/secrets/kubernetes.io/serviceaccount/token`),
            sent as `Authorization: Bearer`, re-read on every request (the kubelet rotates it).
        ca_file: PEM CA bundle that signed the API server's certificate (the cluster CA `ca.crt`).
        ssl_context: a ready `ssl.SSLContext` (wins over `ca_file`).
        timeout: seconds for each socket operation; a whole request (connect, status line, headers, body) is
            cut off after 2 × timeout.
        connect_timeout: seconds for connecting (at most `timeout`): an unreachable API server fails fast, so
            the fail-closed or fallback decision comes quickly.
        cache_ttl: seconds an answer is reused at most (never beyond the token's expiry); 0 turns caching
            (local and shared) off, and then every call sends its own request.
        cache_size: the most answers kept in the local cache.
        fallback_to_local: when the API server gives no usable answer, return the locally verified
            identity (`reviewed=False`) instead of raising `TokenReviewUnavailable`.
        allow_insecure_http: allow plain http to hosts other than loopback.
        clock: the current time in Unix seconds (`time.time`); inject the verifier's clock in tests.
        shared: a store shared by replicas (`SharedStore`), used under the namespace `"tr"`.
        max_response_size: the largest accepted response body, in bytes.
        max_connections: the most connections open to the API server at once, per event loop and for all
            threads together; a request finding them all busy waits for one (at most `timeout`).
        keep_alive: keep connections open between reviews (the default). `False` opens a new connection for
            every review: each one may then reach another API server replica behind a load balancer.
        observer: told about every review (`on_review_event`, see `k8s_jwt_auth._observer`); a `TokenVerifier`
            given an observer sets it when it is `None`.

    Call `close()` (or `await aclose()`) when done to close the kept-alive connections at once (they are
    closed anyway when idle for `KEEPALIVE_EXPIRY` seconds, and when an event loop shuts down); the reviewer
    stays usable.

    Raises:
        ConfigurationError: for a URL that is not https (or loopback http), no audiences, bad numbers or
            an unreadable CA file.
    """

    def __init__(
        self,
        url: str = DEFAULT_API_SERVER,
        *,
        audiences: str | Sequence[str],
        token_file: str | None = None,
        ca_file: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 5.0,
        cache_ttl: float = 5.0,
        cache_size: int = 10_000,
        fallback_to_local: bool = False,
        allow_insecure_http: bool = False,
        clock: Callable[[], float] | None = None,
        shared: SharedStore | None = None,
        max_response_size: int = 1024 * 1024,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_connections: int = 32,
        keep_alive: bool = True,
        observer: Observer | None = None,
    ) -> None:
        problem = url_problem(url, allow_insecure_http)
        if problem is not None:
            raise ConfigurationError(f"tokenreview_url {problem}", setting="TOKENREVIEW_URL")
        self.audiences = _audiences(audiences)
        _check_numbers(timeout, cache_ttl, cache_size, max_response_size)
        whole_number(max_connections, "max_connections", minimum=1)
        self.url = url.rstrip("/")
        self.review_url = self.url + REVIEW_PATH
        self.token_file = token_file
        self.timeout = float(timeout)
        self.connect_timeout = seconds(connect_timeout, "connect_timeout", positive=True, setting="CONNECT_TIMEOUT")
        self.cache_ttl = float(cache_ttl)
        self.fallback_to_local = fallback_to_local
        self.shared = shared if self.cache_ttl > 0 else None
        self.max_response_size = max_response_size
        self.ssl_context = ssl_context if ssl_context is not None else ssl_context_from(ca_file)
        self.max_duration = 3 * self.timeout
        self._pool = SessionPool(verify=self.ssl_context, timeout=self.timeout, connect_timeout=self.connect_timeout,
                                 limits=httpx.Limits(max_connections=max_connections,
                                                     max_keepalive_connections=max_connections if keep_alive else 0,
                                                     keepalive_expiry=KEEPALIVE_EXPIRY))
        self._clock: Callable[[], float] = clock if clock is not None else time.time
        self._audience_set = frozenset(self.audiences)
        self._salt = json.dumps(sorted(self.audiences)).encode()
        self._lock = threading.Lock()
        self._cache: TTLCache[bytes, Entry] | None = (
            TTLCache(maxsize=cache_size, ttl=self.cache_ttl, timer=self._clock)
            if self.cache_ttl > 0 and cache_size > 0 else None)
        self._inflight: dict[bytes, Future[_Outcome | None]] = {}
        # key -> (cache entry, identity in, reviewed identity out): a hit for the same identity object is a lookup
        self._memo: dict[bytes, tuple[Entry, WorkloadIdentity, WorkloadIdentity]] = {}
        self._reviews = self._requests = self._hits = self._shared_hits = self._failures = self._streak = 0
        self._retry_at = -math.inf
        self._outage: str | None = None  # the error of the failure that started the current outage
        self._last_error: str | None = None
        self.observer = observer
        self._hooks: Hooks | None = None  # the observer's optional event methods, looked up on first use

    @classmethod
    def from_config(
        cls, config: VerifierConfig, *, clock: Callable[[], float] | None = None,
        shared: SharedStore | None = None, ssl_context: ssl.SSLContext | None = None,
    ) -> TokenReviewer:
        """The reviewer a `VerifierConfig` describes (`tokenreview_url`, `tokenreview_cache_ttl`,
        `tokenreview_fallback`, and the shared `audiences`, `token_file`, `ca_file`, `timeout`,
        `connect_timeout`, `allow_insecure_http`, `max_response_size`).

        Raises:
            ConfigurationError: when the URL is not acceptable or the CA file cannot be loaded.
        """
        return cls(config.tokenreview_url, audiences=config.audiences, token_file=config.token_file,
                   ca_file=config.ca_file, ssl_context=ssl_context, timeout=config.timeout,
                   cache_ttl=config.tokenreview_cache_ttl, fallback_to_local=config.tokenreview_fallback,
                   allow_insecure_http=config.allow_insecure_http, clock=clock, shared=shared,
                   max_response_size=config.max_response_size, connect_timeout=config.connect_timeout)

    def __repr__(self) -> str:
        return (f"TokenReviewer(url={self.url!r}, audiences={self.audiences!r}, cache_ttl={self.cache_ttl:g}, "
                f"fallback_to_local={self.fallback_to_local!r})")

    # -- public API --------------------------------------------------------------------------------

    def review(self, token: str | bytes, identity: WorkloadIdentity) -> WorkloadIdentity:
        """Confirm a token that local verification turned into `identity`. Blocks; never needs an event loop.

        Returns:
            `identity` with `reviewed=True` and the user's groups; with `fallback_to_local` and no usable
            answer, `identity` unchanged.

        Raises:
            InvalidToken: `token_revoked`, `expired`, `bad_audience` or `claim_mismatch` (see the module).
            TokenReviewUnavailable: the API server gave no usable answer (and no fallback is configured).
        """
        with self._observe() as seen:
            flow = self._start(token, identity, seen)
            reviewed = flow if isinstance(flow, WorkloadIdentity) else run(flow, self._do)
            seen.fallback = reviewed is identity  # only a fallback hands the local identity back
            return reviewed

    async def review_async(self, token: str | bytes, identity: WorkloadIdentity) -> WorkloadIdentity:
        """Like `review`, for event loops: `httpx.AsyncClient`, the store's async methods, no blocking wait.

        Raises:
            InvalidToken: `token_revoked`, `expired`, `bad_audience` or `claim_mismatch` (see the module).
            TokenReviewUnavailable: the API server gave no usable answer (and no fallback is configured).
        """
        with self._observe() as seen:
            flow = self._start(token, identity, seen)
            # arun closes the flow on cancellation: waiters are released
            reviewed = flow if isinstance(flow, WorkloadIdentity) else await arun(flow, self._do_async)
            seen.fallback = reviewed is identity
            return reviewed

    def close(self) -> None:
        """Close the kept-alive connections: the blocking client's now, each event loop's on that loop.

        The reviewer stays usable; the next review opens a new connection.
        """
        self._pool.close()

    async def aclose(self) -> None:
        """Like `close()`, and the running event loop's connections are closed before this returns."""
        await self._pool.aclose()

    def cache_info(self) -> TokenReviewInfo:
        """Counters: reviews, requests, cache hits, failures, cache size, and whether reviews work."""
        with self._lock:
            return TokenReviewInfo(self._reviews, self._requests, self._hits, self._shared_hits, self._failures,
                                   int(self._cache.maxsize) if self._cache is not None else 0,
                                   len(self._cache) if self._cache is not None else 0, self._outage is None)

    def clear_cache(self) -> None:
        """Forget every cached answer (the shared store is left alone)."""
        with self._lock:
            self._memo.clear()
            if self._cache is not None:
                self._cache.clear()

    # -- the flow, written once --------------------------------------------------------------------

    def _observe(self) -> _Seen:
        """Times the call for an observer with `on_review_event`; a shared no-op otherwise."""
        observer = self.observer
        if observer is None:
            return UNOBSERVED
        self._hooks = hooks = Hooks.of(observer, self._hooks)
        if hooks.review_event is None:
            return UNOBSERVED
        return ReviewObservation(hooks.review_event, self._cache is not None or self.shared is not None,
                                 self.review_url)

    def _start(self, token: str | bytes, identity: WorkloadIdentity, seen: _Seen) -> WorkloadIdentity | _Flow:
        """The reviewed identity already built for this identity and answer, else the flow to run."""
        text = _text(token)
        key = self._key(text)
        known = self._memorised(key, identity)
        if known is None:
            return self._flow(text, identity, key, seen)
        seen.cached = True
        return known

    def _key(self, token: str) -> bytes:
        """The cache and shared-store key: the token's digest with the audiences asked for (never the token)."""
        return hashlib.sha256(hashlib.sha256(token.encode("ascii")).digest() + b"\n" + self._salt).digest()

    def _memorised(self, key: bytes, identity: WorkloadIdentity) -> WorkloadIdentity | None:
        """The reviewed identity made from this very `identity` and the cached answer still in force, if any.

        The verifier hands the same identity object for a token it has cached, so a cache hit here skips
        checking the answer against the identity and building the reviewed copy again.
        """
        now = self._clock()
        with self._lock:
            memo = self._memo.get(key)
            if memo is None or memo[1] is not identity or self._cache is None:
                return None
            entry = self._cache.get(key)
            if entry is not memo[0] or now >= entry.until:
                return None
            self._reviews += 1
            self._hits += 1
            return memo[2]

    def _memorise(self, key: bytes, outcome: _Outcome, identity: WorkloadIdentity,
                  reviewed: WorkloadIdentity) -> None:
        with self._lock:
            entry = self._cache.get(key) if self._cache is not None else None
            if entry is None or entry.result is not outcome:
                return
            if len(self._memo) >= self._cache.maxsize:  # type: ignore[union-attr]  # entry implies a cache
                self._memo = {k: m for k, m in self._memo.items() if self._cache.get(k) is m[0]}  # type: ignore[union-attr]
            self._memo[key] = (entry, identity, reviewed)

    def _flow(self, token: str, identity: WorkloadIdentity, key: bytes, seen: _Seen) -> _Flow:
        until = self._until(identity)
        cached, joined, lead = self._plan(key)
        outcome: _Outcome | None = cached
        if outcome is None and joined is not None:
            yield _Wait(joined)
            outcome = self._joined(joined)
        if isinstance(outcome, TokenReviewResult):  # from the cache, or a concurrent review's answer
            seen.cached = True
        if outcome is None:
            try:
                outcome = yield from self._obtain(token, key, until, seen)
            finally:
                self._settle(key, lead, outcome)
        reviewed = self._apply(outcome, identity, token)
        if reviewed is not identity:
            self._memorise(key, outcome, identity, reviewed)
        return reviewed

    def _obtain(self, token: str, key: bytes, until: float, seen: _Seen) -> Flow[_Op, _Outcome]:
        """Shared store, else a request; the answer is cached and shared. Never raises for "unavailable"."""
        if self.shared is not None and until > self._clock():
            value = yield _SharedGet(key)
            entry = decode_entry(value, self._clock()) if isinstance(value, bytes) else None
            if entry is not None:
                self._remember(key, Entry(entry.result, min(entry.until, until)), shared_hit=True)
                seen.cached = True
                return entry.result
        if not self._may_request():
            return self._backing_off()
        try:
            post = _Post(self.review_url, self._body(token), self._auth_headers())
        except FetchError as exc:
            return self._failed(exc, None)
        seen.requested = True
        response = yield post
        if isinstance(response, FetchError):
            return self._failed(response, None)
        assert isinstance(response, Response)
        try:
            result = self._read(response)
        except (FetchError, TokenReviewUnavailable) as exc:
            return self._failed(exc, response)
        self._succeeded()
        entry = Entry(result, until)
        self._remember(key, entry)
        ttl = until - self._clock()
        if self.shared is not None and ttl > 0:
            yield _SharedSet(key, encode_entry(entry), ttl)
        return result

    def _body(self, token: str) -> bytes:
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                  "spec": {"token": token, "audiences": list(self.audiences)}}
        return json.dumps(review, separators=(",", ":")).encode()

    def _auth_headers(self) -> tuple[tuple[str, str], ...]:
        headers = (("Accept", _JSON), ("Content-Type", _JSON), ("Accept-Encoding", "identity"))
        if self.token_file is None:
            return headers
        return (*headers, bearer_header(self.token_file, "this service's token file"))

    def _read(self, response: Response) -> TokenReviewResult:
        check_status(response, ok=(200, 201), hints=_status_hints(self.token_file), server_failed="the API server "
                     "failed", redirect="; redirects are not followed: configure the API server's URL as "
                     "tokenreview_url")
        try:
            document = json.loads(response.body)
        except (ValueError, RecursionError) as exc:
            raise FetchError("bad_json", f"the TokenReview answer from {response.url} is not JSON (content-type "
                                         f"{response.headers.get('content-type', 'none')!r})",
                             url=response.url) from exc
        return TokenReviewResult.from_response(document)

    # -- mapping the answer ------------------------------------------------------------------------

    def _apply(self, outcome: _Outcome, identity: WorkloadIdentity, token: str) -> WorkloadIdentity:
        if isinstance(outcome, TokenReviewUnavailable):
            if self.fallback_to_local:
                return identity
            raise TokenReviewUnavailable(outcome.message, retry_after=outcome.retry_after)
        if not outcome.authenticated:
            raise rejected(outcome.error, token)
        check_user(outcome, identity)
        if not self._audience_set.intersection(outcome.audiences):
            raise InvalidToken(f"the API server authenticated the token for audiences {list(outcome.audiences)}, "
                               f"none of which is configured ({list(self.audiences)})", reason="bad_audience",
                               claim="aud")
        return dataclasses.replace(identity, reviewed=True, groups=outcome.groups)

    # -- state, under the lock ---------------------------------------------------------------------

    def _until(self, identity: WorkloadIdentity) -> float:
        """Until when an answer about this token may be reused: cache_ttl from now, never beyond exp."""
        until = self._clock() + self.cache_ttl
        if identity.expires_at is not None:
            until = min(until, identity.expires_at.timestamp())
        return until

    def _plan(self, key: bytes) -> tuple[TokenReviewResult | None, Future[_Outcome | None] | None,
                                         Future[_Outcome | None] | None]:
        """(cached answer, a review in flight to wait for, or the future this caller settles as the leader)."""
        now = self._clock()
        with self._lock:
            self._reviews += 1
            if self._cache is None:
                return None, None, None
            entry = self._cache.get(key)
            if entry is not None and now < entry.until:
                self._hits += 1
                return entry.result, None, None
            joined = self._inflight.get(key)
            if joined is not None:
                return None, joined, None
            lead: Future[_Outcome | None] = Future()
            lead.set_running_or_notify_cancel()
            self._inflight[key] = lead
            return None, None, lead

    def _joined(self, future: Future[_Outcome | None]) -> _Outcome | None:
        """The outcome of a concurrent review of the same token, or `None` (it did not finish: review anew)."""
        outcome = future.result() if future.done() else None
        if isinstance(outcome, TokenReviewResult):
            with self._lock:
                self._hits += 1
        return outcome

    def _settle(self, key: bytes, lead: Future[_Outcome | None] | None, outcome: _Outcome | None) -> None:
        if lead is None:
            return
        with self._lock:
            if self._inflight.get(key) is lead:
                del self._inflight[key]
        lead.set_result(outcome)

    def _remember(self, key: bytes, entry: Entry, *, shared_hit: bool = False) -> None:
        now = self._clock()
        with self._lock:
            if shared_hit:
                self._shared_hits += 1
            if self._cache is not None and entry.until > now:
                self._cache[key] = entry

    def _may_request(self) -> bool:
        now = self._clock()
        with self._lock:
            if now < self._retry_at:
                return False
            self._requests += 1
            return True

    def _backing_off(self) -> TokenReviewUnavailable:
        now = self._clock()
        with self._lock:
            retry, detail = self._retry_at - now, self._last_error or "the API server is not answering"
        return TokenReviewUnavailable(f"TokenReview is unavailable: {detail}; next try in {math.ceil(retry)} s",
                                      retry_after=math.ceil(retry))

    def _failed(self, error: FetchError | TokenReviewUnavailable, response: Response | None) -> TokenReviewUnavailable:
        now = self._clock()
        with self._lock:
            self._failures += 1
            self._streak += 1
            backoff = min(MAX_BACKOFF, 2.0 ** min(self._streak - 1, 16))
            backoff = max(backoff, _retry_after_header(response))
            self._retry_at, self._last_error = now + backoff, error.message
            first = self._outage is None
            if first:
                self._outage = error.message
        if first:
            action = ("answering with the locally verified identity (reviewed=False)" if self.fallback_to_local
                      else "refusing tokens with 503 review_unavailable")
            logger.warning("TokenReview at %s is unavailable: %s; %s until it works again", self.url,
                           error.message, action)
        return TokenReviewUnavailable(f"the API server could not review the token: {error.message}",
                                      retry_after=math.ceil(backoff))

    def _succeeded(self) -> None:
        with self._lock:
            recovered, self._outage, self._streak, self._retry_at = self._outage is not None, None, 0, -math.inf
            self._last_error = None
        if recovered:
            logger.info("TokenReview at %s works again", self.url)

    # -- the drivers -------------------------------------------------------------------------------

    def _do(self, op: _Op) -> object:
        if isinstance(op, _Post):
            return self._post(op)
        if isinstance(op, _SharedGet):
            assert self.shared is not None
            return self.shared.get(SHARED_NAMESPACE, op.key)
        if isinstance(op, _SharedSet):
            assert self.shared is not None
            self.shared.set(SHARED_NAMESPACE, op.key, op.value, op.ttl)
            return None
        wait_futures([op.future], timeout=self.max_duration + 1.0)
        return None

    async def _do_async(self, op: _Op) -> object:
        if isinstance(op, _Post):
            try:
                return await asyncio.wait_for(self._post_async(op), self.max_duration)
            except asyncio.TimeoutError:
                return FetchError("timeout", f"the TokenReview request took more than {self.max_duration:g} s",
                                  url=op.url)
        if isinstance(op, _SharedGet):
            assert self.shared is not None
            return await self.shared.aget(SHARED_NAMESPACE, op.key)
        if isinstance(op, _SharedSet):
            assert self.shared is not None
            await self.shared.aset(SHARED_NAMESPACE, op.key, op.value, op.ttl)
            return None
        await wait_async(op.future, self.max_duration + 1.0)  # only waits for it
        return None

    def _post(self, op: _Post) -> Response | FetchError:
        try:  # the Authorization header is per request: a rotated token file is read for each review
            return exchange(self._pool.session(), "POST", op.url, headers=dict(op.headers), content=op.body,
                            limit=self.max_response_size, timeout=self.timeout)
        except FetchError as exc:
            return exc

    async def _post_async(self, op: _Post) -> Response | FetchError:
        try:
            return await exchange_async(await self._pool.async_session(), "POST", op.url, headers=dict(op.headers),
                                        content=op.body, limit=self.max_response_size, timeout=self.timeout)
        except FetchError as exc:
            return exc


# -- helpers -------------------------------------------------------------------------------------------


def _text(token: str | bytes) -> str:
    # checked, not caught: a UnicodeError would carry the whole token in its chain
    if not token.isascii():
        raise InvalidToken("the token is not ASCII text", reason="malformed")
    return token.decode("ascii") if isinstance(token, bytes) else token


def _audiences(audiences: str | Sequence[str]) -> tuple[str, ...]:
    values = (audiences,) if isinstance(audiences, str) else tuple(audiences)
    if not values or not all(isinstance(a, str) and a.strip() for a in values):
        raise ConfigurationError("the TokenReviewer needs at least one non-empty audience (the verifier's "
                                 "audiences)", setting="AUDIENCES")
    return values


def _check_numbers(timeout: float, cache_ttl: float, cache_size: int, max_response_size: int) -> None:
    seconds(timeout, "timeout", positive=True, setting="TIMEOUT")
    seconds(cache_ttl, "tokenreview_cache_ttl", setting="TOKENREVIEW_CACHE_TTL")
    whole_number(cache_size, "cache_size")
    whole_number(max_response_size, "max_response_size", minimum=1024)


def _retry_after_header(response: Response | None) -> float:
    if response is None or response.status not in (429, 503):
        return 0.0
    value = response.headers.get("retry-after", "").strip()
    # delay-seconds are ASCII digits (RFC 9110): "²".isdigit() is true too, but float("²") raises
    return min(float(value), MAX_RETRY_AFTER) if value.isascii() and value.isdigit() else 0.0


def _status_hints(token_file: str | None) -> dict[int, str]:
    """What to tell the operator when the API server refuses the review, per HTTP status."""
    fix = (f"check token_file ({token_file!r}): it must hold this service's own, valid service-account token"
           if token_file else "no token_file is configured: give this service's own token file")
    return {
        401: f"the API server did not accept the request's credentials; {fix} (in a pod: "
             "/var/run/secrets/kubernetes.io/serviceaccount/token)",
        403: "RBAC denied creating tokenreviews: bind this service's service account to the ClusterRole "
             "system:auth-delegator (a ClusterRoleBinding)",
        404: "nothing is served there: check tokenreview_url (the API server's URL)",
        429: "the API server is rate-limiting requests",
    }
