"""Any ASGI app (Litestar, Quart, a bare app...): authenticate Kubernetes workloads with a pure ASGI middleware.

Imports no web framework: it speaks raw ASGI, so it protects any ASGI 3 application.

```python
from k8s_jwt_auth.integrations.asgi import K8sJWTAuthMiddleware

app = K8sJWTAuthMiddleware(app, verifier, exempt_paths=["/healthz"])

# in a handler: the verified WorkloadIdentity (None on exempt paths and anonymous requests in optional mode)
workload = scope["state"]["workload"]           # Litestar, Starlette: request.state.workload
```

The identity is stored at `scope["state"]["workload"]` on every `http` and `websocket` connection it lets through
(`scope["state"]` is created when the server gave none). Servers hand each request its own shallow copy of the
lifespan state (ASGI spec; uvicorn, Hypercorn and Starlette's `TestClient` do), so nothing leaks from one request to
the next or into the lifespan state; the key is written on every connection, `None` when there is no workload, so a
handler never reads an identity it was not given.

Refusals are the same as every adapter's: 401 (`WWW-Authenticate: Bearer ...`, RFC 6750) for missing or invalid
tokens, 403 for policy denials, 503 with `Retry-After` (and no challenge) when the token cannot be checked now; the
body is `{"error", "reason", "message"}`. A refused websocket is closed before it is accepted, with code 1008 (policy
violation), or 1013 (try again later) when keys or TokenReview are unavailable; the close reason is the `reason`
code. Lifespan (and any other scope type) passes through untouched. Tokens are never logged: logs (logger
`k8s_jwt_auth.integrations.asgi`) show the token's SHA-256 fingerprint; every decision writes one audit record.

For Starlette and FastAPI use `k8s_jwt_auth.integrations.starlette.K8sJWTAuthMiddleware`: the same middleware,
which also sets `request.user` / `request.auth` (and FastAPI's dependencies reuse its workload).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar

from k8s_jwt_auth import AlreadyInstalled, AuthError, Policy, TokenVerifier, VerifierConfig
from k8s_jwt_auth.gate import Gate
from k8s_jwt_auth.http import error_response
from k8s_jwt_auth.identity import WorkloadIdentity

from ._asgi_common import ASGIApp, Receive, Scope, Send, header_credentials, route_path, websocket_close_code
from ._common import build_verifier, keyword_options

__all__ = ["STATE_WORKLOAD", "K8sJWTAuthMiddleware"]

logger = logging.getLogger("k8s_jwt_auth.integrations.asgi")

STATE_WORKLOAD = "workload"
"""The `scope["state"]` key holding the verified `WorkloadIdentity` (or `None`)."""


class K8sJWTAuthMiddleware:
    """Pure ASGI middleware that verifies `Authorization: Bearer <token>` on every HTTP and websocket request.

    The enforcing layer of the policy model (docs/policy-model.md): every non-exempt request passes the service
    policy. Stores the workload at `scope["state"]["workload"]`.

    Args:
        app: the ASGI app to protect.
        verifier: a `TokenVerifier`, a `VerifierConfig`, or `None` to build one from `K8S_JWT_AUTH_*`
            environment variables (`VerifierConfig.from_env()`).
        exempt_paths: paths let through unauthenticated (`workload` `None`): exact (`/healthz`) or prefixes
            (`/public/*`), matched against the path without the app's `root_path` (mount point).
        optional: let requests *without* bearer credentials through (`workload` `None`); a bad token is still
            refused.
        header: the header holding `Bearer <token>` (e.g. `X-Forwarded-Authorization` behind a proxy).
        realm: the `realm` of `WWW-Authenticate` challenges.
        policy: the service policy every authenticated request must pass; default `verifier.policy`
            (`allow`/`K8S_JWT_AUTH_ALLOW`). A dry-run policy logs would-be denials and lets them through.
        websocket: authenticate websocket connections too; with `False` they pass through untouched.

    The options mean what `HEADER`, `EXEMPT_PATHS`, `OPTIONAL` and `REALM` mean for every adapter
    (`k8s_jwt_auth.options`); `None` means "not set".

    Raises:
        ConfigurationError: for invalid settings or missing environment variables (at construction).
        AlreadyInstalled: `app` is already wrapped by a `K8sJWTAuthMiddleware` (or Starlette's
            `AuthenticationMiddleware` with our `WorkloadAuthBackend`).
    """

    _logger: ClassVar[logging.Logger] = logger
    _install_once: ClassVar[str] = "wrap the app in K8sJWTAuthMiddleware once"

    def __init__(
        self,
        app: ASGIApp,
        verifier: TokenVerifier | VerifierConfig | None = None,
        *,
        exempt_paths: Sequence[str] | str | None = (),
        optional: bool | str | None = False,
        header: str | None = "authorization",
        realm: str | None = None,
        policy: Policy | None = None,
        websocket: bool = True,
    ) -> None:
        self._refuse_second(app)
        self.app = app
        self.options = keyword_options(header=header, exempt_paths=exempt_paths, optional=optional, realm=realm)
        self.gate = Gate(build_verifier(verifier), policy=policy, logger=self._logger)
        self.verifier, self.policy = self.gate.verifier, self.gate.policy
        self.optional, self.realm = self.options.optional, self.options.realm
        self._exempt = self.options.exempt_paths
        self._key = self.options.header_key
        self._types = frozenset({"http", "websocket"} if websocket else {"http"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in self._types:
            await self.app(scope, receive, send)
            return
        if self._exempt and self._exempt(route_path(scope)):
            self._store(scope, None)
            await self.app(scope, receive, send)
            return
        outcome = await self.gate.aadmit(header_credentials(scope, self._key), optional=self.optional,
                                         path=scope.get("path", ""), method=scope.get("method"), transport=kind)
        if outcome.error is not None:
            await self._reject(scope, send, outcome.error)
            return
        self._store(scope, outcome.workload)
        await self.app(scope, receive, send)

    def _store(self, scope: Scope, workload: WorkloadIdentity | None) -> None:
        """Put the outcome where the app reads it: `scope["state"]["workload"]`."""
        state = scope.get("state")
        if state is None:
            scope["state"] = {STATE_WORKLOAD: workload}
        else:
            state[STATE_WORKLOAD] = workload

    async def _reject(self, scope: Scope, send: Send, exc: AuthError) -> None:
        if scope["type"] == "websocket":  # before accept: servers answer the handshake with a 403
            await send({"type": "websocket.close", "code": websocket_close_code(exc), "reason": exc.reason})
            return
        rendered = error_response(exc, self.realm)
        body = rendered.json_bytes()
        headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in rendered.headers]
        headers.append((b"content-length", str(len(body)).encode("latin-1")))
        await send({"type": "http.response.start", "status": rendered.status, "headers": headers})
        # more_body spelled out: ASGI's default, but some test clients (Quart >= 0.23) read the key without it
        await send({"type": "http.response.body", "body": body, "more_body": False})

    @classmethod
    def _refuse_second(cls, app: object) -> None:
        """Raise `AlreadyInstalled` when `app` (or an app it wraps, through `.app`) already authenticates workloads."""
        node: object = app
        for _ in range(64):  # middleware stacks are short; bounded all the same
            if cls._authenticates(node):
                raise AlreadyInstalled("this ASGI app", cls._install_once)
            node = getattr(node, "app", None)
            if node is None:
                return

    @staticmethod
    def _authenticates(node: object) -> bool:
        """Whether `node` is one of our layers: this middleware (Starlette's included), or an authentication
        middleware whose `backend` holds one of our gates (Starlette's `AuthenticationMiddleware` with
        `WorkloadAuthBackend`)."""
        return isinstance(node, K8sJWTAuthMiddleware) or isinstance(getattr(getattr(node, "backend", None), "gate",
                                                                            None), Gate)
