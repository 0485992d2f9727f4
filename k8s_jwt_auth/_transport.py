"""The HTTP transport under every fetch: one bounded exchange, its failures and what an HTTP status means.

* `exchange`/`exchange_async` send one request with a `Session`/`AsyncSession` and read the body with ONE
  deadline for the whole exchange (2 × `timeout`), at most `limit` bytes, and no content encoding but identity.
* `FetchError` (with a stable `kind`) is every way such an exchange, or reading its answer, fails.
* `check_status` turns an unwanted HTTP status into its `FetchError`: one mapping from status to kind
  (`STATUS_KINDS`), with the operator's hints given by the caller (JWKS fetcher, TokenReview).
* `bearer_header`, `url_problem`, `ssl_context`: the request's credentials, URL and TLS settings.

Used by the JWKS fetcher (`k8s_jwt_auth._jwks_fetch`) and the TokenReview client (`k8s_jwt_auth.tokenreview`);
it knows nothing of keys or reviews.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import certifi
import httpx

from ._deadline import AsyncSession, Deadline, Session
from .config import _is_loopback
from .errors import ConfigurationError

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "STATUS_KINDS",
    "FetchError",
    "FetchErrorKind",
    "Response",
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
                         timeout: float, content: bytes | None = None) -> Response:
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

    def response(self, response: httpx.Response) -> Response:
        return Response(self.url, response.status_code, response.headers, bytes(self.data))

    def _too_large(self) -> FetchError:
        return FetchError("too_large", f"the answer from {self.url} is larger than {self.limit} bytes "
                                       "(max_response_size)", url=self.url)



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



def url_problem(url: str, allow_insecure_http: bool) -> str | None:
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

