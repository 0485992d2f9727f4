"""`RemoteKeySource`: the issuer's keys over HTTPS (OIDC discovery + JWKS), cached and rotated.

Two layers:

* `JwksFetcher` fetches once, with no state: `GET {issuer}/.well-known/openid-configuration` (unless a
  `jwks_uri` is configured), check its `issuer`, then `GET jwks_uri`. The flow is written once as a
  generator of requests, driven by a sync (`httpx.Client`) and an async (`httpx.AsyncClient`) driver,
  each with a client per fetch. Every failure is a `FetchError` whose `kind` says what went wrong.
* `RemoteKeySource` keeps the last good `KeySet` in one cache shared by threads and event loops: a
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

import asyncio
import json
import logging
import math
import re
import ssl
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeGuard, TypeVar
from urllib.parse import urlsplit

import certifi
import httpx

from ._deadline import AsyncSession, Deadline, Session
from ._validate import seconds, whole_number
from .config import _is_loopback
from .errors import AuthError, ConfigurationError, InvalidToken, KeySetUnavailable
from .keys import DEFAULT_MAX_KEYS, KeySet, VerificationKey

DEFAULT_CONNECT_TIMEOUT = 2.0  # seconds; see VerifierConfig.connect_timeout

if TYPE_CHECKING:
    from ._observer import Observer
    from ._shared import SharedStore
    from .config import VerifierConfig

__all__ = [
    "ACCEPT_DISCOVERY",
    "ACCEPT_JWKS",
    "FetchError",
    "FetchErrorKind",
    "FetchResult",
    "JwksFetcher",
    "KeySourceStatus",
    "RemoteKeySource",
    "SharedJwksFetcher",
    "bearer_header",
    "exchange",
    "exchange_async",
]

logger = logging.getLogger("k8s_jwt_auth.keys")
_T = TypeVar("_T")
_R = TypeVar("_R")

ACCEPT_DISCOVERY = "application/json"
ACCEPT_JWKS = "application/jwk-set+json, application/json"  # kube-apiserver answers 406 to application/json alone
DISCOVERY_PATH = "/.well-known/openid-configuration"
MIN_MAX_AGE = 60.0  # a Cache-Control max-age below this (or no-cache) is raised to it
REFRESH_AHEAD = 0.8  # refresh in the background once keys are this far into their max age
MAX_UNKNOWN_KIDS = 1024  # bound of the negative cache
SHARED_POLL_FIRST = 0.02  # seconds between reads of a shared key set another process is fetching (doubling)
SHARED_POLL_MAX = 0.2
DEFAULT_SHARED_KEYS_MAX_AGE = 60.0  # seconds; see VerifierConfig.shared_keys_max_age

FetchErrorKind = Literal[
    "token_file", "insecure_url", "tls", "connect", "timeout", "protocol", "redirect", "unauthorized",
    "forbidden", "not_found", "not_acceptable", "http_status", "too_large", "bad_json", "bad_discovery",
    "issuer_mismatch", "no_keys",
]

_RBAC = ("the service account needs the system:service-account-issuer-discovery ClusterRole "
         "(a ClusterRoleBinding to it) and its token must be sent (token_file)")
_STATUS_HINTS: dict[int, tuple[FetchErrorKind, str]] = {
    401: ("unauthorized", f"the API server did not accept the request's credentials: {_RBAC}"),
    403: ("forbidden", f"RBAC denied the request: {_RBAC}"),
    404: ("not_found", "nothing is served there: check the issuer URL (or jwks_uri)"),
    406: ("not_acceptable", "the server does not serve the media types asked for"),
}


class FetchError(Exception):
    """A discovery or JWKS fetch failed. `kind` is a stable code; `message` is plain words.

    Messages never contain the bearer token.
    """

    def __init__(self, kind: FetchErrorKind, message: str, *, url: str | None = None, status: int | None = None):
        super().__init__(message)
        self.kind: FetchErrorKind = kind
        self.message = message
        self.url = url
        self.status = status


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What one successful fetch returned."""

    issuer: str
    jwks_uri: str
    discovered: bool  # whether jwks_uri came from the discovery document
    keys: KeySet
    max_age: float | None  # the JWKS response's Cache-Control max-age (0 for no-cache/no-store)
    document: bytes | None = None  # the JWKS response body, as served
    age: float = 0.0  # seconds the document had already been cached (in a shared store) when handed out
    shared: bool = False  # taken from a shared store (another process's fetch), not fetched from the issuer


@dataclass(frozen=True, slots=True)
class _Request:
    url: str
    accept: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class _Response:
    url: str
    status: int
    headers: httpx.Headers
    body: bytes


# -- fetching ---------------------------------------------------------------------------------------


class JwksFetcher:
    """Fetches an issuer's key set once: discovery (unless `jwks_uri` is given), then the JWKS. No cache.

    Args:
        issuer: the configured issuer; the discovery document must name exactly this issuer.
        jwks_uri: fetch keys here and skip discovery.
        ca_file: PEM CA bundle to verify HTTPS servers with (default: certifi's bundle).
        ssl_context: a ready `ssl.SSLContext` (wins over `ca_file`).
        token_file: file holding a bearer token, re-read on every fetch (kubelet rotates it).
        timeout: seconds for each socket operation; a whole exchange (connect, status line, headers,
            body) is cut off after 2 × timeout even if the server trickles bytes.
        connect_timeout: seconds for connecting (at most `timeout`), so an unreachable host fails fast.
        allow_insecure_http: allow plain http to hosts other than loopback.
        max_response_size: bodies larger than this many bytes are refused.
        max_keys: a JWKS with more keys than this is refused whole (Kubernetes publishes a handful).

    Raises:
        ConfigurationError: for a URL that is not https (or loopback http), a bad timeout or CA file.
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
        allow_insecure_http: bool = False,
        max_response_size: int = 1024 * 1024,
        max_keys: int = DEFAULT_MAX_KEYS,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        timeout = seconds(timeout, "timeout", positive=True, setting="TIMEOUT")
        self.connect_timeout = seconds(connect_timeout, "connect_timeout", positive=True, setting="CONNECT_TIMEOUT")
        self.max_keys = whole_number(max_keys, "max_keys", minimum=1, setting="MAX_KEYS")
        max_response_size = whole_number(max_response_size, "max_response_size", minimum=1024)
        self.issuer = issuer
        self.jwks_uri = jwks_uri
        self.allow_insecure_http = allow_insecure_http
        name, url = ("jwks_uri", jwks_uri) if jwks_uri is not None else ("issuer", issuer)
        problem = _url_problem(url, allow_insecure_http)
        if problem is not None:
            raise ConfigurationError(f"{name} {problem}")
        self.discovery_url = (issuer[:-1] if issuer.endswith("/") else issuer) + DISCOVERY_PATH
        self.token_file = token_file
        self.timeout = float(timeout)
        self.max_response_size = max_response_size
        self.ssl_context = ssl_context if ssl_context is not None else _ssl_context(ca_file)
        self.max_duration = 3 * self.timeout * (1 if jwks_uri is not None else 2)

    def __repr__(self) -> str:
        return f"JwksFetcher(issuer={self.issuer!r}, jwks_uri={self.jwks_uri!r})"

    def fetch(self) -> FetchResult:
        """Fetch with a blocking `httpx.Client` (never call this on an event loop).

        Raises:
            FetchError: whatever went wrong, with its `kind`.
        """
        flow = self._flow()
        request = next(flow)
        with Session(verify=self.ssl_context, timeout=self.timeout, connect_timeout=self.connect_timeout) as session:
            while True:
                response = self._get(session, request)
                try:
                    request = flow.send(response)
                except StopIteration as done:
                    result: FetchResult = done.value
                    return result

    async def fetch_async(self) -> FetchResult:
        """Fetch with an `httpx.AsyncClient` created for this fetch.

        Raises:
            FetchError: whatever went wrong, with its `kind`.
        """
        flow = self._flow()
        request = next(flow)
        async with AsyncSession(verify=self.ssl_context, timeout=self.timeout,
                                connect_timeout=self.connect_timeout) as session:
            while True:
                response = await self._get_async(session, request)
                done, step = await _advance_async(flow, response, len(response.body))
                if done:
                    assert isinstance(step, FetchResult)  # noqa: S101 - what the flow returns
                    return step
                request = step

    # -- the flow, written once ------------------------------------------------------------------

    def _flow(self) -> Generator[_Request, _Response, FetchResult]:
        auth = self._auth_headers()
        jwks_uri = self.jwks_uri
        if jwks_uri is None:
            discovery = yield _Request(self.discovery_url, ACCEPT_DISCOVERY, auth)
            jwks_uri = self._read_discovery(discovery)
        response = yield _Request(jwks_uri, ACCEPT_JWKS, auth)
        keys = _read_jwks(response, self.max_keys)
        return FetchResult(self.issuer, jwks_uri, self.jwks_uri is None, keys, _cache_max_age(response.headers),
                           document=response.body)

    def _auth_headers(self) -> tuple[tuple[str, str], ...]:
        if self.token_file is None:
            return ()
        return (bearer_header(self.token_file, "the bearer token file"),)

    def _read_discovery(self, response: _Response) -> str:
        _check_status(response, ACCEPT_DISCOVERY)
        document = _json(response, "discovery document")
        if not isinstance(document, dict):
            raise FetchError("bad_discovery", f"the discovery document at {response.url} is not a JSON object",
                             url=response.url)
        issuer = document.get("issuer")
        if issuer != self.issuer:
            raise FetchError("issuer_mismatch", f"issuer mismatch: the discovery document at {response.url} says "
                             f"issuer {issuer!r}, but the configured issuer is {self.issuer!r} (they must be "
                             "equal, character for character)", url=response.url)
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise FetchError("bad_discovery", f"the discovery document at {response.url} has no jwks_uri",
                             url=response.url)
        problem = _url_problem(jwks_uri, self.allow_insecure_http)
        if problem is not None:
            raise FetchError("insecure_url", f"the jwks_uri from discovery {problem}", url=jwks_uri)
        return jwks_uri

    # -- the drivers -----------------------------------------------------------------------------

    def _get(self, session: Session, request: _Request) -> _Response:
        return exchange(session, "GET", request.url, headers=_headers(request), limit=self.max_response_size,
                        timeout=self.timeout)

    async def _get_async(self, session: AsyncSession, request: _Request) -> _Response:
        return await exchange_async(session, "GET", request.url, headers=_headers(request),
                                    limit=self.max_response_size, timeout=self.timeout)


_LARGE_DOCUMENT = 64 * 1024  # bytes; a Kubernetes JWKS is about 1 KiB


async def _advance_async(flow: Generator[_T, Any, _R], answer: object, size: int) -> tuple[bool, Any]:
    """Send `answer` into a flow: `(False, next request)` or `(True, its result)`.

    The flow parses what it is sent (JSON, keys). An answer larger than `_LARGE_DOCUMENT` is parsed in a
    worker thread, so that a hostile issuer's megabyte document never holds the event loop.
    """
    if size > _LARGE_DOCUMENT:
        return await asyncio.to_thread(_advance, flow, answer)
    return _advance(flow, answer)


def _advance(flow: Generator[_T, Any, _R], answer: object) -> tuple[bool, Any]:
    try:
        return False, flow.send(answer)
    except StopIteration as done:  # returned as a value: StopIteration cannot cross a Future
        return True, done.value


def exchange(session: Session, method: str, url: str, *, headers: dict[str, str], limit: int, timeout: float,
             content: bytes | None = None) -> _Response:
    """Send one request and read its body, with ONE deadline of 2 × `timeout` for the whole exchange (connect,
    status line, headers, body), a body of at most `limit` bytes and no content encoding but identity.

    Raises:
        FetchError: `too_large`, `timeout`, `protocol` (an encoded body) or the transport failure's kind.
    """
    body = _Body(url, limit, session.deadline, 2 * timeout)
    try:
        with session.client.stream(method, url, headers=headers, content=content) as response:
            body.start(response)
            for chunk in response.iter_raw():  # raw: never inflated, whatever the server says
                body.add(chunk)
            return body.response(response)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        error = _transport_error(url, exc, timeout)
    raise error  # not chained: the httpx error holds the request, whose body may be a token (TokenReview)


async def exchange_async(session: AsyncSession, method: str, url: str, *, headers: dict[str, str], limit: int,
                         timeout: float, content: bytes | None = None) -> _Response:
    """Like `exchange`, without blocking the event loop.

    Raises:
        FetchError: `too_large`, `timeout`, `protocol` (an encoded body) or the transport failure's kind.
    """
    body = _Body(url, limit, session.deadline, 2 * timeout)
    try:
        async with session.client.stream(method, url, headers=headers, content=content) as response:
            body.start(response)
            async for chunk in response.aiter_raw():
                body.add(chunk)
            return body.response(response)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        error = _transport_error(url, exc, timeout)
    raise error  # not chained, as in `exchange`


def bearer_header(token_file: str, what: str) -> tuple[str, str]:
    """`("Authorization", "Bearer <token>")` from a token file, read now (the kubelet rotates it).

    Raises:
        FetchError: `token_file` when the file cannot be read or does not hold a token (never shown).
    """
    try:
        with open(token_file, encoding="ascii") as fh:
            token = fh.read().strip()
    except (OSError, UnicodeError) as exc:
        raise FetchError("token_file", f"cannot read {what} {token_file!r} ({type(exc).__name__})") from None
    if not token or not token.isprintable() or " " in token:
        raise FetchError("token_file", f"{what} {token_file!r} is empty or not a token")
    return ("Authorization", f"Bearer {token}")


class _Body:
    """Collects a response body, refusing it above `limit` bytes, encoded, or past the exchange's deadline.

    Creating it starts the deadline (`seconds` from now) that every socket operation of the exchange obeys.
    """

    def __init__(self, url: str, limit: int, deadline: Deadline, seconds: float) -> None:
        self.url, self.limit, self.deadline = url, limit, deadline
        self.data = bytearray()
        deadline.start(seconds)

    def start(self, response: httpx.Response) -> None:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            # We ask for identity; a compressed answer could inflate far past `limit` (a 605-byte gzip bomb
            # grew a process by 500 MiB), so it is refused unread rather than decoded.
            raise FetchError("protocol", f"{self.url} answered with Content-Encoding {encoding[:40]!r} although "
                                         "only identity was accepted", url=self.url)
        length = response.headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) > self.limit:
            raise self._too_large()

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            raise self._too_large()
        if time.monotonic() > self.deadline.at:
            raise FetchError("timeout", f"{self.url} is sending its answer too slowly", url=self.url)

    def response(self, response: httpx.Response) -> _Response:
        return _Response(self.url, response.status_code, response.headers, bytes(self.data))

    def _too_large(self) -> FetchError:
        return FetchError("too_large", f"the answer from {self.url} is larger than {self.limit} bytes "
                                       "(max_response_size)", url=self.url)


def _headers(request: _Request) -> dict[str, str]:
    return {"Accept": request.accept, "Accept-Encoding": "identity", **dict(request.headers)}


def _url_problem(url: str, allow_insecure_http: bool) -> str | None:
    """Why `url` may not be fetched, or `None`: https, or http to a loopback host (or when allowed)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return f"{url!r} is not a valid URL"
    if parts.scheme == "https" and host:
        return None
    if parts.scheme == "http" and host and (allow_insecure_http or _is_loopback(host)):
        return None
    return (f"{url!r} must be an https:// URL (plain http only for loopback addresses, or with "
            "allow_insecure_http=True)")


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=ca_file if ca_file is not None else certifi.where())
    except OSError as exc:  # ssl.SSLError is an OSError
        raise ConfigurationError(f"cannot load the CA bundle {ca_file!r}: {exc}; give a PEM file with the "
                                 "cluster CA (in a pod: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt)"
                                 ) from exc


def _check_status(response: _Response, accept: str) -> None:
    status, url = response.status, response.url
    if status == 200:
        return
    if 300 <= status < 400:
        location = response.headers.get("location", "")
        raise FetchError("redirect", f"{url} answered HTTP {status} (redirect to {location!r}); redirects are "
                                     "not followed: configure the final URL", url=url, status=status)
    kind, hint = _STATUS_HINTS.get(status, ("http_status", "the server failed" if status >= 500 else ""))
    if status == 406:
        hint = f"{hint} ({accept})"
    detail = _status_message(response.body)
    raise FetchError(kind, f"{url} answered HTTP {status}{detail}" + (f": {hint}" if hint else ""),
                     url=url, status=status)


def _status_message(body: bytes) -> str:
    """The `message` of a Kubernetes `Status` error body, shortened, in parentheses (or "")."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    message = document.get("message") if isinstance(document, dict) else None
    return f" ({message.strip()[:200]})" if isinstance(message, str) and message.strip() else ""


def _json(response: _Response, what: str) -> object:
    try:
        return json.loads(response.body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise FetchError("bad_json", f"the {what} at {response.url} is not JSON "
                                     f"(content-type {response.headers.get('content-type', 'none')!r})",
                         url=response.url) from exc


def _read_jwks(response: _Response, max_keys: int) -> KeySet:
    _check_status(response, ACCEPT_JWKS)
    try:
        keys = KeySet.from_jwks(_json(response, "JWKS"), max_keys=max_keys)
    except ValueError as exc:
        raise FetchError("bad_json", f"the answer from {response.url} is not a JWKS: {exc}", url=response.url) from exc
    if not len(keys):
        raise FetchError("no_keys", f"the JWKS at {response.url} has no usable key ({keys.skipped} skipped; "
                                    "usable: RSA >= 2048 bits, EC P-256/384/521)", url=response.url)
    return keys


_MAX_AGE = re.compile(r"(?:^|[\s,])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)


def _cache_max_age(headers: httpx.Headers) -> float | None:
    value = headers.get("cache-control", "")
    if re.search(r"no-cache|no-store", value, re.IGNORECASE):
        return 0.0
    match = _MAX_AGE.search(value)
    return float(match.group(1)) if match else None


def _transport_error(url: str, exc: Exception, timeout: float) -> FetchError:
    if isinstance(exc, httpx.TimeoutException):
        return FetchError("timeout", f"no answer from {url} within the {timeout:g} s timeout "
                                     f"({type(exc).__name__})", url=url)
    tls = _ssl_cause(exc)
    if tls is not None:
        reason = getattr(tls, "verify_message", None) or getattr(tls, "reason", None) or str(tls)
        return FetchError("tls", f"TLS with {url} failed ({reason}): the server's certificate is not trusted; "
                                 "give the CA that signed it as ca_file", url=url)
    if isinstance(exc, httpx.ConnectError):
        return FetchError("connect", f"cannot connect to {url} ({exc})", url=url)
    if isinstance(exc, httpx.RemoteProtocolError):
        return FetchError("protocol", f"{url} closed the connection without a valid HTTP answer ({exc})", url=url)
    return FetchError("connect", f"the request to {url} failed ({type(exc).__name__}: {exc})", url=url)


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The `ssl.SSLError` behind an httpx error, if any (it is wrapped once or twice)."""
    seen: list[BaseException] = [exc]
    for current in seen:
        if isinstance(current, ssl.SSLError):
            return current
        more = [current.__cause__, current.__context__, *current.args]
        seen.extend(e for e in more if isinstance(e, BaseException) and e not in seen and len(seen) < 16)
    return None


# -- sharing fetched documents across processes ------------------------------------------------------


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
        flow = self._flow()
        op = next(flow)
        while True:
            try:
                op = flow.send(self._step(op))
            except StopIteration as done:
                return _outcome(done.value)

    async def fetch_async(self) -> FetchResult:
        """Like `fetch`, without blocking the event loop.

        Raises:
            FetchError: when this process fetched and the fetch failed.
        """
        flow = self._flow()
        op = next(flow)
        while True:
            answer = await self._step_async(op)
            done, step = await _advance_async(flow, answer, len(answer) if isinstance(answer, bytes) else 0)
            if done:
                return _outcome(step)
            op = step

    # -- the flow, written once ------------------------------------------------------------------

    def _flow(self) -> Generator[_Op, object, FetchResult | FetchError]:
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

    def _fetch_and_publish(self) -> Generator[_Op, object, FetchResult | FetchError]:
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

    def _publish(self, entry: bytes, max_age: float) -> Generator[_Op, object, None]:
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
            return await _fetch_within(self.fetcher)
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


async def _fetch_within(fetcher: JwksFetcher | SharedJwksFetcher) -> FetchResult:
    """`fetcher.fetch_async()`, cut off after its `max_duration`.

    Raises:
        FetchError: `timeout` when it takes longer, or what the fetch raised.
    """
    try:
        return await asyncio.wait_for(fetcher.fetch_async(), fetcher.max_duration)
    except asyncio.TimeoutError:
        raise FetchError("timeout", f"fetching the keys took more than {fetcher.max_duration:g} s") from None


# -- caching ----------------------------------------------------------------------------------------


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
        observer: told the outcome of every fetch (`on_fetch`); a `TokenVerifier` given an observer sets it
            when it is `None`.
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
        self._via: JwksFetcher | SharedJwksFetcher = self.fetcher if shared is None else SharedJwksFetcher(
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
                await _wait_async(plan.wait, self._wait_limit)
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
        try:
            self._succeeded(seq, self._via.fetch())
        except FetchError as exc:
            return self._failed(seq, exc)
        finally:
            self._settle(future)
        return None

    async def _run_async(self, seq: int, future: Future[None] | None) -> FetchError | None:
        try:
            self._succeeded(seq, await self._fetch_async())
        except FetchError as exc:
            return self._failed(seq, exc)
        finally:  # also when the caller is cancelled: waiters must not wait for a fetch nobody runs
            self._settle(future)
        return None

    async def _fetch_async(self) -> FetchResult:
        return await _fetch_within(self._via)

    def _settle(self, future: Future[None] | None) -> None:
        with self._lock:
            if self._inflight is future:
                self._inflight = None
        if future is not None and not future.done():
            future.set_result(None)

    def _succeeded(self, seq: int, result: FetchResult) -> None:
        if self.observer is not None:
            self.observer.on_fetch("success")
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
        if self.observer is not None:
            self.observer.on_fetch(error.kind)
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


async def _wait_async(future: Future[None], timeout: float) -> None:
    """Wait for a fetch run by another thread or task without blocking the loop (and never cancel it)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def wake(_: object) -> None:
        try:
            loop.call_soon_threadsafe(_resolve, done)
        except RuntimeError:  # the loop closed while this waiter was pending
            pass

    future.add_done_callback(wake)
    try:
        await asyncio.wait_for(done, timeout)
    except asyncio.TimeoutError:
        pass


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
