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

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

try:
    from django.apps import apps
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.utils.module_loading import import_string
    from django.views.decorators.debug import sensitive_variables
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError('k8s_jwt_auth.integrations.django needs Django: pip install "k8s-jwt-auth[django]"') from exc

from k8s_jwt_auth import ConfigurationError, Policy, TokenVerifier, VerifierConfig
from k8s_jwt_auth.config import SETTINGS

from .._common import PathMatcher, header_name

if TYPE_CHECKING:
    from .backends import K8sJWTAuthBackend

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
    "sensitive_token",
    "setting_name",
]

SETTING = "K8S_JWT_AUTH"
APP_LABEL = "k8s_jwt_auth"
DJANGO_KEYS = frozenset({"EXEMPT_PATHS", "OPTIONAL", "HEADER", "MAP_TO_USERS", "REALM", "VERIFIER"})
VERIFIER_KEYS = frozenset(SETTINGS)
_REQUIRED = ("ISSUER", "AUDIENCES")

_F = TypeVar("_F", bound=Callable[..., Any])


def sensitive_token(func: _F) -> _F:
    """`@sensitive_variables("k8s_token")`, typed: Django's error reports hide the `k8s_token` variable."""
    wrapped: _F = sensitive_variables("k8s_token")(func)
    return wrapped


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
class LoadedSettings:
    """Validated `K8S_JWT_AUTH`, with the one `TokenVerifier` built from it.

    Attributes:
        verifier: the shared verifier.
        exempt: matcher of the exempt paths.
        optional: whether requests without bearer credentials pass as anonymous.
        header: the header holding the bearer token, as configured.
        meta_key: that header's `request.META` key (`HTTP_AUTHORIZATION`).
        map_to_users: whether workloads map to user-model rows.
        realm: the challenge realm.
    """

    verifier: TokenVerifier
    exempt: PathMatcher
    optional: bool = False
    header: str = "Authorization"
    meta_key: str = "HTTP_AUTHORIZATION"
    map_to_users: bool = False
    realm: str | None = None

    @property
    def policy(self) -> Policy:
        """The global policy (`ALLOW`, `DRY_RUN`), applied to every authenticated request."""
        return self.verifier.policy

    @cached_property
    def backend(self) -> K8sJWTAuthBackend:
        """The backend mapping workloads to users: the first `K8sJWTAuthBackend` (or subclass) listed in
        `AUTHENTICATION_BACKENDS`, else a default `K8sJWTAuthBackend`."""
        from .backends import K8sJWTAuthBackend  # needs the auth models, so not importable before apps are ready

        for path in getattr(settings, "AUTHENTICATION_BACKENDS", ()):
            cls = import_string(path)
            if isinstance(cls, type) and issubclass(cls, K8sJWTAuthBackend):
                return cls()
        return K8sJWTAuthBackend()


def load_settings(raw: object) -> LoadedSettings:
    """Validate a `K8S_JWT_AUTH` value and build its verifier.

    Raises:
        SettingsError: `E001` not a dict, `E002` unknown key, `E003` missing key, `E004` invalid verifier
            setting, `E005` invalid Django-only setting.
    """
    mapping = _as_mapping(raw)
    _check_known(mapping)
    header = mapping.get("HEADER", "Authorization")
    return LoadedSettings(
        verifier=_verifier(mapping),
        exempt=_exempt(mapping.get("EXEMPT_PATHS", ())),
        optional=_flag(mapping, "OPTIONAL"),
        header=header,
        meta_key=_meta_key(header),
        map_to_users=_flag(mapping, "MAP_TO_USERS"),
        realm=_realm(mapping.get("REALM")),
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


def _exempt(paths: object) -> PathMatcher:
    if not isinstance(paths, (list, tuple)):
        raise SettingsError("E005", f"must be a list of paths, not {type(paths).__name__}", key="EXEMPT_PATHS",
                            hint='e.g. ["/healthz", "/public/*"]')
    try:
        return PathMatcher(paths)
    except ConfigurationError as exc:
        raise SettingsError("E005", exc.message, key="EXEMPT_PATHS") from exc


def _flag(mapping: Mapping[str, Any], key: str) -> bool:
    value = mapping.get(key, False)
    if not isinstance(value, bool):
        raise SettingsError("E005", f"must be True or False, not {value!r}", key=key)
    return value


def _meta_key(header: object) -> str:
    try:
        name = header_name(header)  # type: ignore[arg-type]  # validated here
    except ConfigurationError as exc:
        raise SettingsError("E005", exc.message, key="HEADER") from exc
    if b"_" in name:
        raise SettingsError("E005", f"{header!r}: use '-', not '_' (servers drop or merge headers with '_')",
                            key="HEADER")
    return "HTTP_" + name.decode("ascii").upper().replace("-", "_")


def _realm(realm: object) -> str | None:
    if realm is None or (isinstance(realm, str) and realm.strip()):
        return realm
    raise SettingsError("E005", f"must be a non-empty string or None, not {realm!r}", key="REALM")


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
