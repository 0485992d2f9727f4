"""`FakeIssuer`: a Kubernetes service-account issuer on 127.0.0.1 for tests and demos.

It serves `/.well-known/openid-configuration` and `/openid/v1/jwks` over real HTTP from a background
thread, with kube-apiserver's content negotiation (the JWKS is `application/jwk-set+json`; a request
that accepts only `application/json` gets 406), mints tokens shaped like real ones, rotates keys, counts
fetches and can be told to fail.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from ._keys import SigningKey, build_claims, sign
from ._tls import TestCertificates

__all__ = ["FailureMode", "FakeIssuer"]

FailureMode = Literal["down", "slow", "error", "garbage", "empty", "oversized", "issuer_mismatch",
                      "unauthorized", "forbidden"]
_FAILURE_MODES = frozenset(FailureMode.__args__)  # type: ignore[attr-defined]
DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/openid/v1/jwks"


class FakeIssuer:
    """A fake cluster issuer serving discovery and JWKS on `http://127.0.0.1:<port>`.

    Args:
        issuer: the `iss` of minted tokens and of the discovery document; defaults to `self.url`, so
            that discovery from the issuer URL works. Give another value (e.g. the in-cluster
            `https://kubernetes.default.svc.cluster.local`) to test `jwks_uri` overrides or mismatches.
        algorithm: the algorithm of the first key.
        require_token: when set, discovery and JWKS require `Authorization: Bearer <require_token>`
            (401 without a token, 403 with another), as kube-apiserver does without anonymous discovery.
        max_age: the `Cache-Control: max-age` the server sends (kube-apiserver sends 3600).
        clock: the time used by `mint` when no `now` is given.
        tls: serve `https://127.0.0.1:<port>` with a certificate from a throwaway CA whose PEM is
            `ca_pem` (write it to a file and give it as `ca_file`); clients without it fail verification.

    Use as a context manager, or call `start()`/`stop()`. State (keys, failures, counters) is reset by
    `reset()`; the pytest fixture `k8s_issuer` does that before each test.
    """

    def __init__(
        self,
        *,
        issuer: str | None = None,
        algorithm: str = "RS256",
        require_token: str | None = None,
        max_age: int = 3600,
        clock: Any = None,
        tls: bool = False,
    ) -> None:
        self._issuer = issuer
        self._tls = TestCertificates.generate() if tls else None
        self.ca_pem: str | None = self._tls.ca_pem if self._tls is not None else None
        self._initial_key = SigningKey.generate(algorithm)
        self._initial_settings = (require_token, max_age)
        self.clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> FakeIssuer:
        """Start serving on a free port of 127.0.0.1. Returns self."""
        if self._server is None:
            server_class = _QuietServer if self._tls is not None else ThreadingHTTPServer
            self._server = server_class(("127.0.0.1", 0), _handler_for(self))
            self._server.daemon_threads = True
            if self._tls is not None:  # the handshake happens in the handler thread, on first read
                self._server.socket = self._tls.server_context().wrap_socket(
                    self._server.socket, server_side=True, do_handshake_on_connect=False)
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="k8s-fake-issuer", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; connections are then refused."""
        self._wake.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> FakeIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL, `http://127.0.0.1:<port>` (`https://` with `tls=True`)."""
        if self._server is None:
            raise RuntimeError("the fake issuer is not started; call start() or use it as a context manager")
        host, port = self._server.server_address[:2]
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{host!s}:{port}"

    @property
    def issuer(self) -> str:
        """The issuer (`iss`) of this fake cluster."""
        return self._issuer if self._issuer is not None else self.url

    @property
    def jwks_uri(self) -> str:
        """The JWKS URL the discovery document advertises."""
        return f"{self.url}{JWKS_PATH}"

    # -- state ------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the state at construction: the initial key only, no failure, zero counters, the
        constructor's `require_token` and `max_age`; requests held by the `slow` mode are released.

        The initial key is kept (generating RSA keys is slow), so tokens minted before a reset still
        verify; call `rotate()` for a new key.
        """
        with self._lock:
            self.keys: list[SigningKey] = [self._initial_key]
            self.require_token, self.max_age = self._initial_settings
            self.failure: str | None = None
            self.failure_endpoint = "all"
            self.delay = 0.0
            self.discovery_fetches = 0
            self.jwks_fetches = 0
            self.requests: list[dict[str, str]] = []
            wake, self._wake = getattr(self, "_wake", None), threading.Event()
        if wake is not None:
            wake.set()

    @property
    def key(self) -> SigningKey:
        """The current signing key (the newest)."""
        return self.keys[-1]

    def add_key(self, alg: str = "RS256") -> SigningKey:
        """Add a key to the JWKS and make it the signing key (old keys keep verifying)."""
        new = SigningKey.generate(alg)
        with self._lock:
            self.keys.append(new)
        return new

    def rotate(self, alg: str | None = None, *, drop_old: bool = True) -> SigningKey:
        """Sign with a new key from now on; with `drop_old`, remove every older key from the JWKS."""
        new = self.add_key(alg or self.key.alg)
        if drop_old:
            with self._lock:
                self.keys = [new]
        return new

    def remove_key(self, kid: str) -> None:
        """Remove a key from the JWKS (tokens it signed stop verifying after the next refresh)."""
        with self._lock:
            self.keys = [k for k in self.keys if k.kid != kid]

    def jwks(self) -> dict[str, Any]:
        """The JWKS document currently served."""
        with self._lock:
            return {"keys": [k.public_jwk() for k in self.keys]}

    def discovery(self) -> dict[str, Any]:
        """The discovery document currently served (the shape kube-apiserver serves)."""
        return {"issuer": self.issuer, "jwks_uri": self.jwks_uri, "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": sorted({k.alg for k in self.keys})}

    def fail(self, mode: FailureMode | None, *, endpoint: Literal["all", "discovery", "jwks"] = "all",
             delay: float = 5.0) -> None:
        """Make the server fail until `fail(None)` or `reset()`.

        Modes: `down` (drop the connection without answering), `slow` (wait `delay` seconds, at most
        30, then answer normally), `error` (HTTP 500), `garbage` (200 with non-JSON), `empty` (a JWKS
        with no keys), `oversized` (a 5 MiB body), `issuer_mismatch` (discovery names another issuer),
        `unauthorized` (401), `forbidden` (403).
        """
        if mode is not None and mode not in _FAILURE_MODES:
            raise ValueError(f"unknown failure mode {mode!r}; one of {sorted(_FAILURE_MODES)}")
        with self._lock:
            self.failure, self.failure_endpoint, self.delay = mode, endpoint, min(float(delay), 30.0)
        if mode is None:
            self._wake.set()
            self._wake = threading.Event()

    # -- minting ----------------------------------------------------------------------------------

    def mint(
        self,
        namespace: str = "default",
        service_account: str = "default",
        *,
        audiences: str | Sequence[str] = ("test",),
        lifetime: float = 3600,
        now: float | None = None,
        pod: str | tuple[str, str] | None = None,
        node: str | tuple[str, str] | None = None,
        warn_after: float | None = None,
        key: SigningKey | None = None,
        claims: Mapping[str, Any] | None = None,
        drop: Sequence[str] = (),
        header: Mapping[str, Any] | None = None,
    ) -> str:
        """Mint a token signed by the current key (or `key`), shaped like a TokenRequest token.

        `claims` overrides or adds claims, `drop` removes some, `header` replaces the header.
        """
        if now is None and self.clock is not None:
            now = float(self.clock())
        payload = build_claims(
            issuer=self.issuer, namespace=namespace, service_account=service_account,
            audiences=(audiences,) if isinstance(audiences, str) else audiences, lifetime=lifetime, now=now,
            pod=pod, node=node, warn_after=warn_after, extra=claims, drop=drop,
        )
        return sign(key or self.key, payload, header)

    # -- serving (called from the server's threads) -----------------------------------------------

    def _respond(self, path: str, headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes] | None:
        with self._lock:
            self.requests.append({"path": path, **{k.lower(): v for k, v in headers.items()}})
            endpoint = {DISCOVERY_PATH: "discovery", JWKS_PATH: "jwks"}.get(path)
            if endpoint == "discovery":
                self.discovery_fetches += 1
            elif endpoint == "jwks":
                self.jwks_fetches += 1
            failure = self.failure if self.failure_endpoint in ("all", endpoint) else None
            delay, wake = self.delay, self._wake
        if endpoint is None:
            return 404, {"Content-Type": "application/json"}, b'{"kind":"Status","code":404}'
        if failure == "slow":
            wake.wait(delay)
        elif failure == "down":
            return None
        return self._answer(endpoint, failure, headers)

    def _answer(self, endpoint: str, failure: str | None, headers: Mapping[str, str]
                ) -> tuple[int, dict[str, str], bytes]:
        status_json = {"Content-Type": "application/json"}
        auth = headers.get("Authorization")
        if failure == "unauthorized" or (self.require_token and auth is None):
            return 401, status_json, b'{"kind":"Status","reason":"Unauthorized","code":401}'
        if failure == "forbidden" or (self.require_token and auth != f"Bearer {self.require_token}"):
            return 403, status_json, b'{"kind":"Status","reason":"Forbidden","code":403}'
        if failure == "error":
            return 500, status_json, b'{"kind":"Status","reason":"InternalError","code":500}'
        content_type = "application/jwk-set+json" if endpoint == "jwks" else "application/json"
        accept = headers.get("Accept", "*/*")
        if not any(t in accept for t in (content_type, "*/*", "application/*")):
            return 406, status_json, b'{"kind":"Status","reason":"NotAcceptable","code":406}'
        ok = {"Content-Type": content_type, "Cache-Control": f"public, max-age={self.max_age}"}
        if failure == "garbage":
            return 200, ok, b"<html>not json</html>"
        if failure == "oversized":
            return 200, ok, b'{"keys":[' + b" " * (5 * 1024 * 1024) + b"]}"
        if endpoint == "discovery":
            doc = self.discovery()
            if failure == "issuer_mismatch":
                doc["issuer"] = "https://attacker.example"
        else:
            doc = {"keys": []} if failure == "empty" else self.jwks()
        return 200, ok, json.dumps(doc, separators=(",", ":")).encode()


class _QuietServer(ThreadingHTTPServer):
    """Does not print tracebacks for failed TLS handshakes (clients that do not trust the CA)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


def _handler_for(issuer: FakeIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            answer = issuer._respond(self.path.split("?")[0], dict(self.headers.items()))
            if answer is None:  # "down": drop the connection without a response
                self.close_connection = True
                return
            status, headers, body = answer
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeouts in tests)
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
            pass

    return Handler
