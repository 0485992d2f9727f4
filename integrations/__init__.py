"""Framework adapters for k8s-jwt-auth. Import the one you use; this package imports none of them.

* `k8s_jwt_auth.integrations.starlette` — pure ASGI `K8sJWTAuthMiddleware`, `WorkloadAuthBackend` for
  Starlette's `AuthenticationMiddleware`, `WorkloadUser` (`request.user.workload`), `workload_client(app, issuer,
  ...)` (a `TestClient` that calls as a workload). Extra: `[starlette]`.
* `k8s_jwt_auth.integrations.fastapi` — `require_workload(...)` dependencies, the `Workload` annotation,
  `install(app, verifier)`, and the same `workload_client`. Extra: `[fastapi]`.
* `k8s_jwt_auth.integrations.flask` — the `K8sJWTAuth` extension (`app.config` settings, enforcing mode),
  `current_workload`, `@workload_required(...)`, `K8sJWTAuthClient`/`workload_client` for tests. Extra: `[flask]`.
* `k8s_jwt_auth.integrations.django` — a Django app: `K8S_JWT_AUTH` settings with system checks,
  `K8sJWTAuthMiddleware` (`request.workload`), `K8sJWTAuthBackend`, `@workload_required(...)`, and
  `drf.K8sJWTAuthentication`/`WorkloadPermission` for Django REST framework, and test clients in `testing`.
  Extras: `[django]`, `[drf]`.
* `k8s_jwt_auth.integrations.grpc` — `K8sJWTAuthInterceptor` (`grpc.server`) and `AioK8sJWTAuthInterceptor`
  (`grpc.aio.server`) with per-method `rules=`, `current_workload()`. Extra: `[grpc]`.
* `k8s_jwt_auth.integrations.asgi` — `K8sJWTAuthMiddleware` for any ASGI app (Litestar, Quart, a bare app): the
  identity at `scope["state"]["workload"]`. No extra: it imports no framework.
* `k8s_jwt_auth.integrations.wsgi` — `K8sJWTAuthMiddleware` for any WSGI app (Falcon, Pyramid, Bottle, a bare app):
  the identity at `environ["k8s_jwt_auth.workload"]`. No extra.

Each adapter only reads the token from the request, passes it through the shared pipeline
(`k8s_jwt_auth.gate.Gate`: verify, policy, one audit record), stores the identity where the framework expects it
and renders an `AuthError` as the framework's response (or gRPC status).
"""

from __future__ import annotations

__all__: list[str] = []
