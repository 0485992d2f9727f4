"""`FakeIssuer`: a Kubernetes service-account issuer (and API server) on 127.0.0.1 for tests and demos.

It serves `/.well-known/openid-configuration` and `/openid/v1/jwks` over real HTTP from a background
thread, with kube-apiserver's content negotiation (the JWKS is `application/jwk-set+json`; a request
that accepts only `application/json` gets 406), mints tokens shaped like real ones, rotates keys, counts
fetches and can be told to fail.

It also answers `POST /apis/authentication.k8s.io/v1/tokenreviews` the way kube-apiserver does (see
`tests/fixtures/k8s/tokenreview/` in the repository): HTTP 201 for every review, `status.authenticated` only on success,
`status.error` with the API server's wording otherwise (`invalid bearer token`, `service account token has
expired`, `token audiences [...] is invalid for the target audiences [...]`, `serviceaccounts "NAME" not
found`, `service account UID (NEW) does not match claim (OLD)`, `service account token has been
invalidated` for a deleted pod, `pod UID (NEW) does not match service account pod ref claim (OLD)`; see
kube-apiserver's `pkg/serviceaccount/claims.go`), `status.audiences` = spec.audiences ∩ the token's `aud`,
`user.extra` with the pod, node and credential id of pod-bound tokens, and a positive-answer cache
(`review_cache_ttl`, 10 s like the real one) that keeps a token authenticated for a while after its pod or
service account is deleted or re-created (`delete_pod`, `recreate_pod`, `delete_service_account`,
`recreate_service_account`). It checks the token itself with its own current keys (signature, `iss`,
`exp`/`nbf` with 60 s of leeway, audiences) and requires `Authorization: Bearer`.
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ._keys import _CURVES, SigningKey, build_claims, sign
from ._tls import TestCertificates

__all__ = ["Endpoint", "FailureMode", "FakeIssuer"]

FailureMode = Literal["down", "slow", "error", "garbage", "empty", "oversized", "issuer_mismatch",
                      "unauthorized", "forbidden"]
_FAILURE_MODES = frozenset(FailureMode.__args__)  # type: ignore[attr-defined]
Endpoint = Literal["all", "discovery", "jwks", "tokenreview"]
DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/openid/v1/jwks"
TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
REVIEW_LEEWAY = 60  # kube-apiserver accepts tokens up to this many seconds past exp (and before nbf)
MAX_REQUEST_BODY = 1024 * 1024
_ENDPOINTS = {DISCOVERY_PATH: "discovery", JWKS_PATH: "jwks", TOKENREVIEW_PATH: "tokenreview"}
_INVALID = "invalid bearer token"


class FakeIssuer:
    """A fake cluster issuer serving discovery, JWKS and TokenReview on `http://127.0.0.1:<port>`.

    Args:
        issuer: the `iss` of minted tokens and of the discovery document; defaults to `self.url`, so
            that discovery from the issuer URL works. Give another value (e.g. the in-cluster
            `https://kubernetes.default.svc.cluster.local`) to test `jwks_uri` overrides or mismatches.
        algorithm: the algorithm of the first key.
        require_token: when set, discovery and JWKS require `Authorization: Bearer <require_token>`
            (401 without a token, 403 with another), as kube-apiserver does without anonymous discovery.
        max_age: the `Cache-Control: max-age` the server sends (kube-apiserver sends 3600).
        clock: the current Unix time (`time.time` when `None`), used by `mint` when no `now` is given and
            by TokenReview (token expiry, the positive-answer cache). Assignable; `reset()` restores it.
        tls: serve `https://127.0.0.1:<port>` with a certificate from a throwaway CA whose PEM is
            `ca_pem` (write it to a file and give it as `ca_file`); clients without it fail verification.
        reviewer_token: when set, TokenReview requests must carry `Authorization: Bearer <reviewer_token>`
            (401 otherwise); when `None`, any bearer token is accepted, and a request without one gets 401.
        review_cache_ttl: seconds a successful TokenReview answer is reused for the same token and
            audiences (kube-apiserver: about 10 s), never past the token's `exp`; 0 turns the cache off.
        api_audiences: the audiences reviewed when a TokenReview has no `spec.audiences` (kube-apiserver's
            `--api-audiences`); default: the issuer.

    Use as a context manager, or call `start()`/`stop()`. State (keys, failures, counters, deleted and
    re-created pods and service accounts, the review cache, `clock`) is reset by `reset()`; the pytest fixture
    `k8s_issuer` does that before each test.

    Attributes:
        discovery_fetches, jwks_fetches, tokenreviews: requests received per endpoint.
        requests: every request's path, method and headers (lower-case names).
        review_requests: the JSON body of every TokenReview request, as received (tokens included).
        deleted_pods, deleted_service_accounts: what `delete_pod`/`delete_service_account` deleted (and
            no `recreate_*` brought back), as `(namespace, name)` (namespace `None`: every namespace).
        pod_uids, service_account_uids: the UID of each pod and service account re-created by
            `recreate_pod`/`recreate_service_account`, by `(namespace, name)`. Objects not in them and
            not deleted exist with whatever UID a token names.
    """

    def __init__(
        self,
        *,
        issuer: str | None = None,
        algorithm: str = "RS256",
        require_token: str | None = None,
        max_age: int = 3600,
        clock: Callable[[], float] | None = None,
        tls: bool = False,
        reviewer_token: str | None = None,
        review_cache_ttl: float = 10.0,
        api_audiences: Sequence[str] | None = None,
    ) -> None:
        self._issuer = issuer
        self._tls = TestCertificates.generate() if tls else None
        self.ca_pem: str | None = self._tls.ca_pem if self._tls is not None else None
        self._initial_key = SigningKey.generate(algorithm)
        self._initial_settings = (require_token, max_age, clock, reviewer_token, float(review_cache_ttl))
        self._api_audiences = tuple(api_audiences) if api_audiences is not None else None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> FakeIssuer:
        """Start serving on a free port of 127.0.0.1. Returns self."""
        if self._server is None:
            self._server = _Server(("127.0.0.1", 0), _handler_for(self))
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
        constructor's `require_token`, `max_age`, `clock`, `reviewer_token` and `review_cache_ttl`, no
        deleted or re-created pods or service accounts, an empty review cache; requests held by the `slow`
        mode are released.

        The initial key is kept (generating RSA keys is slow), so tokens minted before a reset still
        verify; call `rotate()` for a new key.
        """
        with self._lock:
            self.keys: list[SigningKey] = [self._initial_key]
            self.require_token, self.max_age, self.clock, self.reviewer_token, self.review_cache_ttl = \
                self._initial_settings
            self.failure: str | None = None
            self.failure_endpoint: Endpoint = "all"
            self.delay = 0.0
            self.discovery_fetches = 0
            self.jwks_fetches = 0
            self.tokenreviews = 0
            self.requests: list[dict[str, str]] = []
            self.review_requests: list[Any] = []
            self.deleted_pods: set[tuple[str | None, str]] = set()
            self.deleted_service_accounts: set[tuple[str, str]] = set()
            self.pod_uids: dict[tuple[str, str], str] = {}
            self.service_account_uids: dict[tuple[str, str], str] = {}
            self._review_cache: dict[tuple[str, tuple[str, ...]], tuple[dict[str, Any], float]] = {}
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

    def fail(self, mode: FailureMode | None, *, endpoint: Endpoint = "all", delay: float = 5.0) -> None:
        """Make the server fail until `fail(None)` or `reset()`.

        Modes: `down` (drop the connection without answering), `slow` (wait `delay` seconds, at most
        30, then answer normally), `error` (HTTP 500), `garbage` (200, or 201 for TokenReview, with
        non-JSON), `empty` (a JWKS with no keys), `oversized` (a 5 MiB body), `issuer_mismatch`
        (discovery names another issuer), `unauthorized` (401), `forbidden` (403). `endpoint` is
        `discovery`, `jwks`, `tokenreview` or `all`; `empty` and `issuer_mismatch` do not affect TokenReview.
        """
        if mode is not None and mode not in _FAILURE_MODES:
            raise ValueError(f"unknown failure mode {mode!r}; one of {sorted(_FAILURE_MODES)}")
        with self._lock:
            self.failure, self.failure_endpoint, self.delay = mode, endpoint, min(float(delay), 30.0)
        if mode is None:
            self._wake.set()
            self._wake = threading.Event()

    # -- the API server's view (TokenReview) -------------------------------------------------------

    def now(self) -> float:
        """The current Unix time: `clock()`, or `time.time()` without a clock."""
        return float(self.clock()) if self.clock is not None else time.time()

    def delete_pod(self, name: str, namespace: str | None = None) -> None:
        """Delete a pod: once the review cache forgets them, reviews of tokens bound to it answer
        `[invalid bearer token, service account token has been invalidated]` (as kube-apiserver does).

        `namespace` limits it to one namespace (default: a pod of that name in every namespace).
        """
        with self._lock:
            self.deleted_pods.add((namespace, name))
            for key in [k for k in self.pod_uids if k[1] == name and namespace in (None, k[0])]:
                del self.pod_uids[key]

    def recreate_pod(self, name: str, namespace: str = "default") -> str:
        """Delete a pod and create another of the same name: it has a new UID, returned.

        Tokens minted for the pod by name from now on carry the new UID; reviews of the older ones answer
        `[invalid bearer token, pod UID (NEW) does not match service account pod ref claim (OLD)]` once the
        review cache forgets them. Brings a pod deleted by `delete_pod` back.
        """
        uid = str(uuid.uuid4())
        with self._lock:
            self.deleted_pods.discard((namespace, name))
            self.pod_uids[(namespace, name)] = uid
        return uid

    def delete_service_account(self, namespace: str, name: str) -> None:
        """Delete a service account: once the review cache forgets them, reviews of its tokens answer
        `[invalid bearer token, serviceaccounts "NAME" not found]` (as kube-apiserver does)."""
        with self._lock:
            self.deleted_service_accounts.add((namespace, name))
            self.service_account_uids.pop((namespace, name), None)

    def recreate_service_account(self, namespace: str, name: str) -> str:
        """Delete a service account and create another of the same name: it has a new UID, returned.

        Tokens minted for it from now on carry the new UID; reviews of the older ones answer
        `[invalid bearer token, service account UID (NEW) does not match claim (OLD)]` once the review
        cache forgets them. Brings a service account deleted by `delete_service_account` back.
        """
        uid = str(uuid.uuid4())
        with self._lock:
            self.deleted_service_accounts.discard((namespace, name))
            self.service_account_uids[(namespace, name)] = uid
        return uid

    def review(self, token: str, audiences: Sequence[str] | None = None) -> dict[str, Any]:
        """The `status` of a TokenReview of `token` for `audiences` (as the endpoint answers it).

        Successful answers are cached for `review_cache_ttl` seconds (never past the token's `exp`), so a
        token stays authenticated for a while after its pod or service account is deleted or re-created.
        """
        targets = tuple(audiences) if audiences else self._api_audiences or (self.issuer,)
        now = self.now()
        with self._lock:
            cached = self._review_cache.get((token, targets))
            if cached is not None and now < cached[1]:
                return cached[0]
            keys = list(self.keys)
            objects = _Objects(set(self.deleted_pods), set(self.deleted_service_accounts), dict(self.pod_uids),
                               dict(self.service_account_uids))
        try:
            payload = self._authenticate(token, keys, targets, now)
            _check_bound_objects(payload, objects)
        except _Rejected as exc:
            return {"user": {}, "error": str(exc)}
        status = _authenticated(payload, targets)
        until = min(now + self.review_cache_ttl, float(payload["exp"]) + REVIEW_LEEWAY)
        if until > now:
            with self._lock:
                self._review_cache[(token, targets)] = (status, until)
        return status

    def _authenticate(self, token: str, keys: Sequence[SigningKey], targets: tuple[str, ...], now: float
                      ) -> dict[str, Any]:
        """The verified payload, or `_Rejected` with kube-apiserver's wording."""
        header, payload, signing_input, signature = _split(token)
        if payload.get("iss") != self.issuer:
            raise _Rejected(_INVALID)
        kid = header.get("kid")
        candidates = [k for k in keys if kid is None or k.kid == kid]
        if not any(_signature_ok(k, header.get("alg"), signing_input, signature) for k in candidates):
            raise _Rejected(f"[{_INVALID}, go-jose/go-jose: error in cryptographic primitive]")
        aud = payload.get("aud")
        token_audiences = [aud] if isinstance(aud, str) else [a for a in aud or () if isinstance(a, str)]
        if not set(token_audiences) & set(targets):
            raise _Rejected(f"[{_INVALID}, token audiences {_go_list(token_audiences)} is invalid for the target "
                            f"audiences {_go_list(targets)}]")
        exp, nbf = payload.get("exp"), payload.get("nbf")
        if not isinstance(exp, (int, float)) or now > exp + REVIEW_LEEWAY:
            raise _Rejected(f"[{_INVALID}, service account token has expired]")
        if isinstance(nbf, (int, float)) and nbf > now + REVIEW_LEEWAY:
            raise _Rejected(f"[{_INVALID}, service account token is not valid yet]")
        return payload

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

        `claims` overrides or adds claims, `drop` removes some, `header` replaces the header. The service
        account's UID, and the UID of a pod given by name, are those of `recreate_service_account` and
        `recreate_pod` when they re-created it (a pod given by name otherwise gets a random UID).
        """
        if now is None and self.clock is not None:
            now = float(self.clock())
        with self._lock:
            account_uid = self.service_account_uids.get((namespace, service_account))
            if isinstance(pod, str) and (namespace, pod) in self.pod_uids:
                pod = (pod, self.pod_uids[(namespace, pod)])
        payload = build_claims(
            issuer=self.issuer, namespace=namespace, service_account=service_account,
            audiences=(audiences,) if isinstance(audiences, str) else audiences, lifetime=lifetime, now=now,
            pod=pod, node=node, warn_after=warn_after, extra=claims, drop=drop, service_account_uid=account_uid,
        )
        return sign(key or self.key, payload, header)

    # -- serving (called from the server's threads) -----------------------------------------------

    def _respond(self, path: str, headers: Mapping[str, str], method: str = "GET", body: bytes = b""
                 ) -> tuple[int, dict[str, str], bytes] | None:
        with self._lock:
            self.requests.append({"path": path, "method": method, **{k.lower(): v for k, v in headers.items()}})
            endpoint = _ENDPOINTS.get(path)
            if endpoint == "discovery":
                self.discovery_fetches += 1
            elif endpoint == "jwks":
                self.jwks_fetches += 1
            elif endpoint == "tokenreview":
                self.tokenreviews += 1
            failure = self.failure if self.failure_endpoint in ("all", endpoint) else None
            delay, wake = self.delay, self._wake
        if endpoint is None:
            return 404, {"Content-Type": "application/json"}, b'{"kind":"Status","code":404}'
        if (method == "POST") != (endpoint == "tokenreview"):
            return 405, {"Content-Type": "application/json"}, b'{"kind":"Status","code":405}'
        if failure == "slow":
            wake.wait(delay)
        elif failure == "down":
            return None
        if endpoint == "tokenreview":
            return self._answer_review(failure, headers, body)
        return self._answer(endpoint, failure, headers)

    def _answer_review(self, failure: str | None, headers: Mapping[str, str], body: bytes
                       ) -> tuple[int, dict[str, str], bytes]:
        auth = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
        scheme, _, credential = auth.partition(" ")
        if failure == "unauthorized" or scheme.lower() != "bearer" or not credential.strip() or (
                self.reviewer_token is not None and credential.strip() != self.reviewer_token):
            return _status(401, "Unauthorized", "Unauthorized")
        if failure == "forbidden":
            return _status(403, "Forbidden", 'tokenreviews.authentication.k8s.io is forbidden: User '
                           '"system:serviceaccount:default:default" cannot create resource "tokenreviews" in API '
                           'group "authentication.k8s.io" at the cluster scope')
        if failure == "error":
            return _status(500, "InternalError", "Internal error occurred")
        ok = {"Content-Type": "application/json"}
        if failure == "garbage":
            return 201, ok, b"<html>not json</html>"
        if failure == "oversized":
            return 201, ok, b'{"status":{' + b" " * (5 * 1024 * 1024) + b"}}"
        try:
            request = json.loads(body)
        except ValueError:
            return _status(400, "BadRequest", "the body is not JSON")
        with self._lock:
            self.review_requests.append(request)
        spec = request.get("spec") if isinstance(request, dict) else None
        if request.get("kind") != "TokenReview" or request.get("apiVersion") != "authentication.k8s.io/v1" \
                or not isinstance(spec, dict) or not isinstance(spec.get("token"), str):
            return _status(400, "BadRequest", "expected an authentication.k8s.io/v1 TokenReview with spec.token")
        audiences = spec.get("audiences")
        if audiences is not None and (not isinstance(audiences, list)
                                      or not all(isinstance(a, str) for a in audiences)):
            return _status(400, "BadRequest", "spec.audiences must be a list of strings")
        answer = {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {},
                  "spec": spec, "status": self.review(spec["token"], audiences)}
        return 201, ok, json.dumps(answer, separators=(",", ":")).encode()

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


class _Rejected(Exception):
    """A TokenReview that does not authenticate the token; the message is kube-apiserver's `status.error`."""


@dataclass(frozen=True)
class _Objects:
    """A snapshot of what the fake API server knows about pods and service accounts."""

    deleted_pods: set[tuple[str | None, str]]
    deleted_accounts: set[tuple[str, str]]
    pod_uids: dict[tuple[str, str], str]
    account_uids: dict[tuple[str, str], str]


def _status(code: int, reason: str, message: str) -> tuple[int, dict[str, str], bytes]:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    return code, {"Content-Type": "application/json"}, json.dumps(body, separators=(",", ":")).encode()


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _split(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Header, payload, signing input and signature of a compact JWS, or `_Rejected("invalid bearer token")`."""
    parts = token.split(".")
    if len(parts) != 3:
        raise _Rejected(_INVALID)
    try:
        header, payload = json.loads(_b64decode(parts[0])), json.loads(_b64decode(parts[1]))
        signature = _b64decode(parts[2])
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    except (ValueError, binascii.Error):  # UnicodeError and JSONDecodeError are ValueErrors
        raise _Rejected(_INVALID) from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise _Rejected(_INVALID)
    return header, payload, signing_input, signature


def _signature_ok(key: SigningKey, alg: object, signing_input: bytes, signature: bytes) -> bool:
    """Checked with the private key's public half (independently of the library under test)."""
    if alg != key.alg:
        return False
    public = key.private_key.public_key()
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
            return True
        _, digest, size, _ = _CURVES[key.alg]
        if len(signature) != 2 * size:
            return False
        der = encode_dss_signature(int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big"))
        public.verify(der, signing_input, ec.ECDSA(digest))
        return True
    except InvalidSignature:
        return False


def _go_quote(value: str) -> str:
    """A string as Go's `%q` prints it (close enough: JSON string syntax, printable Unicode kept)."""
    return json.dumps(value, ensure_ascii=False)


def _go_list(values: Sequence[str]) -> str:
    """A string list as Go's `%q` prints it: `["a" "b"]`."""
    return "[" + " ".join(_go_quote(v) for v in values) + "]"


def _bound(payload: dict[str, Any], kind: str) -> dict[str, Any]:
    """`kubernetes.io.<kind>` (`serviceaccount`, `pod`, `node`) of a payload, `{}` when absent."""
    k8s = payload.get("kubernetes.io")
    value = k8s.get(kind) if isinstance(k8s, dict) else None
    return value if isinstance(value, dict) else {}


def _namespace(payload: dict[str, Any]) -> str:
    k8s = payload.get("kubernetes.io")
    return str(k8s.get("namespace", "")) if isinstance(k8s, dict) else ""


def _check_bound_objects(payload: dict[str, Any], objects: _Objects) -> None:
    """`_Rejected` when the token's service account or pod was deleted or re-created, with kube-apiserver's
    wording (`pkg/serviceaccount/claims.go`: the service account is checked first, then the pod)."""
    namespace, account, pod = _namespace(payload), _bound(payload, "serviceaccount"), _bound(payload, "pod")
    name, claimed = str(account.get("name", "")), str(account.get("uid", ""))
    if (namespace, name) in objects.deleted_accounts:  # the getter's NotFound error, as it is
        raise _Rejected(f"[{_INVALID}, serviceaccounts {_go_quote(name)} not found]")
    actual = objects.account_uids.get((namespace, name))
    if actual is not None and actual != claimed:
        raise _Rejected(f"[{_INVALID}, service account UID ({actual}) does not match claim ({claimed})]")
    if not pod:
        return
    name, claimed = str(pod.get("name", "")), str(pod.get("uid", ""))
    actual = objects.pod_uids.get((namespace, name))  # a re-created pod exists, whatever was deleted before
    if actual is None and {(None, name), (namespace, name)} & objects.deleted_pods:
        raise _Rejected(f"[{_INVALID}, service account token has been invalidated]")
    if actual is not None and actual != claimed:
        raise _Rejected(f"[{_INVALID}, pod UID ({actual}) does not match service account pod ref claim ({claimed})]")


def _authenticated(payload: dict[str, Any], targets: tuple[str, ...]) -> dict[str, Any]:
    """A successful review's status: the user, its groups, the pod/node/credential extras, the audiences."""
    namespace, account = _namespace(payload), _bound(payload, "serviceaccount")
    user: dict[str, Any] = {
        "username": f"system:serviceaccount:{namespace}:{account.get('name', '')}",
        "uid": str(account.get("uid", "")),
        "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
    }
    extra: dict[str, list[str]] = {}
    if isinstance(payload.get("jti"), str):
        extra["authentication.kubernetes.io/credential-id"] = [f"JTI={payload['jti']}"]
    for kind in ("node", "pod"):
        bound = _bound(payload, kind)
        if bound:
            extra[f"authentication.kubernetes.io/{kind}-name"] = [str(bound.get("name", ""))]
            extra[f"authentication.kubernetes.io/{kind}-uid"] = [str(bound.get("uid", ""))]
    if extra:
        user["extra"] = extra
    aud = payload.get("aud")
    token_audiences = {aud} if isinstance(aud, str) else set(aud or ())
    return {"authenticated": True, "user": user, "audiences": [a for a in targets if a in token_audiences]}


_CLIENT_GONE = (
    ConnectionError,  # ConnectionResetError, BrokenPipeError, ConnectionAbortedError: the client went away
    ssl.SSLError,  # TLS: an EOF mid-handshake or mid-record, or a client refusing the certificate (an alert)
)


class _Server(ThreadingHTTPServer):
    """The fake issuer's server, HTTP and HTTPS alike: quiet when a client goes away (tests time out, cancel and
    reset connections all the time), and the usual traceback on stderr for anything else, a bug in the server."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], _CLIENT_GONE):
            return
        super().handle_error(request, client_address)


def _handler_for(issuer: FakeIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # http.server writes an answer as headers, then body: without TCP_NODELAY, Nagle holds the body until the
        # client ACKs the headers, which a kept-alive client delays up to 40 ms (real API servers, in Go, set it)
        disable_nagle_algorithm = True

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._send(issuer._respond(self.path.split("?")[0], dict(self.headers.items())))

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = self.headers.get("Content-Length", "0")
            if not (length.isascii() and length.isdigit()) or int(length) > MAX_REQUEST_BODY:
                self._send((413, {"Content-Type": "application/json"}, b'{"kind":"Status","code":413}'))
                self.close_connection = True
                return
            body = self.rfile.read(int(length))
            self._send(issuer._respond(self.path.split("?")[0], dict(self.headers.items()), "POST", body))

        def _send(self, answer: tuple[int, dict[str, str], bytes] | None) -> None:
            if answer is None:  # "down": drop the connection without a response
                self.close_connection = True
                return
            status, headers, body = answer  # a client gone meanwhile raises here, for _Server.handle_error
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
            pass

    return Handler
