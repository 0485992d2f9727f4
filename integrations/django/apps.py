"""`K8sJWTAuthConfig`: the Django app (`INSTALLED_APPS += ["k8s_jwt_auth.integrations.django"]`).

It owns the settings holder (`get_settings()`), reloads it when `K8S_JWT_AUTH` or `AUTHENTICATION_BACKENDS`
change (so `override_settings` works in tests) and registers the system checks in `ready()`.
"""

from __future__ import annotations

from typing import Any

try:
    from django.apps import AppConfig
    from django.core import checks
    from django.core.signals import setting_changed
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError('k8s_jwt_auth.integrations.django needs Django: pip install "k8s-jwt-auth[django]"') from exc

from .checks import check_installed_apps, check_middleware_order, check_settings
from .conf import APP_LABEL, SETTING, AuthSettings

__all__ = ["K8sJWTAuthConfig"]

_RELOAD_ON = frozenset({SETTING, "AUTHENTICATION_BACKENDS"})


class K8sJWTAuthConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    """The app config; label `k8s_jwt_auth` (the system check ids are `k8s_jwt_auth.E001`...).

    Attributes:
        auth_settings: the lazy `AuthSettings` holder every adapter reads.
    """

    name = "k8s_jwt_auth.integrations.django"
    label = APP_LABEL
    verbose_name = "Kubernetes workload authentication"

    def __init__(self, app_name: str, app_module: Any) -> None:
        super().__init__(app_name, app_module)
        self.auth_settings = AuthSettings()

    def ready(self) -> None:
        """Register the system checks and the `setting_changed` receiver."""
        for check in (check_settings, check_installed_apps, check_middleware_order):
            checks.register(check, checks.Tags.security)
        setting_changed.connect(self._setting_changed, dispatch_uid=f"{APP_LABEL}.reload_settings")

    def _setting_changed(self, *, setting: str, **kwargs: Any) -> None:
        if setting in _RELOAD_ON:
            self.auth_settings.reload()
