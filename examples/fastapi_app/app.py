"""Example FastAPI service protected by k8s-jwt-auth, configured only from `K8S_JWT_AUTH_*` variables.

```sh
K8S_JWT_AUTH_ISSUER=https://kubernetes.default.svc.cluster.local \
K8S_JWT_AUTH_AUDIENCES=payments-api \
K8S_JWT_AUTH_ALLOW='payments/*,!kube-system/*' \
uvicorn --app-dir examples/fastapi_app app:app
```

* `GET /healthz` — no authentication, 200.
* `GET /whoami` — a verified workload allowed by `K8S_JWT_AUTH_ALLOW`: 200 with `WorkloadIdentity.to_dict()`;
  401 (`WWW-Authenticate: Bearer ...`) for a missing/invalid token, 403 when the policy denies,
  503 (`Retry-After`) when keys are unavailable. Error bodies are `{"error", "reason", "message"}`.

The verifier is built at import time, so missing or invalid settings fail fast with a `ConfigurationError`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from k8s_jwt_auth import TokenVerifier, VerifierConfig
from k8s_jwt_auth.integrations.fastapi import Workload, install

__all__ = ["app", "create_app"]


def create_app(verifier: TokenVerifier | None = None) -> FastAPI:
    """Build the app; without `verifier`, one is built from `K8S_JWT_AUTH_*` environment variables.

    Raises:
        ConfigurationError: when the environment does not describe a valid verifier.
    """
    app = FastAPI(title="k8s-jwt-auth FastAPI example")
    install(app, verifier if verifier is not None else TokenVerifier(VerifierConfig.from_env()))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/whoami")
    async def whoami(workload: Workload) -> dict[str, Any]:
        return workload.to_dict()

    return app


app = create_app()
