"""System checks for `settings.K8S_JWT_AUTH`, registered by the app config (`manage.py check` runs them).

| id | problem |
| --- | --- |
| `k8s_jwt_auth.E001` | `K8S_JWT_AUTH` is not set or not a dict |
| `k8s_jwt_auth.E002` | `K8S_JWT_AUTH` has an unknown key (a typo) |
| `k8s_jwt_auth.E003` | a required key (`ISSUER`, `AUDIENCES`) is missing |
| `k8s_jwt_auth.E004` | a verifier setting is invalid (`VerifierConfig` rejects it) |
| `k8s_jwt_auth.E005` | a Django-only key (`EXEMPT_PATHS`, `OPTIONAL`, `HEADER`, `REALM`, `VERIFIER`...) is invalid |
| `k8s_jwt_auth.E006` | `django.contrib.auth` or `django.contrib.contenttypes` is not in `INSTALLED_APPS` |
| `k8s_jwt_auth.E007` | `K8sJWTAuthMiddleware` comes before `AuthenticationMiddleware` in `MIDDLEWARE` |
| `k8s_jwt_auth.W001` | `DRY_RUN` is on: the policy is logged, not enforced |
| `k8s_jwt_auth.W002` | `ALLOW` is empty: every workload with a valid token for the audience may call |
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from django.apps import apps
    from django.conf import settings
    from django.core import checks
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError('k8s_jwt_auth.integrations.django needs Django: pip install "k8s-jwt-auth[django]"') from exc

from .conf import APP_LABEL, SettingsError, get_settings, setting_name

__all__ = ["MIDDLEWARE_PATH", "check_installed_apps", "check_middleware_order", "check_settings"]

MIDDLEWARE_PATH = "k8s_jwt_auth.integrations.django.middleware.K8sJWTAuthMiddleware"
_AUTH_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"
_REQUIRED_APPS = ("django.contrib.contenttypes", "django.contrib.auth")


def check_settings(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """`E001`-`E005` for invalid settings, else `W001`/`W002` about the policy."""
    try:
        loaded = get_settings().loaded
    except SettingsError as exc:
        return [checks.Error(str(exc), hint=exc.hint, id=exc.check_id)]
    messages: list[checks.CheckMessage] = []
    if loaded.policy.dry_run:
        messages.append(checks.Warning(f"{setting_name('DRY_RUN')} is on: denials are logged but not enforced",
                                hint="turn it off once the logs show no unexpected denials",
                                id=f"{APP_LABEL}.W001"))
    if loaded.policy.is_open:
        messages.append(checks.Warning(f"{setting_name('ALLOW')} is empty: every workload with a valid token for the "
                                "configured audiences may call",
                                hint='list the callers (e.g. ["frontend/*", "!kube-system/*"]), or "*/*" to '
                                     "allow every workload explicitly",
                                id=f"{APP_LABEL}.W002"))
    return messages


def check_installed_apps(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """`E006` when the auth and contenttypes apps (for `AnonymousUser` and the user model) are missing."""
    missing = [name for name in _REQUIRED_APPS if not apps.is_installed(name)]
    if not missing:
        return []
    return [checks.Error(f"INSTALLED_APPS is missing {', '.join(missing)}: k8s_jwt_auth.integrations.django needs them "
                  "for AnonymousUser and the user model (no database is used unless MAP_TO_USERS is on)",
                  hint=f"add {', '.join(map(repr, missing))} to INSTALLED_APPS", id=f"{APP_LABEL}.E006")]


def check_middleware_order(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """`E007` when our middleware runs before `AuthenticationMiddleware`, which would replace `request.user`."""
    middleware = list(getattr(settings, "MIDDLEWARE", None) or ())
    if MIDDLEWARE_PATH not in middleware or _AUTH_MIDDLEWARE not in middleware:
        return []
    if middleware.index(MIDDLEWARE_PATH) > middleware.index(_AUTH_MIDDLEWARE):
        return []
    return [checks.Error(f"MIDDLEWARE lists {MIDDLEWARE_PATH} before {_AUTH_MIDDLEWARE}, which would replace the "
                  "workload in request.user with the session user",
                  hint=f"move {MIDDLEWARE_PATH} after {_AUTH_MIDDLEWARE}", id=f"{APP_LABEL}.E007")]
