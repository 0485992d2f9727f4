"""FastAPI: workload authentication as dependencies, with per-route policies and an OpenAPI Bearer scheme.

```python
from fastapi import Depends, FastAPI
from k8s_jwt_auth import TokenVerifier, VerifierConfig, WorkloadIdentity
from k8s_jwt_auth.integrations.fastapi import Workload, install, require_workload

app = FastAPI()
install(app, TokenVerifier(VerifierConfig.from_env()))  # app.state.k8s_jwt_auth + error handlers

@app.get("/whoami")
async def whoami(workload: Workload) -> dict:              # the verifier's own policy (K8S_JWT_AUTH_ALLOW)
    return workload.to_dict()

@app.post("/charge", dependencies=[Depends(require_workload("payments/*", "!payments/batch"))])
async def charge() -> None: ...
```

Where the workload comes from: if `K8sJWTAuthMiddleware` (or Starlette's `AuthenticationMiddleware`
with `WorkloadAuthBackend`) already authenticated the request, the dependency reuses
`request.user.workload` and only applies its own policy. Otherwise it reads the bearer token and
verifies it with `verify_async`, using the dependency's `verifier=` or the one `install()` put on
`app.state.k8s_jwt_auth`.

How errors render: the dependencies raise `WorkloadHTTPException` (an `HTTPException`) with our status
and `WWW-Authenticate`/`Retry-After` headers. `install()` / `add_exception_handlers()` register a handler
that answers with our exact body, `{"error", "reason", "message"}`; without it FastAPI's default
handler wraps the same body as `{"detail": {...}}` (status and headers unchanged). In websocket routes
the dependencies raise `WebSocketException` (close code 1008, or 1013 when the token cannot be checked
now: keys or TokenReview unavailable).

In tests, `workload_client(app, issuer, namespace, service_account)` (from `integrations.starlette`) is a
`TestClient` that calls as that workload, with a token minted by a `k8s_jwt_auth.testing.FakeIssuer` for the
audiences of the verifier `install()` gave the app.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

try:
    from fastapi import Depends, HTTPException, WebSocketException
    from fastapi.security import APIKeyHeader, HTTPBearer
    from starlette.applications import Starlette
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import Response
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError('k8s_jwt_auth.integrations.fastapi needs FastAPI: pip install "k8s-jwt-auth[fastapi]"') from exc

from k8s_jwt_auth import AlreadyInstalled, AuthError, ConfigurationError, Policy, Rule, TokenVerifier, VerifierConfig
from k8s_jwt_auth.gate import AUTHENTICATE_ONLY, Gate, Outcome, refuse
from k8s_jwt_auth.http import error_response, missing_token
from k8s_jwt_auth.identity import WorkloadIdentity

from ._asgi_common import STATE_KEY, header_credentials, websocket_close_code
from ._common import build_verifier
from .starlette import K8sJWTAuthMiddleware, WorkloadUser, auth_error_response, keyword_options, workload_client

__all__ = [
    "STATE_KEY",
    "K8sJWTAuthMiddleware",
    "OptionalWorkload",
    "Workload",
    "WorkloadHTTPException",
    "WorkloadUser",
    "add_exception_handlers",
    "auth_exception_handler",
    "install",
    "require_workload",
    "workload_client",
]

logger = logging.getLogger("k8s_jwt_auth.integrations.fastapi")

SCHEME_NAME = "KubernetesServiceAccountToken"
_GUARD_ATTR = "_k8s_jwt_auth_guard"
_GATE_KEY = "k8s_jwt_auth_gate"  # app.state attribute: the Gate around app.state.k8s_jwt_auth
_SCHEME_DESCRIPTION = "A Kubernetes projected service-account token (`Authorization: Bearer <token>`)."
_NO_VERIFIER = ("no TokenVerifier for this app: call k8s_jwt_auth.integrations.fastapi.install(app, verifier) "
                "at startup, or pass verifier= to require_workload()")


class WorkloadHTTPException(HTTPException):
    """The `HTTPException` the dependencies raise: 401, 403 or 503 with our headers and body as `detail`.

    Attributes:
        error: the `AuthError` that refused the request.
        realm: the realm of the `WWW-Authenticate` challenge.
    """

    def __init__(self, error: AuthError, realm: str | None = None) -> None:
        rendered = error_response(error, realm)
        headers = {name: value for name, value in rendered.headers if name.lower() != "content-type"}
        super().__init__(rendered.status, detail=rendered.body, headers=headers)
        self.error = error
        self.realm = realm


async def auth_exception_handler(request: Request, exc: Exception) -> Response:
    """Render `WorkloadHTTPException` and any `AuthError` raised in a route as our exact JSON response."""
    if isinstance(exc, WorkloadHTTPException):
        return auth_error_response(exc.error, exc.realm)
    if isinstance(exc, AuthError):
        return auth_error_response(exc)
    raise exc  # pragma: no cover - only registered for the two classes above


def add_exception_handlers(app: Starlette) -> None:
    """Register `auth_exception_handler` for `WorkloadHTTPException` and `AuthError` on `app`."""
    app.add_exception_handler(WorkloadHTTPException, auth_exception_handler)
    app.add_exception_handler(AuthError, auth_exception_handler)


def install(app: Starlette, verifier: TokenVerifier | VerifierConfig | None = None) -> TokenVerifier:
    """Make `verifier` the app's verifier (`app.state.k8s_jwt_auth`) and add our exception handlers.

    Args:
        app: the FastAPI (or Starlette) app.
        verifier: a `TokenVerifier`, a `VerifierConfig`, or `None` for `VerifierConfig.from_env()`.

    Returns:
        The verifier, to share with `K8sJWTAuthMiddleware` if you add it too.

    Raises:
        ConfigurationError: for missing or invalid `K8S_JWT_AUTH_*` variables.
        AlreadyInstalled: when the app already has a verifier from `install` (a `RuntimeError`, as Flask's
            `init_app` twice and a second middleware raise).
    """
    if getattr(app.state, STATE_KEY, None) is not None:
        raise AlreadyInstalled("this app", "call install(app, ...) once")
    built = build_verifier(verifier)
    setattr(app.state, STATE_KEY, built)
    setattr(app.state, _GATE_KEY, Gate(built, logger=logger))
    add_exception_handlers(app)
    return built


class _Guard:
    """The work behind one `require_workload(...)` dependency: a route-layer gate (docs/policy-model.md)."""

    __slots__ = ("gate", "header", "optional", "policy", "realm")

    def __init__(self, *, policy: Policy | None, verifier: TokenVerifier | None, optional: bool, header: bytes,
                 realm: str | None) -> None:
        self.policy = policy  # the route's own rules; None: the service policy
        self.gate = None if verifier is None else Gate(verifier, logger=logger)
        self.optional = optional
        self.header = header
        self.realm = realm

    async def __call__(self, conn: HTTPConnection) -> WorkloadIdentity | None:
        scope = conn.scope
        user = scope.get("user")
        path, method, transport = scope.get("path", ""), scope.get("method"), scope["type"]
        if isinstance(user, WorkloadUser):  # an enforcing layer admitted it: only the route's own rules are new
            if self.policy is None:
                return user.workload
            gate = self._gate(conn, user.gate)
            if gate is None:
                raise RuntimeError(_NO_VERIFIER)
            outcome = gate.authorize(user.workload, policy=self.policy, path=path, method=method, transport=transport)
            return self._result(scope, outcome)
        credentials = header_credentials(scope, self.header)
        gate = self._gate(conn, None)
        if gate is None:  # no verifier anywhere: fine while there is nothing to verify
            if credentials is not None:
                raise RuntimeError(_NO_VERIFIER)
            if self.optional:
                return None
            return self._result(scope, refuse(missing_token(), logger=logger, path=path, method=method,
                                              transport=transport))
        policy = self.policy
        if policy is None and _route_has_own_rules(conn):
            policy = AUTHENTICATE_ONLY  # another gate of this route applies the route's rules
        outcome = await gate.aadmit(credentials, policy=policy, optional=self.optional, path=path, method=method,
                                    transport=transport)
        return self._result(scope, outcome)

    def _result(self, scope: Any, outcome: Outcome) -> WorkloadIdentity | None:
        if outcome.error is None:
            return outcome.workload
        if scope["type"] == "websocket":
            raise WebSocketException(websocket_close_code(outcome.error), outcome.error.reason)
        raise WorkloadHTTPException(outcome.error, self.realm)

    def _gate(self, conn: HTTPConnection, middleware: object) -> Gate | None:
        """This dependency's gate, else the app's (`install`), else the middleware's that admitted the request."""
        if self.gate is not None:
            return self.gate
        state = conn.app.state
        verifier = getattr(state, STATE_KEY, None)
        if verifier is None:
            return middleware if isinstance(middleware, Gate) else None
        gate = getattr(state, _GATE_KEY, None)
        if not isinstance(gate, Gate) or gate.verifier is not verifier:  # app.state.k8s_jwt_auth set by hand
            gate = Gate(verifier, logger=logger)
            setattr(state, _GATE_KEY, gate)
        return gate


_ROUTE_RULES_ATTR = "_k8s_jwt_auth_own_rules"  # cached on the route (APIRoute is not hashable)


def _route_has_own_rules(conn: HTTPConnection) -> bool:
    """Whether one of the route's dependencies is a require_workload(...) gate with rules of its own."""
    route = conn.scope.get("route")
    known = getattr(route, _ROUTE_RULES_ATTR, None)
    if known is None:
        dependant = getattr(route, "dependant", None)
        if dependant is None:
            return False
        known = _has_own_rules(dependant, depth=0)
        setattr(route, _ROUTE_RULES_ATTR, known)
    return bool(known)


def _has_own_rules(dependant: Any, depth: int) -> bool:
    guard = getattr(getattr(dependant, "call", None), _GUARD_ATTR, None)
    if isinstance(guard, _Guard) and guard.policy is not None:
        return True
    return depth < 32 and any(_has_own_rules(sub, depth + 1) for sub in getattr(dependant, "dependencies", ()))


class _BearerGuard(HTTPBearer):
    """A `require_workload(...)` dependency reading `Authorization`: the guard and the OpenAPI Bearer scheme in one.

    Being the security scheme itself (not a dependency with the scheme as a sub-dependency) saves FastAPI one level
    of dependency resolution per request. FastAPI calls it with the connection (`HTTPConnection`, so websocket routes
    resolve it too: FastAPI before 0.144 called `HTTPBearer.__call__` with a `Request`, which they do not have).
    """

    def __init__(self, guard: _Guard, **scheme: Any) -> None:
        super().__init__(**scheme)
        self.guard = guard
        setattr(self, _GUARD_ATTR, guard)  # found in a route's dependencies by _route_has_own_rules

    async def __call__(self, conn: HTTPConnection) -> WorkloadIdentity | None:  # type: ignore[override]
        return await self.guard(conn)


class _HeaderGuard(APIKeyHeader):
    """Like `_BearerGuard`, for a header other than `Authorization` (an API-key header scheme in OpenAPI)."""

    def __init__(self, guard: _Guard, **scheme: Any) -> None:
        super().__init__(**scheme)
        self.guard = guard
        setattr(self, _GUARD_ATTR, guard)

    async def __call__(self, conn: HTTPConnection) -> WorkloadIdentity | None:  # type: ignore[override]
        return await self.guard(conn)


# FastAPI resolves string annotations in the callable's module globals, which an instance does not have: give
# `__call__` its real annotations (this module postpones them).
for _cls in (_BearerGuard, _HeaderGuard):
    _cls.__call__.__annotations__ = {"conn": HTTPConnection, "return": WorkloadIdentity | None}
del _cls


def _dependency(guard: _Guard, header: str) -> _BearerGuard | _HeaderGuard:
    if header.lower() == "authorization":
        return _BearerGuard(guard, auto_error=False, bearerFormat="JWT", scheme_name=SCHEME_NAME,
                            description=_SCHEME_DESCRIPTION)
    return _HeaderGuard(guard, name=header, auto_error=False, scheme_name=SCHEME_NAME,
                        description=f"`{header}: Bearer <token>` with a Kubernetes service-account token.")


def require_workload(
    *rules: str | Rule,
    policy: Policy | None = None,
    verifier: TokenVerifier | VerifierConfig | None = None,
    optional: bool | str | None = False,
    header: str | None = None,
    realm: str | None = None,
) -> Callable[..., Awaitable[WorkloadIdentity | None]]:
    """A dependency that yields the verified, policy-checked `WorkloadIdentity` of the request.

    ```python
    Payments = Annotated[WorkloadIdentity, Depends(require_workload("payments/*", "!payments/batch"))]
    ```

    Args:
        *rules: compact policy rules for this route (`payments/*`, `!kube-system/*`, `frontend/web/web-*`).
        policy: a `Policy` for this route, instead of `rules` (e.g. `Policy.parse(..., dry_run=True)`).
            With neither, the verifier's own policy applies (`allow` / `K8S_JWT_AUTH_ALLOW`).
        verifier: the verifier to use; default the app's (`install(app, verifier)`).
        optional: yield `None` for requests without bearer credentials (a bad token is still refused).
        header: the header holding `Bearer <token>`; `None`: `Authorization`.
        realm: the `realm` of `WWW-Authenticate` challenges.

    The route layer of the policy model (docs/policy-model.md): the route's rules when given, otherwise the service
    policy; behind `K8sJWTAuthMiddleware` the request is not verified twice and only the route's rules are new.
    Several gates on one route (`Workload` beside `Depends(require_workload("payments/*"))`) apply the route's
    rules, never the service policy over them.

    Returns:
        The dependency (an async callable); it is also the route's HTTP Bearer security scheme in the OpenAPI
        schema (an API-key header scheme for another `header`).

    Raises:
        ConfigurationError: for rules that do not parse, or both `rules` and `policy`.
    """
    if rules and policy is not None:
        raise ConfigurationError("give policy rules either as *rules or as policy=, not both")
    options = keyword_options(header=header, optional=optional, realm=realm)
    guard = _Guard(policy=Policy(rules) if rules else policy,
                   verifier=None if verifier is None else build_verifier(verifier),
                   optional=options.optional, header=options.header_key, realm=options.realm)
    return _dependency(guard, options.header)


Workload = Annotated[WorkloadIdentity, Depends(require_workload())]
"""A route parameter annotation: the verified workload, checked against the verifier's policy."""

OptionalWorkload = Annotated[WorkloadIdentity | None, Depends(require_workload(optional=True))]
"""Like `Workload`, but `None` for requests without bearer credentials."""
