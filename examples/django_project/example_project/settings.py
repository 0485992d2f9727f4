"""Settings of the example Django service, configured only from `K8S_JWT_AUTH_*` environment variables.

```sh
K8S_JWT_AUTH_ISSUER=https://kubernetes.default.svc.cluster.local \
K8S_JWT_AUTH_AUDIENCES=payments-api \
K8S_JWT_AUTH_ALLOW='payments/*,!kube-system/*' \
uvicorn --app-dir examples/django_project example_project.asgi:application
# WSGI: gunicorn --chdir examples/django_project example_project.wsgi:application
```

* `GET /healthz` — no authentication, 200.
* `GET /whoami` — a verified workload allowed by `K8S_JWT_AUTH_ALLOW`: 200 with `WorkloadIdentity.to_dict()`;
  401 (`WWW-Authenticate: Bearer ...`) for a missing/invalid token, 403 when the policy denies,
  503 (`Retry-After`) when keys are unavailable. Error bodies are `{"error", "reason", "message"}`.

Every `K8S_JWT_AUTH_<SUFFIX>` variable becomes the key `<SUFFIX>` of the `K8S_JWT_AUTH` dict (so
`K8S_JWT_AUTH_ISSUER` is `K8S_JWT_AUTH["ISSUER"]`). The middleware validates it when the server loads the
app: missing or invalid settings stop the server with an `ImproperlyConfigured` error naming the key.
No database is used: workloads are database-free `WorkloadUser`s.
"""

from __future__ import annotations

import os
import secrets

ENV_PREFIX = "K8S_JWT_AUTH_"

K8S_JWT_AUTH = {
    **{name.removeprefix(ENV_PREFIX): value for name, value in os.environ.items() if name.startswith(ENV_PREFIX)},
    "EXEMPT_PATHS": ["/healthz"],
}

# Nothing is signed (no sessions, no forms), so a per-process key is enough.
SECRET_KEY = secrets.token_urlsafe(50)
DEBUG = False
# A Kubernetes service is reached by many names (service, pod IP, ingress); the bearer token authenticates.
ALLOWED_HOSTS = ["*"]
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "k8s_jwt_auth.integrations.django",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "k8s_jwt_auth.integrations.django.middleware.K8sJWTAuthMiddleware",
]
ROOT_URLCONF = "example_project.urls"
ASGI_APPLICATION = "example_project.asgi.application"
WSGI_APPLICATION = "example_project.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}
