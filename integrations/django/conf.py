"""`settings.K8S_JWT_AUTH`: one dict, validated once, rebuilt when it changes (`override_settings` in tests).

The verifier settings are the suffixes `VerifierConfig.from_mapping` parses (`ISSUER`, `AUDIENCES`, `JWKS_URI`,
`CA_FILE`, `ALLOW`, ...; see `k8s_jwt_auth.config`). These keys only exist for Django:

| key | default | meaning |
| --- | --- | --- |
| `EXEMPT_PATHS` | `[]` | paths the middleware lets through unauthenticated: exact (`/healthz`) or `/prefix/*` |
| `OPTIONAL` | `False` | requests without bearer credentials pass as anonymous (`request.workload = None`) |
| `HEADER` | `"Authorization"` | the header holding `Bearer <token>` (e.g. `X-Forwarded-Authorization`) |
| `MAP_TO_USERS` | `False` | map workloads to rows of the user model instead of database-free `WorkloadUser`s |
| `REALM` | `None` | the `realm` of `WWW-Authenticate` challenges |
| `VERIFIER` | `None` | a ready `TokenVerifier` or `VerifierConfig`, instead of the verifier settings |

`AuthSettings` is the lazy holder owned by the app config (like DRF's `api_settings`): the first access parses the
dict and builds ONE `TokenVerifier`; `reload()` (connected to `setting_changed`) drops it. Invalid settings raise
`SettingsError`, an `ImproperlyConfigured` whose message names the exact key and whose `check_id` is the system check
that reports it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

try:
    from django.apps import apps
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.views.decorators.debug import sensitive_variables
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError('k8s_jwt_auth.integrations.django needs Django: pip install "k8s-jwt-auth[django]"') from exc

from k8s_jwt_auth import ConfigurationError, TokenVerifier, VerifierConfig
from k8s_jwt_auth.config import SETTINGS
from k8s_jwt_auth.gate import Gate
from k8s_jwt_auth.options import AdapterOptions, PathMatcher, flag_option

from .._common import GateView

__all__ = [
    "APP_LABEL",
    "DJANGO_KEYS",
    "SETTING",
    "VERIFIER_KEYS",
    "AuthSettings",
    "LoadedSettings",
    "SettingsError",
    "get_settings",
    "load_settings",
    "logger",
    "sensitive_token",
    "setting_name",
]

SETTING = "K8S_JWT_AUTH"
APP_LABEL = "k8s_jwt_auth"
DJANGO_KEYS = frozenset({"EXEMPT_PATHS", "OPTIONAL", "HEADER", "MAP_TO_USERS", "REALM", "VERIFIER"})
VERIFIER_KEYS = frozenset(SETTINGS)
_REQUIRED = ("ISSUER", "AUDIENCES")
_SHARED_OPTIONS = ("HEADER", "REALM", "OPTIONAL", "EXEMPT_PATHS")

logger = logging.getLogger("k8s_jwt_auth.integrations.django")

_F = TypeVar("_F", bound=Callable[..., Any])


SENSITIVE = ("k8s_token", "token", "credentials")
"""Variable names Django's error reports hide: ours, and the core's (`Gate.admit`, `TokenVerifier.verify`)."""


def sensitive_token(func: _F) -> _F:
    """`@sensitive_variables(*SENSITIVE)`, typed: Django's error reports hide the token in this function's frame
    and in the frames it calls (the gate's and the verifier's), sync; coroutines are registered one by one."""
    wrapped: _F = sensitive_variables(*SENSITIVE)(func)
    return wrapped


def _register_coroutines() -> None:
    """Register the core's coroutines holding a token with Django's filter (a coroutine frame has no caller chain
    for the filter to walk, so Django keys them by their code position); the wrappers are not used."""
    from k8s_jwt_auth.gate import Gate

    for coroutine in (Gate.aadmit, TokenVerifier.verify_async):
        sensitive_variables(*SENSITIVE)(coroutine)


_register_coroutines()


def setting_name(key: str | None = None) -> str:
    """`K8S_JWT_AUTH["KEY"]`, or `K8S_JWT_AUTH` without a key: how messages name a setting."""
    return f'{SETTING}["{key}"]' if key else SETTING


class SettingsError(ImproperlyConfigured):  # type: ignore[misc]  # Django ships no type hints
    """`settings.K8S_JWT_AUTH` is invalid. The message names the key.

    Attributes:
        check_id: the system check id reporting it (`k8s_jwt_auth.E001`...).
        key: the key at fault, when there is one.
        hint: how to fix it.
    """

    def __init__(self, check_id: str, message: str, *, key: str | None = None, hint: str | None = None) -> None:
        super().__init__(f"{setting_name(key)}: {message}")
        self.check_id = f"{APP_LABEL}.{check_id}"
        self.key = key
        self.hint = hint


@dataclass(frozen=True, eq=False)
class LoadedSettings(GateView):
    """Validated `K8S_JWT_AUTH`, with the one `TokenVerifier` (inside the `Gate`) built from it.

    Attributes:
        gate: the request pipeline every Django adapter uses (the verifier and the service policy `ALLOW`).
        options: `HEADER`, `REALM`, `OPTIONAL`, `EXEMPT_PATHS`, parsed as every adapter parses them
            (`k8s_jwt_auth.options`).
        map_to_users: whether workloads map to user-model rows.
    """

    gate: Gate
    options: AdapterOptions
    map_to_users: bool = False

    @property
    def exempt(self) -> PathMatcher:
        """Matcher of the exempt paths (`exempt_paths`)."""
        return self.options.exempt_paths

    @property
    def meta_key(self) -> str:
        """That header's `request.META` key (`HTTP_AUTHORIZATION`)."""
        return self.options.meta_key



def load_settings(raw: object) -> LoadedSettings:
    """Validate a `K8S_JWT_AUTH` value and build its verifier.

    `None` values mean "not set" (the default applies), as for every adapter and `VerifierConfig.from_mapping`.

    Raises:
        SettingsError: `E001` not a dict, `E002` unknown key, `E003` missing key, `E004` invalid verifier
            setting, `E005` invalid Django-only setting.
    """
    mapping = _as_mapping(raw)
    _check_known(mapping)
    mapping = {key: value for key, value in mapping.items() if value is not None}
    return LoadedSettings(
        gate=Gate(_verifier(mapping), logger=logger),
        options=_options(mapping),
        map_to_users=_flag(mapping, "MAP_TO_USERS"),
    )


def _as_mapping(raw: object) -> Mapping[str, Any]:
    if raw is None:
        raise SettingsError("E001", "is not set", hint='add K8S_JWT_AUTH = {"ISSUER": ..., "AUDIENCES": [...]} '
                                                      "to your settings")
    if not isinstance(raw, Mapping):
        raise SettingsError("E001", f"must be a dict, not {type(raw).__name__}",
                            hint='K8S_JWT_AUTH = {"ISSUER": ..., "AUDIENCES": [...]}')
    return raw


def _check_known(mapping: Mapping[str, Any]) -> None:
    unknown = sorted(str(k) for k in mapping if k not in VERIFIER_KEYS and k not in DJANGO_KEYS)
    if unknown:
        raise SettingsError("E002", f"unknown key(s) {', '.join(map(repr, unknown))}", key=unknown[0],
                            hint=f"known keys: {', '.join(sorted(VERIFIER_KEYS | DJANGO_KEYS))}")


def _verifier(mapping: Mapping[str, Any]) -> TokenVerifier:
    given = mapping.get("VERIFIER")
    core = {k: v for k, v in mapping.items() if k in VERIFIER_KEYS}
    if given is not None:
        return _given_verifier(given, core)
    missing = [key for key in _REQUIRED if key not in core]
    if missing:
        raise SettingsError("E003", "is required", key=missing[0],
                            hint="ISSUER is the cluster's --service-account-issuer; AUDIENCES the audience(s) "
                                 "callers request for this service")
    try:
        return TokenVerifier(VerifierConfig.from_mapping(core))
    except ConfigurationError as exc:
        key = exc.setting
        message = exc.message.removeprefix(f"{key}: ") if key else exc.message
        raise SettingsError("E004", message, key=key) from exc


def _given_verifier(given: object, core: Mapping[str, Any]) -> TokenVerifier:
    if core:
        raise SettingsError("E005", f"give either VERIFIER or the verifier settings, not both ({', '.join(core)})",
                            key="VERIFIER")
    if isinstance(given, TokenVerifier):
        return given
    if isinstance(given, VerifierConfig):
        return TokenVerifier(given)
    raise SettingsError("E005", f"must be a TokenVerifier or a VerifierConfig, not {type(given).__name__}",
                        key="VERIFIER")


def _options(mapping: Mapping[str, Any]) -> AdapterOptions:
    try:
        return AdapterOptions.parse({key: mapping.get(key) for key in _SHARED_OPTIONS}, setting_name)
    except ConfigurationError as exc:
        raise SettingsError("E005", exc.message.removeprefix(f"{setting_name(exc.setting)}: "),
                            key=exc.setting) from exc


def _flag(mapping: Mapping[str, Any], key: str) -> bool:
    try:
        return flag_option(mapping.get(key, False))
    except ConfigurationError as exc:
        raise SettingsError("E005", exc.message, key=key) from exc


class AuthSettings:
    """The lazy view of `settings.K8S_JWT_AUTH` owned by the app config; `reload()` on `setting_changed`.

    Thread-safe: the settings are parsed outside the lock, and the first result stored wins, so every caller
    shares ONE verifier (and so one key cache).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: LoadedSettings | None = None
        self._generation = 0

    def __repr__(self) -> str:
        return f"AuthSettings(loaded={self._loaded is not None})"

    @property
    def loaded(self) -> LoadedSettings:
        """The validated settings, parsed on first access.

        Raises:
            SettingsError: the settings are invalid (also reported by `manage.py check`).
        """
        loaded = self._loaded
        if loaded is not None:
            return loaded
        generation = self._generation
        built = load_settings(getattr(settings, SETTING, None))
        with self._lock:
            if self._loaded is None and self._generation == generation:
                self._loaded = built
            return self._loaded or built

    @property
    def verifier(self) -> TokenVerifier:
        """The shared `TokenVerifier`."""
        return self.loaded.verifier

    def reload(self) -> None:
        """Forget the parsed settings and the verifier; the next access reads the settings again."""
        with self._lock:
            self._loaded = None
            self._generation += 1


def get_settings() -> AuthSettings:
    """The settings holder of the installed app.

    Raises:
        ImproperlyConfigured: `k8s_jwt_auth.integrations.django` is not in `INSTALLED_APPS`.
    """
    try:
        app_config = apps.get_app_config(APP_LABEL)
    except LookupError as exc:
        raise ImproperlyConfigured("add 'k8s_jwt_auth.integrations.django' to INSTALLED_APPS: it owns the "
                                   "K8S_JWT_AUTH settings and their system checks") from exc
    holder: AuthSettings = app_config.auth_settings
    return holder
