"""Fetching an issuer's key set once: OIDC discovery, then the JWKS, parsed into a `KeySet`. No cache.

`JwksFetcher` does `GET {issuer}/.well-known/openid-configuration` (unless a `jwks_uri` is configured),
checks its `issuer`, then `GET jwks_uri`. The flow is written once as a generator of requests
(`k8s_jwt_auth._flow`), driven by `fetch` (`httpx.Client`) and `fetch_async` (`httpx.AsyncClient`), each
with a client per fetch. Every failure is a `FetchError` whose `kind` says what went wrong. The cache over
it lives in `k8s_jwt_auth._remote`; sharing fetched documents between processes in
`k8s_jwt_auth._shared_fetch`.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from dataclasses import dataclass
from typing import Protocol

import httpx

from ._deadline import AsyncSession, Session
from ._flow import Flow, arun, run
from ._keyset import DEFAULT_MAX_KEYS, KeySet
from ._transport import (
    DEFAULT_CONNECT_TIMEOUT,
    FetchError,
    Response,
    bearer_header,
    check_status,
    exchange,
    exchange_async,
    ssl_context_from,
    url_problem,
)
from ._validate import seconds, whole_number
from .errors import ConfigurationError

__all__ = [
    "ACCEPT_DISCOVERY",
    "ACCEPT_JWKS",
    "DISCOVERY_PATH",
    "FetchResult",
    "Fetcher",
    "JwksFetcher",
    "fetch_within",
]

ACCEPT_DISCOVERY = "application/json"
ACCEPT_JWKS = "application/jwk-set+json, application/json"  # kube-apiserver answers 406 to application/json alone
DISCOVERY_PATH = "/.well-known/openid-configuration"

_RBAC = ("the service account needs the system:service-account-issuer-discovery ClusterRole "
         "(a ClusterRoleBinding to it) and its token must be sent (token_file)")
_STATUS_HINTS: dict[int, str] = {
    401: f"the API server did not accept the request's credentials: {_RBAC}",
    403: f"RBAC denied the request: {_RBAC}",
    404: "nothing is served there: check the issuer URL (or jwks_uri)",
    406: "the server does not serve the media types asked for",
}


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


class Fetcher(Protocol):
    """What `RemoteKeySource` fetches with: a `JwksFetcher`, or a `SharedJwksFetcher` around one."""

    issuer: str
    timeout: float
    max_duration: float  # the longest a whole fetch may take, in seconds

    def fetch(self) -> FetchResult: ...

    async def fetch_async(self) -> FetchResult: ...


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
        problem = url_problem(url, allow_insecure_http)
        if problem is not None:
            raise ConfigurationError(f"{name} {problem}")
        self.discovery_url = (issuer[:-1] if issuer.endswith("/") else issuer) + DISCOVERY_PATH
        self.token_file = token_file
        self.timeout = float(timeout)
        self.max_response_size = max_response_size
        self.ssl_context = ssl_context if ssl_context is not None else ssl_context_from(ca_file)
        self.max_duration = 3 * self.timeout * (1 if jwks_uri is not None else 2)

    def __repr__(self) -> str:
        return f"JwksFetcher(issuer={self.issuer!r}, jwks_uri={self.jwks_uri!r})"

    def fetch(self) -> FetchResult:
        """Fetch with a blocking `httpx.Client` (never call this on an event loop).

        Raises:
            FetchError: whatever went wrong, with its `kind`.
        """
        with Session(verify=self.ssl_context, timeout=self.timeout, connect_timeout=self.connect_timeout) as session:
            return run(self._flow(), lambda request: self._get(session, request))

    async def fetch_async(self) -> FetchResult:
        """Fetch with an `httpx.AsyncClient` created for this fetch.

        Raises:
            FetchError: whatever went wrong, with its `kind`.
        """
        async with AsyncSession(verify=self.ssl_context, timeout=self.timeout,
                                connect_timeout=self.connect_timeout) as session:
            return await arun(self._flow(), lambda request: self._get_async(session, request))

    # -- the flow, written once ------------------------------------------------------------------

    def _flow(self) -> Flow[_Request, FetchResult]:
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

    def _read_discovery(self, response: Response) -> str:
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
        problem = url_problem(jwks_uri, self.allow_insecure_http)
        if problem is not None:
            raise FetchError("insecure_url", f"the jwks_uri from discovery {problem}", url=jwks_uri)
        return jwks_uri

    # -- the drivers -----------------------------------------------------------------------------

    def _get(self, session: Session, request: _Request) -> Response:
        return exchange(session, "GET", request.url, headers=_headers(request), limit=self.max_response_size,
                        timeout=self.timeout)

    async def _get_async(self, session: AsyncSession, request: _Request) -> Response:
        return await exchange_async(session, "GET", request.url, headers=_headers(request),
                                    limit=self.max_response_size, timeout=self.timeout)


def _headers(request: _Request) -> dict[str, str]:
    return {"Accept": request.accept, "Accept-Encoding": "identity", **dict(request.headers)}


def _check_status(response: Response, accept: str) -> None:
    location = response.headers.get("location", "")
    check_status(response, hints={**_STATUS_HINTS, 406: f"{_STATUS_HINTS[406]} ({accept})"},
                 redirect=f" (redirect to {location!r}); redirects are not followed: configure the final URL",
                 server_failed="the server failed")


def _json(response: Response, what: str) -> object:
    try:
        return json.loads(response.body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise FetchError("bad_json", f"the {what} at {response.url} is not JSON "
                                     f"(content-type {response.headers.get('content-type', 'none')!r})",
                         url=response.url) from exc


def _read_jwks(response: Response, max_keys: int) -> KeySet:
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


async def fetch_within(fetcher: Fetcher) -> FetchResult:
    """`fetcher.fetch_async()`, cut off after its `max_duration`.

    Raises:
        FetchError: `timeout` when it takes longer, or what the fetch raised.
    """
    try:
        return await asyncio.wait_for(fetcher.fetch_async(), fetcher.max_duration)
    except asyncio.TimeoutError:
        raise FetchError("timeout", f"fetching the keys took more than {fetcher.max_duration:g} s") from None

