"""The HTTP transport under every fetch: one bounded exchange, its failures and what an HTTP status means.

* `exchange`/`exchange_async` send one request with a `Session`/`AsyncSession` and read the body with ONE
  deadline for the whole exchange (2 × `timeout`), at most `limit` bytes, and no content encoding but identity.
  A request sent over a kept-alive connection that the peer had closed meanwhile (its idle timeout raced our
  request: no byte of an answer came back) is sent once more, on a new connection, under the same deadline.
* `FetchError` (with a stable `kind`) is every way such an exchange, or reading its answer, fails.
* `check_status` turns an unwanted HTTP status into its `FetchError`: one mapping from status to kind
  (`STATUS_KINDS`), with the operator's hints given by the caller (JWKS fetcher, TokenReview).
* `bearer_header`, `url_problem`, `ssl_context`: the request's credentials, URL and TLS settings.
* `SessionPool`: kept-alive clients for one owner (the TokenReview client): one blocking `Session` every thread
  shares, and one `AsyncSession` per event loop, each closed by its own loop when the loop shuts down.

Used by the JWKS fetcher (`k8s_jwt_auth._jwks_fetch`) and the TokenReview client (`k8s_jwt_auth.tokenreview`);
it knows nothing of keys or reviews.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Container, Mapping
from dataclasses import dataclass
from typing import Literal

import certifi
import httpx

from ._deadline import AsyncSession, Deadline, Session, bounded
from ._validate import url_problem
from .errors import ConfigurationError

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "STATUS_KINDS",
    "FetchError",
    "FetchErrorKind",
    "Response",
    "SessionPool",
    "bearer_header",
    "check_status",
    "exchange",
    "exchange_async",
    "ssl_context_from",
    "status_message",
    "url_problem",
]

DEFAULT_CONNECT_TIMEOUT = 2.0  # seconds; see VerifierConfig.connect_timeout

FetchErrorKind = Literal[
    "token_file", "insecure_url", "tls", "connect", "timeout", "protocol", "redirect", "unauthorized",
    "forbidden", "not_found", "not_acceptable", "http_status", "too_large", "bad_json", "bad_discovery",
    "issuer_mismatch", "no_keys",
]

STATUS_KINDS: Mapping[int, FetchErrorKind] = {  # any other status that is not accepted: "http_status"
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    406: "not_acceptable",
}


class FetchError(Exception):
    """An HTTP fetch (discovery, JWKS, TokenReview) failed. `kind` is a stable code; `message` is plain words.

    Messages never contain the bearer token.
    """

    def __init__(self, kind: FetchErrorKind, message: str, *, url: str | None = None, status: int | None = None):
        super().__init__(message)
        self.kind: FetchErrorKind = kind
        self.message = message
        self.url = url
        self.status = status



@dataclass(frozen=True, slots=True)
class Response:
    """An answer read whole: where it came from, its status, headers and (bounded) body."""

    url: str
    status: int
    headers: httpx.Headers
    body: bytes


def exchange(session: Session, method: str, url: str, *, headers: dict[str, str], limit: int, timeout: float,
             content: bytes | None = None) -> Response:
    """Send one request and read its body, with ONE deadline of 2 × `timeout` for the whole exchange (connect,
    status line, headers, body), a body of at most `limit` bytes and no content encoding but identity.

    A request that failed on a reused connection before any answer came is sent once more (see the module).

    Raises:
        FetchError: `too_large`, `timeout`, `protocol` (an encoded body) or the transport failure's kind.
    """
    with bounded(2 * timeout) as deadline:
        for attempt in _ATTEMPTS:
            body, connects = _Body(url, limit, deadline), deadline.connects
            try:
                with session.client.stream(method, url, headers=headers, content=content) as response:
                    body.start(response)
                    for chunk in response.iter_raw():  # raw: never inflated, whatever the server says
                        body.add(chunk)
                    return body.response(response)
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                if attempt < _ATTEMPTS[-1] and _stale(exc, body, deadline, connects):
                    continue
                error = _transport_error(url, exc, timeout)
            raise error  # not chained: the httpx error holds the request, whose body may be a token (TokenReview)
    raise AssertionError("unreachable")  # pragma: no cover


async def exchange_async(session: AsyncSession, method: str, url: str, *, headers: dict[str, str], limit: int,
                         timeout: float, content: bytes | None = None) -> Response:
    """Like `exchange`, without blocking the event loop.

    Raises:
        FetchError: `too_large`, `timeout`, `protocol` (an encoded body) or the transport failure's kind.
    """
    with bounded(2 * timeout) as deadline:  # a context variable: this task's own
        for attempt in _ATTEMPTS:
            body, connects = _Body(url, limit, deadline), deadline.connects
            try:
                async with session.client.stream(method, url, headers=headers, content=content) as response:
                    body.start(response)
                    async for chunk in response.aiter_raw():
                        body.add(chunk)
                    return body.response(response)
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                if attempt < _ATTEMPTS[-1] and _stale(exc, body, deadline, connects):
                    continue
                error = _transport_error(url, exc, timeout)
            raise error  # not chained, as in `exchange`
    raise AssertionError("unreachable")  # pragma: no cover


_ATTEMPTS = (1, 2)
_STALE_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def _stale(exc: Exception, body: _Body, deadline: Deadline, connects: int) -> bool:
    """Whether a request failed only because its kept-alive connection had been closed by the peer.

    That is: the peer hung up (EOF or reset, not a timeout) before sending any byte of an answer, on a
    connection this attempt did not open itself. Sending the request again is then safe: it never reached
    the application (or, at worst, a read-only request such as a TokenReview is repeated).
    """
    return isinstance(exc, _STALE_ERRORS) and not body.started and deadline.connects == connects


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
    """Collects a response body, refusing it above `limit` bytes, encoded, or past the exchange's deadline."""

    def __init__(self, url: str, limit: int, deadline: Deadline) -> None:
        self.url, self.limit, self.deadline = url, limit, deadline
        self.data = bytearray()
        self.started = False

    def start(self, response: httpx.Response) -> None:
        self.started = True
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

    def response(self, response: httpx.Response) -> Response:
        return Response(self.url, response.status_code, response.headers, bytes(self.data))

    def _too_large(self) -> FetchError:
        return FetchError("too_large", f"the answer from {self.url} is larger than {self.limit} bytes "
                                       "(max_response_size)", url=self.url)



class SessionPool:
    """Kept-alive HTTP clients for one owner: a blocking `Session` shared by every thread, an `AsyncSession` per
    event loop. Thread-safe; a `threading.Lock` guards the bookkeeping only, never I/O.

    An `httpx.AsyncClient` belongs to the loop it first ran on (its connections are that loop's transports), so
    each loop gets its own, created on the loop's first request and never handed to another loop. It is kept
    open by an async generator first iterated on that loop: when the loop shuts down (`asyncio.run`,
    `asyncio.Runner`, anyio and uvicorn call `loop.shutdown_asyncgens()`), the generator is closed and closes
    the client on the loop, before the loop closes its transports' sockets; when the generator is dropped
    (`close()`, or the owner is garbage), the loop's async-generator finalizer closes it on its own loop,
    thread-safely. A loop stopped and closed by hand without `shutdown_asyncgens()` should `await aclose()`
    first; its client is forgotten, unclosed, when another loop next asks for one.

    After `close()`/`aclose()` the pool still works: the next request opens new connections.
    """

    def __init__(self, *, verify: ssl.SSLContext, timeout: float, connect_timeout: float | None,
                 limits: httpx.Limits) -> None:
        self._new = functools.partial(Session, verify=verify, timeout=timeout, connect_timeout=connect_timeout,
                                      limits=limits)
        self._new_async = functools.partial(AsyncSession, verify=verify, timeout=timeout,
                                            connect_timeout=connect_timeout, limits=limits)
        self._lock = threading.Lock()
        self._session: Session | None = None
        self._finalizer: weakref.finalize[[], SessionPool] | None = None
        self._loops: dict[asyncio.AbstractEventLoop, _LoopSession] = {}

    def session(self) -> Session:
        """The blocking client every thread shares (created on first use)."""
        with self._lock:
            if self._session is None:
                self._session = self._new()
                # a pool dropped without close() closes its sockets (no ResourceWarning from the garbage collector)
                self._finalizer = weakref.finalize(self, self._session.close)
            return self._session

    async def async_session(self) -> AsyncSession:
        """The running event loop's own client (created on the loop's first use)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            held = self._loops.get(loop)
            if held is None:
                stale = [other for other in self._loops if other.is_closed()]
                for other in stale:  # closed without shutdown_asyncgens(): nothing can close their clients now
                    del self._loops[other]
                session = self._new_async()
                held = self._loops[loop] = _LoopSession(session, functools.partial(
                    _forget, weakref.ref(self), loop, session))
        if not held.started:
            await held.start()  # runs to the generator's `yield` without suspending: no other task sees it unstarted
        return held.session

    def loops(self) -> int:
        """How many event loops hold a client now."""
        with self._lock:
            return len(self._loops)

    def close(self) -> None:
        """Close the blocking client and let every loop close its own client (on that loop)."""
        with self._lock:
            finalizer, self._session, self._finalizer = self._finalizer, None, None
            loops, self._loops = self._loops, {}
        if finalizer is not None:
            finalizer()  # closes the session, once
        loops.clear()  # dropping the generators: each loop's finalizer closes its client on that loop

    async def aclose(self) -> None:
        """`close()`, and the running loop's client closed before this returns."""
        loop = asyncio.get_running_loop()
        with self._lock:
            mine = self._loops.pop(loop, None)
        self.close()
        if mine is not None:
            await mine.close()


class _LoopSession:
    """One loop's client and the async generator that keeps it (see `SessionPool`)."""

    __slots__ = ("keeper", "session", "started")

    def __init__(self, session: AsyncSession, forget: Callable[[], None]) -> None:
        self.session, self.started = session, False
        self.keeper = _keep(session, forget)

    async def start(self) -> None:
        self.started = True
        await self.keeper.asend(None)  # the first iteration: the running loop now tracks (and will close) it

    async def close(self) -> None:
        await self.keeper.aclose()


async def _keep(session: AsyncSession, forget: Callable[[], None]) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        forget()
        await session.aclose()


def _forget(pool_ref: weakref.ReferenceType[SessionPool], loop: asyncio.AbstractEventLoop,
            session: AsyncSession) -> None:
    pool = pool_ref()
    if pool is None:
        return
    with pool._lock:
        held = pool._loops.get(loop)
        if held is not None and held.session is session:
            del pool._loops[loop]


def check_status(response: Response, *, hints: Mapping[int, str], redirect: str, server_failed: str,
                 ok: Container[int] = (200,)) -> None:
    """Accept a status in `ok`; else raise the `FetchError` its status means (kind from `STATUS_KINDS`).

    The message is `"<url> answered HTTP <status> (<the Kubernetes Status message>): <hint>"`.

    Args:
        response: the answer.
        hints: what to tell the operator, per status (e.g. which RBAC role is missing).
        redirect: what follows `"<url> answered HTTP 3xx"` (redirects are never followed).
        server_failed: the hint for a 5xx status that has none in `hints`.
        ok: the statuses that are accepted.

    Raises:
        FetchError: `redirect`, `unauthorized`, `forbidden`, `not_found`, `not_acceptable` or `http_status`.
    """
    status, url = response.status, response.url
    if status in ok:
        return
    if 300 <= status < 400:
        raise FetchError("redirect", f"{url} answered HTTP {status}{redirect}", url=url, status=status)
    hint = hints.get(status, server_failed if status >= 500 else "")
    raise FetchError(STATUS_KINDS.get(status, "http_status"),
                     f"{url} answered HTTP {status}{status_message(response.body)}" + (f": {hint}" if hint else ""),
                     url=url, status=status)


def status_message(body: bytes) -> str:
    """The `message` of a Kubernetes `Status` error body, shortened, in parentheses (or "")."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    message = document.get("message") if isinstance(document, dict) else None
    return f" ({message.strip()[:200]})" if isinstance(message, str) and message.strip() else ""



def ssl_context_from(ca_file: str | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=ca_file if ca_file is not None else certifi.where())
    except OSError as exc:  # ssl.SSLError is an OSError
        raise ConfigurationError(f"cannot load the CA bundle {ca_file!r}: {exc}; give a PEM file with the "
                                 "cluster CA (in a pod: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt)"
                                 ) from exc



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

