"""Starlette and FastAPI: authenticate Kubernetes workloads with a pure ASGI middleware.

```python
from starlette.applications import Starlette
from starlette.middleware import Middleware
from k8s_jwt_auth.integrations.starlette import K8sJWTAuthMiddleware

app = Starlette(routes=..., middleware=[
    Middleware(K8sJWTAuthMiddleware, verifier=verifier, exempt_paths=["/healthz"]),
])

async def whoami(request):
    workload = request.user.workload            # a k8s_jwt_auth.WorkloadIdentity
    assert "namespace:payments" in request.auth.scopes
```

Scope keys set on `http` and `websocket` connections (never on `lifespan`):

* `scope["user"]` — a `WorkloadUser` (`.workload` is the `WorkloadIdentity`; `identity` and
  `display_name` are `system:serviceaccount:NS:SA`), or `UnauthenticatedUser` for exempt paths and
  anonymous requests in optional mode;
* `scope["auth"]` — `AuthCredentials` with the scopes of `auth_scopes()`: `authenticated`, `workload`,
  `namespace:NS`, `serviceaccount:NS:SA`, `audience:AUD`..., and `pod-bound` for pod-bound tokens.

Refusals: 401 (`WWW-Authenticate: Bearer ...`, RFC 6750) for missing or invalid tokens, 403 for
policy denials, 503 with `Retry-After` when the token cannot be checked now; the body is
`{"error", "reason", "message"}`. A refused websocket is closed before it is accepted, with code 1008
(policy violation), or 1013 (try again later) when keys or TokenReview are unavailable; the close reason is the
`reason` code. Tokens are never logged: logs (logger `k8s_jwt_auth.integrations.starlette`) show the
token's SHA-256 fingerprint.

For Starlette's own `AuthenticationMiddleware`, use `WorkloadAuthBackend` with our `on_error`. The middleware is
the generic ASGI one (`k8s_jwt_auth.integrations.asgi`, for Litestar, Quart or a bare app) with Starlette's scope keys.

In tests, `workload_client(app, issuer, namespace, service_account)` is a `TestClient` that calls as that workload,
with a token minted by a `k8s_jwt_auth.testing.FakeIssuer`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

try:
    from starlette.authentication import (
        AuthCredentials,
        AuthenticationBackend,
        AuthenticationError,
        BaseUser,
        UnauthenticatedUser,
    )
    from starlette.requests import HTTPConnection
    from starlette.responses import Response
    from starlette.types import ASGIApp, Scope
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError('k8s_jwt_auth.integrations.starlette needs Starlette: pip install "k8s-jwt-auth[starlette]"'
                      ) from exc

from k8s_jwt_auth import AuthError, ConfigurationError, InvalidToken, Policy, TokenVerifier, VerifierConfig
from k8s_jwt_auth.gate import Gate
from k8s_jwt_auth.http import error_response
from k8s_jwt_auth.identity import WorkloadIdentity

from . import asgi
from ._asgi_common import STATE_KEY, auth_scopes, header_credentials, websocket_close_code
from ._common import build_verifier, keyword_options

if TYPE_CHECKING:
    from starlette.testclient import TestClient

    from k8s_jwt_auth.testing import FakeIssuer

__all__ = [
    "K8sJWTAuthMiddleware",
    "WorkloadAuthBackend",
    "WorkloadAuthenticationError",
    "WorkloadUser",
    "auth_error_response",
    "auth_scopes",
    "credentials_for",
    "keyword_options",
    "on_error",
    "websocket_close_code",
    "workload_client",
]

logger = logging.getLogger("k8s_jwt_auth.integrations.starlette")


class WorkloadUser(BaseUser):
    """The `request.user` of a verified workload.

    Attributes:
        workload: the verified `WorkloadIdentity`.
        gate: the `k8s_jwt_auth.gate.Gate` that admitted it (`None` when built by hand).
    """

    __slots__ = ("gate", "workload")

    def __init__(self, workload: WorkloadIdentity, gate: Gate | None = None) -> None:
        self.workload = workload
        self.gate = gate  # the gate that admitted it: a route layer authorizes with it (no second verification)

    @property
    def is_authenticated(self) -> bool:
        """Always `True`."""
        return True

    @property
    def display_name(self) -> str:
        """`system:serviceaccount:NS:SA`."""
        return self.workload.username

    @property
    def identity(self) -> str:
        """`system:serviceaccount:NS:SA` (Starlette's `identity` is a string; the object is `.workload`)."""
        return self.workload.username

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WorkloadUser) and other.workload == self.workload

    def __hash__(self) -> int:
        return hash(self.workload)

    def __repr__(self) -> str:
        return f"WorkloadUser({self.workload.username!r})"


def credentials_for(workload: WorkloadIdentity, gate: Gate | None = None) -> tuple[AuthCredentials, WorkloadUser]:
    """The `(scope["auth"], scope["user"])` pair of a verified workload (admitted by `gate`)."""
    return AuthCredentials(auth_scopes(workload)), WorkloadUser(workload, gate)


def auth_error_response(exc: AuthError, realm: str | None = None) -> Response:
    """Render an `AuthError` as a Starlette `Response`: status, `WWW-Authenticate`/`Retry-After`, JSON body."""
    rendered = error_response(exc, realm)
    return Response(rendered.json_bytes(), status_code=rendered.status, headers=dict(rendered.headers))


class K8sJWTAuthMiddleware(asgi.K8sJWTAuthMiddleware):
    """Pure ASGI middleware that verifies `Authorization: Bearer <token>` on every HTTP and websocket request.

    The enforcing layer of the policy model (docs/policy-model.md): every non-exempt request passes the service
    policy; a route's `require_workload(...)` rules (FastAPI) apply on top. It is the generic ASGI middleware
    (`k8s_jwt_auth.integrations.asgi`) storing the workload the Starlette way, in `scope["user"]`/`scope["auth"]`.

    Args:
        app: the ASGI app to protect.
        verifier: a `TokenVerifier`, a `VerifierConfig`, or `None` to build one from `K8S_JWT_AUTH_*`
            environment variables (`VerifierConfig.from_env()`).
        header: the header holding `Bearer <token>` (e.g. `X-Forwarded-Authorization` behind a proxy);
            `None`: `Authorization`.
        exempt_paths: paths let through unauthenticated (`UnauthenticatedUser`): exact (`/healthz`) or
            prefixes (`/public/*`), matched against the route path (without `root_path`).
        optional: let requests *without* bearer credentials through as `UnauthenticatedUser`; a bad
            token is still refused.
        policy: the service policy every authenticated request must pass; default `verifier.policy`
            (`allow`/`K8S_JWT_AUTH_ALLOW`). A dry-run policy logs would-be denials and lets them through.
        realm: the `realm` of `WWW-Authenticate` challenges.
        websocket: authenticate websocket connections too; with `False` they pass through untouched.

    The options mean what `HEADER`, `EXEMPT_PATHS`, `OPTIONAL` and `REALM` mean for Flask and Django
    (`k8s_jwt_auth.options`); `None` means "not set".

    Raises:
        ConfigurationError: for invalid settings or missing environment variables (at construction).
        AlreadyInstalled: `app` is already wrapped by a `K8sJWTAuthMiddleware` (or our `WorkloadAuthBackend`).
    """

    _logger = logger
    _install_once = ("add K8sJWTAuthMiddleware (or AuthenticationMiddleware with WorkloadAuthBackend) once; give a "
                     "route its own rules with require_workload()")

    def __init__(
        self,
        app: ASGIApp,
        verifier: TokenVerifier | VerifierConfig | None = None,
        *,
        header: str | None = None,
        exempt_paths: Sequence[str] | str | None = (),
        optional: bool | str | None = False,
        policy: Policy | None = None,
        realm: str | None = None,
        websocket: bool = True,
    ) -> None:
        super().__init__(app, verifier, exempt_paths=exempt_paths, optional=optional, header=header, realm=realm,
                         policy=policy, websocket=websocket)

    def _store(self, scope: Scope, workload: WorkloadIdentity | None) -> None:
        """`scope["auth"]`, `scope["user"]`: the workload's credentials, or anonymous ones."""
        if workload is None:
            scope["auth"], scope["user"] = AuthCredentials(), UnauthenticatedUser()
        else:
            scope["auth"], scope["user"] = credentials_for(workload, self.gate)


class WorkloadAuthenticationError(AuthenticationError):
    """Starlette's `AuthenticationError` carrying our `AuthError` (for `on_error`).

    Attributes:
        error: the `AuthError` that refused the request.
        realm: the realm for the challenge.
    """

    def __init__(self, error: AuthError, realm: str | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.realm = realm


class WorkloadAuthBackend(AuthenticationBackend):
    """A backend for Starlette's `AuthenticationMiddleware`; pass `on_error=on_error` with it.

    ```python
    Middleware(AuthenticationMiddleware, backend=WorkloadAuthBackend(verifier), on_error=on_error)
    ```

    Returns `None` for requests without bearer credentials (Starlette then sets `UnauthenticatedUser`),
    raises `WorkloadAuthenticationError` for bad credentials or a policy denial, and returns
    `(AuthCredentials, WorkloadUser)` otherwise. Starlette's middleware closes refused websockets
    with code 1000; use `K8sJWTAuthMiddleware` for 1008/1013.

    Args:
        verifier: a `TokenVerifier`, a `VerifierConfig`, or `None` for `VerifierConfig.from_env()`.
        header: the header holding `Bearer <token>`.
        policy: the policy to apply; default `verifier.policy`.
        realm: the `realm` of `WWW-Authenticate` challenges rendered by `on_error`.
    """

    def __init__(self, verifier: TokenVerifier | VerifierConfig | None = None, *, header: str | None = None,
                 policy: Policy | None = None, realm: str | None = None) -> None:
        self.options = keyword_options(header=header, realm=realm)
        self.gate = Gate(build_verifier(verifier), policy=policy, logger=logger)
        self.verifier, self.policy, self.realm = self.gate.verifier, self.gate.policy, self.options.realm

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        """Verify the request's bearer token, if it has one.

        Raises:
            WorkloadAuthenticationError: the credentials are bad, the token cannot be checked now or the policy denies.
        """
        scope = conn.scope
        outcome = await self.gate.aadmit(header_credentials(scope, self.options.header_key), optional=True,
                                         path=scope.get("path", ""), method=scope.get("method"),
                                         transport=scope["type"])
        if outcome.error is not None:
            raise WorkloadAuthenticationError(outcome.error, self.realm)
        return None if outcome.workload is None else credentials_for(outcome.workload, self.gate)


def on_error(conn: HTTPConnection, exc: AuthenticationError) -> Response:
    """`on_error` for Starlette's `AuthenticationMiddleware`: our 401/403/503 JSON responses.

    Another backend's `AuthenticationError` becomes a plain 401 that does not echo its message.
    """
    if isinstance(exc, WorkloadAuthenticationError):
        return auth_error_response(exc.error, exc.realm)
    return auth_error_response(InvalidToken("the credentials were rejected"))


# -- testing ---------------------------------------------------------------------------------------------


def workload_client(app: ASGIApp, issuer: FakeIssuer, namespace: str = "default", service_account: str = "default",
                    **mint_options: Any) -> TestClient:
    """A `TestClient` for `app` that calls as `namespace/service_account`, with a token minted by `issuer`.

    ```python
    with workload_client(app, k8s_issuer, "payments", "worker", pod="worker-1") as client:  # runs the lifespan
        assert client.get("/whoami").json()["namespace"] == "payments"
    ```

    Every request, websockets included, sends the token as `Bearer <token>`; a request's own `headers=` win. The
    token is minted for the app's audiences, found in this order: the verifier `install()` put on `app.state`
    (FastAPI), the verifier of the first `K8sJWTAuthMiddleware` or `WorkloadAuthBackend` in `app.user_middleware`
    (a `TokenVerifier` or `VerifierConfig`, or the `K8S_JWT_AUTH_*` variables when it was given none); failing that,
    `FakeIssuer.mint`'s default, `test`. The header is that middleware's `header` (default `Authorization`).

    Args:
        app: the Starlette or FastAPI app (any ASGI app, with `audiences=` given).
        issuer: a `k8s_jwt_auth.testing.FakeIssuer` (e.g. the `k8s_issuer` pytest fixture).
        namespace: the caller's namespace.
        service_account: the caller's service account.
        **mint_options: more `FakeIssuer.mint` options (`pod=`, `lifetime=`, `audiences=`, ...).

    Returns:
        A Starlette `TestClient`, not yet started: use it in a `with` block so that the app's lifespan runs.
    """
    from starlette.testclient import TestClient  # only tests need it (and httpx2 behind it)

    verifier, header = _app_auth(app)
    if verifier is not None:
        config = verifier.config if isinstance(verifier, TokenVerifier) else verifier
        mint_options.setdefault("audiences", tuple(config.audiences))
    token = issuer.mint(namespace, service_account, **mint_options)
    return TestClient(app, headers={header: f"Bearer {token}"})


def _app_auth(app: ASGIApp) -> tuple[TokenVerifier | VerifierConfig | None, str]:
    """The verifier (or its config) an app authenticates with, and the header it reads, as far as can be seen."""
    installed: TokenVerifier | None = getattr(getattr(app, "state", None), STATE_KEY, None)
    for spec in getattr(app, "user_middleware", ()):
        backend = spec.kwargs.get("backend")
        if isinstance(backend, WorkloadAuthBackend):
            return installed or backend.verifier, backend.options.header
        if isinstance(spec.cls, type) and issubclass(spec.cls, K8sJWTAuthMiddleware):
            given = spec.args[0] if spec.args else spec.kwargs.get("verifier")
            return installed or given or _env_config(), str(spec.kwargs.get("header") or "Authorization")
    return installed, "Authorization"


def _env_config() -> VerifierConfig | None:
    """The config a middleware given no verifier builds (`VerifierConfig.from_env()`), `None` if it cannot."""
    try:
        return VerifierConfig.from_env()
    except ConfigurationError:
        return None
