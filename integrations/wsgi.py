"""Any WSGI app (Falcon, Pyramid, Bottle, a bare app...): authenticate Kubernetes workloads with a WSGI middleware.

Imports no web framework, and never needs an event loop (`Gate.admit`: a key fetch blocks only the calling worker
thread, as WSGI does).

```python
from k8s_jwt_auth.integrations.wsgi import K8sJWTAuthMiddleware

app = K8sJWTAuthMiddleware(app, verifier, exempt_paths=["/healthz"])

# in the app: the verified WorkloadIdentity (None on exempt paths and anonymous requests in optional mode)
workload = environ["k8s_jwt_auth.workload"]     # Falcon: req.env["k8s_jwt_auth.workload"]
```

The identity is stored at `environ["k8s_jwt_auth.workload"]` on every request it lets through (`None` when there
is no workload). The token is read from `HTTP_AUTHORIZATION` (the `header=` option, as a CGI variable); a WSGI
server joins a repeated header into one value (`Bearer a, Bearer b`), which is refused as `malformed`, as Flask
and Django do.

Paths: exempt paths are matched against `PATH_INFO`, the path *inside* the app (like Flask's routes and
Starlette's `route_path`): mounted at `/api` (`SCRIPT_NAME=/api`), `exempt_paths=["/healthz"]` exempts
`/api/healthz`. Logs and audit records carry the full path, `SCRIPT_NAME + PATH_INFO`. Both are decoded as
UTF-8, as routers see them (PEP 3333 hands them over as Latin-1).

Refusals are the same as every adapter's: 401 (`WWW-Authenticate: Bearer ...`, RFC 6750) for missing or invalid
tokens, 403 for policy denials, 503 with `Retry-After` (and no challenge) when the token cannot be checked now; the
body is `{"error", "reason", "message"}`, the app is not called. Tokens are never logged: logs (logger
`k8s_jwt_auth.integrations.wsgi`) show the token's SHA-256 fingerprint; every decision writes one audit record.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING

from k8s_jwt_auth import AlreadyInstalled, AuthError, Policy, TokenVerifier, VerifierConfig
from k8s_jwt_auth.gate import Gate
from k8s_jwt_auth.http import error_response

from ._common import build_verifier, keyword_options

if TYPE_CHECKING:  # typeshed's WSGI types, as werkzeug and Falcon annotate with them
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["ENVIRON_KEY", "K8sJWTAuthMiddleware"]

logger = logging.getLogger("k8s_jwt_auth.integrations.wsgi")

ENVIRON_KEY = "k8s_jwt_auth.workload"
"""The environ key holding the verified `WorkloadIdentity` (or `None`)."""

class K8sJWTAuthMiddleware:
    """WSGI middleware that verifies `Authorization: Bearer <token>` on every request.

    The enforcing layer of the policy model (docs/policy-model.md): every non-exempt request passes the service
    policy. Stores the workload at `environ["k8s_jwt_auth.workload"]`.

    Args:
        app: the WSGI app to protect.
        verifier: a `TokenVerifier`, a `VerifierConfig`, or `None` to build one from `K8S_JWT_AUTH_*`
            environment variables (`VerifierConfig.from_env()`).
        exempt_paths: paths let through unauthenticated (workload `None`): exact (`/healthz`) or prefixes
            (`/public/*`), matched against `PATH_INFO` (the path inside the app, without `SCRIPT_NAME`).
        optional: let requests *without* bearer credentials through (workload `None`); a bad token is still
            refused.
        header: the header holding `Bearer <token>` (e.g. `X-Forwarded-Authorization` behind a proxy).
        realm: the `realm` of `WWW-Authenticate` challenges.
        policy: the service policy every authenticated request must pass; default `verifier.policy`
            (`allow`/`K8S_JWT_AUTH_ALLOW`). A dry-run policy logs would-be denials and lets them through.

    The options mean what `HEADER`, `EXEMPT_PATHS`, `OPTIONAL` and `REALM` mean for every adapter
    (`k8s_jwt_auth.options`); `None` means "not set".

    Raises:
        ConfigurationError: for invalid settings or missing environment variables (at construction).
        AlreadyInstalled: `app` is already wrapped by a `K8sJWTAuthMiddleware`.
    """

    def __init__(
        self,
        app: WSGIApplication,
        verifier: TokenVerifier | VerifierConfig | None = None,
        *,
        exempt_paths: Sequence[str] | str | None = (),
        optional: bool | str | None = False,
        header: str | None = "authorization",
        realm: str | None = None,
        policy: Policy | None = None,
    ) -> None:
        _refuse_second(app)
        self.app = app
        self.options = keyword_options(header=header, exempt_paths=exempt_paths, optional=optional, realm=realm)
        self.gate = Gate(build_verifier(verifier), policy=policy, logger=logger)
        self.verifier, self.policy = self.gate.verifier, self.gate.policy
        self.optional, self.realm = self.options.optional, self.options.realm
        self._exempt = self.options.exempt_paths
        self._environ_key = self.options.meta_key

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = _decoded(environ.get("PATH_INFO", ""))
        if self._exempt and self._exempt(path):
            environ[ENVIRON_KEY] = None
            return self.app(environ, start_response)
        outcome = self.gate.admit(environ.get(self._environ_key), optional=self.optional,
                                  path=_decoded(environ.get("SCRIPT_NAME", "")) + path,
                                  method=environ.get("REQUEST_METHOD"))
        if outcome.error is not None:
            return self._reject(start_response, outcome.error)
        environ[ENVIRON_KEY] = outcome.workload
        return self.app(environ, start_response)

    def _reject(self, start_response: StartResponse, exc: AuthError) -> list[bytes]:
        rendered = error_response(exc, self.realm)
        body = rendered.json_bytes()
        start_response(f"{rendered.status} {HTTPStatus(rendered.status).phrase}",
                       [*rendered.headers, ("Content-Length", str(len(body)))])
        return [body]


def _decoded(value: str) -> str:
    """A PEP 3333 path (UTF-8 bytes carried as Latin-1 characters) as text; anything else unchanged."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a server that already decoded it
        return value


def _refuse_second(app: object) -> None:
    """Raise `AlreadyInstalled` when `app` (or an app it wraps, through `.app`) is our middleware."""
    node: object = app
    for _ in range(64):  # middleware stacks are short; bounded all the same
        if isinstance(node, K8sJWTAuthMiddleware):
            raise AlreadyInstalled("this WSGI app", "wrap the app in K8sJWTAuthMiddleware once")
        node = getattr(node, "app", None)
        if node is None:
            return
