"""Example Starlette service protected by k8s-jwt-auth, configured only from `K8S_JWT_AUTH_*` variables.

```sh
K8S_JWT_AUTH_ISSUER=https://kubernetes.default.svc.cluster.local \
K8S_JWT_AUTH_AUDIENCES=payments-api \
K8S_JWT_AUTH_ALLOW='payments/*,!kube-system/*' \
uvicorn --app-dir examples/starlette_app app:app
```

* `GET /healthz` — no authentication, 200.
* `GET /whoami` — a verified workload allowed by `K8S_JWT_AUTH_ALLOW`: 200 with `WorkloadIdentity.to_dict()`;
  401 (`WWW-Authenticate: Bearer ...`) for a missing/invalid token, 403 when the policy denies,
  503 (`Retry-After`) when keys are unavailable. Error bodies are `{"error", "reason", "message"}`.

The verifier is built at import time, so missing or invalid settings fail fast with a `ConfigurationError`.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from k8s_jwt_auth import TokenVerifier, VerifierConfig
from k8s_jwt_auth.integrations.starlette import K8sJWTAuthMiddleware

__all__ = ["app", "create_app"]


async def healthz(request: Request) -> JSONResponse:
    """Liveness: no authentication."""
    return JSONResponse({"status": "ok"})


async def whoami(request: Request) -> JSONResponse:
    """The caller's identity, with the CLI's identity keys."""
    return JSONResponse(request.user.workload.to_dict())


def create_app(verifier: TokenVerifier | None = None) -> Starlette:
    """Build the app; without `verifier`, one is built from `K8S_JWT_AUTH_*` environment variables.

    The middleware applies the verifier's policy (`K8S_JWT_AUTH_ALLOW`) to every path but `/healthz`.

    Raises:
        ConfigurationError: when the environment does not describe a valid verifier.
    """
    verifier = verifier if verifier is not None else TokenVerifier(VerifierConfig.from_env())
    middleware = [Middleware(K8sJWTAuthMiddleware, verifier=verifier, exempt_paths=["/healthz"])]
    return Starlette(routes=[Route("/healthz", healthz), Route("/whoami", whoami)], middleware=middleware)


app = create_app()
