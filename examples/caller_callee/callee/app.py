"""The callee: a FastAPI service that only answers workloads `K8S_JWT_AUTH_ALLOW` lets in.

```sh
K8S_JWT_AUTH_ISSUER=https://kubernetes.default.svc.cluster.local \
K8S_JWT_AUTH_AUDIENCES=callee \
K8S_JWT_AUTH_ALLOW=demo/caller \
uvicorn --app-dir examples/caller_callee/callee app:app
```

In the cluster (see `../k8s/callee.yaml`) it also sets `K8S_JWT_AUTH_CA_FILE` and `K8S_JWT_AUTH_TOKEN_FILE`
to the pod's service-account mount, so that it can fetch the issuer's discovery document and JWKS.

* `GET /healthz` — no authentication, 200 `{"status": "ok"}`.
* `GET /hello` — 200 `{"hello": "demo/caller", "workload": WorkloadIdentity.to_dict()}` for an allowed caller;
  401 for a missing or invalid token (wrong audience, expired...), 403 when the policy denies the caller,
  503 when the issuer's keys cannot be fetched. Error bodies are `{"error", "reason", "message"}`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI

from k8s_jwt_auth import TokenVerifier, VerifierConfig
from k8s_jwt_auth.integrations.fastapi import Workload, install

__all__ = ["app", "create_app"]


def create_app(verifier: TokenVerifier | None = None) -> FastAPI:
    """Build the callee; without `verifier`, one is built from `K8S_JWT_AUTH_*` environment variables.

    Raises:
        ConfigurationError: when the environment does not describe a valid verifier.
    """
    app = FastAPI(title="k8s-jwt-auth example: callee")
    install(app, verifier if verifier is not None else TokenVerifier(VerifierConfig.from_env()))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/hello")
    async def hello(workload: Workload) -> dict[str, Any]:
        return {"hello": f"{workload.namespace}/{workload.service_account}", "workload": workload.to_dict()}

    return app


# k8s-jwt-auth, like any library, prints nothing by itself: show its refusals (audit records at WARNING, 503s at
# ERROR) and key-fetch failures in `kubectl logs`. A no-op when logging is already configured (e.g. under pytest).
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
app = create_app()
