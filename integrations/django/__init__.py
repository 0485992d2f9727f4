"""Django: authenticate Kubernetes workloads with a middleware, an auth backend, view guards and DRF classes.

```python
# settings.py
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "k8s_jwt_auth.integrations.django",
]
MIDDLEWARE = [
    # ... after AuthenticationMiddleware, if you use it
    "k8s_jwt_auth.integrations.django.middleware.K8sJWTAuthMiddleware",
]
K8S_JWT_AUTH = {
    "ISSUER": "https://kubernetes.default.svc.cluster.local",
    "AUDIENCES": ["payments-api"],
    "ALLOW": ["frontend/*", "!kube-system/*"],
    "EXEMPT_PATHS": ["/healthz"],
}

# views.py
def whoami(request):
    return JsonResponse(request.workload.to_dict())   # request.user is a WorkloadUser
```

Modules (import them by path; this package itself imports nothing, so it is safe in `INSTALLED_APPS`):

* `apps` — `K8sJWTAuthConfig`: owns the settings holder, registers the system checks.
* `conf` — `AuthSettings`, the lazy, validated view of `settings.K8S_JWT_AUTH`; `get_settings()`.
* `backends` — `K8sJWTAuthBackend` (`authenticate(request, k8s_token=...)`) and `WorkloadUser`.
* `middleware` — `K8sJWTAuthMiddleware`: sets `request.user` and `request.workload`, answers 401/403/503.
* `decorators` — `@workload_required(*rules)` and `WorkloadRequiredMixin` for per-view policies.
* `checks` — system checks `k8s_jwt_auth.E001`... and `W001`...
* `drf` — Django REST framework: `K8sJWTAuthentication`, `WorkloadPermission`, `workload_permission()`,
  `workload_api_client()` for tests.
* `testing` — test clients that call as a workload: `workload_client()`, `async_workload_client()`,
  `workload_headers()`.

Extra: `pip install "k8s-jwt-auth[django]"` (and `[drf]` for the REST framework classes).
"""

from __future__ import annotations

try:
    import django  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError('k8s_jwt_auth.integrations.django needs Django: pip install "k8s-jwt-auth[django]"') from exc

__all__: list[str] = []
