"""`K8sJWTAuthMiddleware`: verify `Authorization: Bearer <token>` on every request, sync or async.

```python
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # "django.contrib.sessions.middleware.SessionMiddleware",
    # "django.contrib.auth.middleware.AuthenticationMiddleware",   # optional; ours must come after it
    "k8s_jwt_auth.integrations.django.middleware.K8sJWTAuthMiddleware",
]
```

On success it sets `request.workload` (the `WorkloadIdentity`), `request.user` (a `WorkloadUser`, or a user row
with `MAP_TO_USERS`) and `request.auser()`. Exempt paths, and requests without bearer credentials in `OPTIONAL`
mode, get `request.workload = None` and keep the `request.user` set by `AuthenticationMiddleware` (or
`AnonymousUser` without it). It needs neither sessions nor a database.

Refusals: 401 with `WWW-Authenticate: Bearer ...` (RFC 6750; no error code when the token is missing) for missing,
malformed or invalid tokens, 403 when the policy (`ALLOW`) denies, 503 with `Retry-After` when no keys are
available; the JSON body is `{"error", "reason", "message"}`. A dry-run policy logs would-be denials and lets them
through. Only `AuthError` is caught. Logs (logger `k8s_jwt_auth.integrations.django`) show the token's
fingerprint, never the token.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

try:
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
    from django.contrib.auth.models import AnonymousUser
    from django.http import HttpRequest, HttpResponse
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError('k8s_jwt_auth.integrations.django needs Django: pip install "k8s-jwt-auth[django]"') from exc

from k8s_jwt_auth import AuthError, Decision, PolicyDenied
from k8s_jwt_auth._http import bearer_token, error_response, missing_token
from k8s_jwt_auth.identity import WorkloadIdentity

from .._common import check_policy, log_admission, log_rejection
from .conf import LoadedSettings, get_settings, sensitive_token

__all__ = ["K8sJWTAuthMiddleware", "auth_error_response", "log_admitted", "log_refusal", "read_token"]

logger = logging.getLogger("k8s_jwt_auth.integrations.django")


def read_token(request: HttpRequest, meta_key: str = "HTTP_AUTHORIZATION") -> str | None:
    """The bearer token of a request; `None` when it has no bearer credentials.

    Raises:
        InvalidToken: `malformed` (not `Bearer <token>`, or the header is repeated), `too_large`.
    """
    return bearer_token(request.META.get(meta_key))


def auth_error_response(exc: AuthError, realm: str | None = None) -> HttpResponse:
    """Render an `AuthError` as an `HttpResponse`: status, `WWW-Authenticate`/`Retry-After`, JSON body."""
    rendered = error_response(exc, realm)
    response = HttpResponse(rendered.json_bytes(), status=rendered.status)
    for name, value in rendered.headers:
        response[name] = value
    return response


def log_refusal(request: HttpRequest, exc: AuthError, token: str | None = None) -> None:
    """Log a refused request: status, reason, path and the token's fingerprint (never the token)."""
    log_rejection(logger, exc, path=request.path, token=token, method=request.method)


def log_admitted(request: HttpRequest, workload: WorkloadIdentity, decision: Decision | None) -> None:
    """Log a request let through: a debug line and its audit record (`allowed` or `dry_run_denied`)."""
    log_admission(logger, workload, decision, path=request.path, method=request.method)


def _set_user(request: HttpRequest, user: Any) -> None:
    async def auser() -> Any:
        return user

    request.user = user
    request.auser = auser


class K8sJWTAuthMiddleware:
    """Authenticates Kubernetes workloads; configured by `settings.K8S_JWT_AUTH` (see `conf`).

    Works under WSGI and ASGI: the sync and async paths share every step but the I/O (`verify` vs
    `verify_async`, `user_for_workload` vs `auser_for_workload`).

    Raises:
        ImproperlyConfigured: (at startup) the app is not installed or `K8S_JWT_AUTH` is invalid.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        self.settings = get_settings()
        _ = self.settings.loaded  # fail fast on invalid settings, when the server loads the app

    @sensitive_token
    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        conf, k8s_token = self.settings.loaded, None
        try:
            k8s_token = self._token(request, conf)
            if k8s_token is not None:
                workload, decision = self._admit(conf, conf.verifier.verify(k8s_token))
                self._attach(request, workload, decision, conf.backend.user_for_workload(request, workload))
        except AuthError as exc:
            return self._refuse(request, conf, exc, k8s_token)
        return self.get_response(request)

    @sensitive_token
    async def __acall__(self, request: HttpRequest) -> Any:
        conf, k8s_token = self.settings.loaded, None
        try:
            k8s_token = self._token(request, conf)
            if k8s_token is not None:
                workload, decision = self._admit(conf, await conf.verifier.verify_async(k8s_token))
                self._attach(request, workload, decision,
                             await conf.backend.auser_for_workload(request, workload))
        except AuthError as exc:
            return self._refuse(request, conf, exc, k8s_token)
        response: Awaitable[Any] = self.get_response(request)
        return await response

    # -- the shared steps -------------------------------------------------------------------------

    @staticmethod
    def _token(request: HttpRequest, conf: LoadedSettings) -> str | None:
        """The token to verify, or `None` when the request goes on without one (exempt path, optional mode).

        Raises:
            InvalidToken: `missing_token`, `malformed`, `too_large`.
        """
        request.workload = None
        if conf.exempt and conf.exempt(request.path_info):
            token = None
        else:
            token = read_token(request, conf.meta_key)
            if token is None and not conf.optional:
                raise missing_token()
        if token is None and not hasattr(request, "user"):
            _set_user(request, AnonymousUser())
        return token

    @staticmethod
    def _admit(conf: LoadedSettings, workload: WorkloadIdentity) -> tuple[WorkloadIdentity, Decision | None]:
        return workload, check_policy(workload, conf.policy, logger)

    @staticmethod
    def _attach(request: HttpRequest, workload: WorkloadIdentity, decision: Decision | None, user: Any) -> None:
        if user is None:
            raise PolicyDenied(f"workload {workload.namespace}/{workload.service_account} has no active user",
                               workload=workload)
        _set_user(request, user)
        request.workload = workload
        log_admitted(request, workload, decision)

    @staticmethod
    def _refuse(request: HttpRequest, conf: LoadedSettings, exc: AuthError, token: str | None) -> HttpResponse:
        log_refusal(request, exc, token)
        return auth_error_response(exc, conf.realm)
