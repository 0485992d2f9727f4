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
malformed or invalid tokens, 403 when the policy (`ALLOW`) denies, 503 with `Retry-After` when the token cannot be
checked now (keys or TokenReview unavailable); the JSON body is `{"error", "reason", "message"}`. A dry-run policy
logs would-be denials and lets them through. Only `AuthError` is caught. Logs (logger
`k8s_jwt_auth.integrations.django`) show the token's fingerprint, never the token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

try:
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
    from django.conf import settings
    from django.contrib.auth.models import AnonymousUser
    from django.http import HttpRequest, HttpResponse
    from django.utils.module_loading import import_string
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError('k8s_jwt_auth.integrations.django needs Django: pip install "k8s-jwt-auth[django]"') from exc

from k8s_jwt_auth import AlreadyInstalled, AuthError, Decision, Policy
from k8s_jwt_auth.audit import audit_allowed
from k8s_jwt_auth.gate import Outcome, refuse
from k8s_jwt_auth.http import bearer_token, error_response
from k8s_jwt_auth.identity import WorkloadIdentity

from .backends import K8sJWTAuthBackend, WorkloadUser, configured_backend, require_user
from .conf import LoadedSettings, get_settings, logger, sensitive_token

__all__ = ["K8sJWTAuthMiddleware", "aadmit", "admit", "auth_error_response", "log_admitted", "log_refusal",
           "read_token"]


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
    """Log a refusal your own code decided, with its audit record (as the gate does for ours): status, reason, path
    and the token's fingerprint, never the token."""
    refuse(exc, logger=logger, token=token, path=request.path, method=request.method)


def log_admitted(request: HttpRequest, workload: WorkloadIdentity, decision: Decision | None) -> None:
    """Log a request your own code let through, with its audit record (`allowed` or `dry_run_denied`)."""
    logger.debug("authenticated %s (token %s)", workload.username, workload.token_fingerprint)
    audit_allowed(workload, decision, path=request.path, method=request.method)


def _set_user(request: HttpRequest, user: Any) -> None:
    async def auser() -> Any:
        return user

    request.user = user
    request.auser = auser


def _attach(request: HttpRequest, workload: WorkloadIdentity, user: Any) -> None:
    """Put the workload and its user on the request; no user (inactive, unknown) refuses it."""
    _set_user(request, require_user(workload, user))
    request.workload = workload


_DEFAULT_USER_FOR = K8sJWTAuthBackend.user_for_workload


_PLAIN: tuple[LoadedSettings | None, bool] = (None, False)  # the last settings seen, and _plain_users of them


def _plain_users(conf: LoadedSettings) -> bool:
    """Whether workloads become plain `WorkloadUser`s under these settings (no `MAP_TO_USERS`, the default
    `user_for_workload`): then nothing after the policy can refuse a workload, and the gate needs no `check`
    step. Remembered for the last settings seen (they are rebuilt when the settings change)."""
    global _PLAIN
    last, plain = _PLAIN
    if last is not conf:
        plain = not conf.map_to_users and type(configured_backend(conf)).user_for_workload is _DEFAULT_USER_FOR
        _PLAIN = (conf, plain)
    return plain


def _admit(request: HttpRequest, conf: LoadedSettings, *, policy: Policy | None = None,
           optional: bool = False) -> Outcome:
    """Pass a request through the gate (sync); on success `request.workload` and `request.user` are set.

    The one place every sync Django adapter (middleware, decorators, DRF) verifies a request.
    """
    if _plain_users(conf):  # the usual case: the user is the workload's WorkloadUser, set once admitted
        outcome = conf.gate.admit(request.META.get(conf.options.meta_key), policy=policy, optional=optional,
                                  path=request.path, method=request.method)
        if outcome.workload is not None:
            _set_user(request, WorkloadUser(outcome.workload))
            request.workload = outcome.workload
        return outcome

    def check(workload: WorkloadIdentity) -> None:  # user rows, or a backend of the project's own
        _attach(request, workload, configured_backend(conf).user_for_workload(request, workload))

    return conf.gate.admit(request.META.get(conf.options.meta_key), policy=policy, optional=optional,
                           path=request.path, method=request.method, check=check)


@sensitive_token
async def aadmit(request: HttpRequest, conf: LoadedSettings, *, policy: Policy | None = None,
                 optional: bool = False) -> Outcome:
    """`admit` for async code: key fetches and user-row lookups never block the event loop."""
    async def check(workload: WorkloadIdentity) -> None:
        _attach(request, workload, await configured_backend(conf).auser_for_workload(request, workload))

    return await conf.gate.aadmit(request.META.get(conf.options.meta_key), policy=policy, optional=optional,
                                  path=request.path, method=request.method, check=check)


admit = sensitive_token(_admit)  # the middleware, already under @sensitive_token, calls _admit (same variables)


class K8sJWTAuthMiddleware:
    """Authenticates Kubernetes workloads; configured by `settings.K8S_JWT_AUTH` (see `conf`).

    The enforcing layer of the policy model (docs/policy-model.md): every non-exempt request passes the service
    policy (`ALLOW`). Works under WSGI and ASGI: both paths are `k8s_jwt_auth.gate.Gate` (`admit` / `aadmit`).

    Raises:
        ImproperlyConfigured: (at startup) the app is not installed or `K8S_JWT_AUTH` is invalid.
        AlreadyInstalled: `MIDDLEWARE` lists this middleware (or a subclass) more than once.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        _refuse_second()
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
        conf = self.settings.loaded
        if self._exempt(request, conf):
            return self.get_response(request)
        refusal = self._respond(request, conf, _admit(request, conf, optional=conf.options.optional))
        return refusal if refusal is not None else self.get_response(request)

    @sensitive_token
    async def __acall__(self, request: HttpRequest) -> Any:
        conf = self.settings.loaded
        if not self._exempt(request, conf):
            refusal = self._respond(request, conf, await aadmit(request, conf, optional=conf.options.optional))
            if refusal is not None:
                return refusal
        response: Awaitable[Any] = self.get_response(request)
        return await response

    @staticmethod
    def _exempt(request: HttpRequest, conf: LoadedSettings) -> bool:
        request.workload = None
        exempt = bool(conf.exempt) and conf.exempt(request.path_info)
        if exempt and not hasattr(request, "user"):
            _set_user(request, AnonymousUser())
        return exempt

    @staticmethod
    def _respond(request: HttpRequest, conf: LoadedSettings, outcome: Outcome) -> HttpResponse | None:
        if outcome.error is not None:
            return auth_error_response(outcome.error, conf.realm)
        if outcome.workload is None and not hasattr(request, "user"):
            _set_user(request, AnonymousUser())
        return None


def _refuse_second() -> None:
    listed = [path for path in getattr(settings, "MIDDLEWARE", None) or () if _is_ours(path)]
    if len(listed) > 1:
        raise AlreadyInstalled("MIDDLEWARE", f"it lists {', '.join(listed)}: keep one; give a view its own rules "
                               "with @workload_required(...)")


def _is_ours(path: object) -> bool:
    try:
        cls = import_string(path) if isinstance(path, str) else None
    except ImportError:
        return False
    return isinstance(cls, type) and issubclass(cls, K8sJWTAuthMiddleware)
