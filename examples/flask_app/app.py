"""Example Flask service protected by k8s-jwt-auth, configured only from `K8S_JWT_AUTH_*` variables.

```sh
K8S_JWT_AUTH_ISSUER=https://kubernetes.default.svc.cluster.local \
K8S_JWT_AUTH_AUDIENCES=payments-api \
K8S_JWT_AUTH_ALLOW='payments/*,!kube-system/*' \
gunicorn --chdir examples/flask_app app:app
```

* `GET /healthz` — no authentication, 200.
* `GET /whoami` — a verified workload allowed by `K8S_JWT_AUTH_ALLOW`: 200 with `WorkloadIdentity.to_dict()`;
  401 (`WWW-Authenticate: Bearer ...`) for a missing/invalid token, 403 when the policy denies,
  503 (`Retry-After`) when keys are unavailable. Error bodies are `{"error", "reason", "message"}`.

The verifier is built at import time, so missing or invalid settings fail fast with a `ConfigurationError`.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from k8s_jwt_auth import TokenVerifier, VerifierConfig
from k8s_jwt_auth.integrations.flask import K8sJWTAuth, current_workload, workload_required

__all__ = ["app", "create_app"]


def create_app(verifier: TokenVerifier | None = None) -> Flask:
    """Build the app; without `verifier`, one is built from `K8S_JWT_AUTH_*` environment variables.

    `/whoami` applies the verifier's policy (`K8S_JWT_AUTH_ALLOW`).

    Raises:
        ConfigurationError: when the environment does not describe a valid verifier.
    """
    app = Flask(__name__)
    K8sJWTAuth(app, verifier=verifier if verifier is not None else VerifierConfig.from_env())

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness: no authentication."""
        return {"status": "ok"}

    @app.get("/whoami")
    @workload_required()
    def whoami() -> dict[str, Any]:
        """The caller's identity, with the CLI's identity keys."""
        return current_workload.to_dict()

    return app


app = create_app()
