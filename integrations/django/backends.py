"""`K8sJWTAuthBackend`: an authentication backend for Kubernetes service-account tokens, and `WorkloadUser`.

```python
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "k8s_jwt_auth.integrations.django.backends.K8sJWTAuthBackend",
]

user = authenticate(request, k8s_token=token)          # or: await aauthenticate(request, k8s_token=token)
```

The backend takes the distinctive keyword `k8s_token`, so `django.contrib.auth.authenticate()` never hands it a
username and password (nor us a token). It verifies the token with the app's shared verifier, applies the global
policy (`ALLOW`) and returns:

* by default a `WorkloadUser`: authenticated, active, not stored anywhere, no database needed, `.workload` is the
  `WorkloadIdentity`, `username` is `system:serviceaccount:NS:SA`, and it has no Django permissions;
* with `MAP_TO_USERS: True`, a row of the user model named after the workload (created on first use unless
  `create_unknown_user` is `False`), passed through `configure_user()`, with `.workload` set — for Django
  permissions and groups.

`authenticate()` flattens every failure to `None`, as Django expects; `K8sJWTAuthMiddleware` calls the verifier
itself to answer with the precise reason.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

try:
    from asgiref.sync import sync_to_async
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.contrib.auth.backends import BaseBackend
    from django.contrib.auth.models import Group, Permission
    from django.db.models.manager import EmptyManager
    from django.http import HttpRequest
    from django.utils.module_loading import import_string
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError('k8s_jwt_auth.integrations.django needs Django: pip install "k8s-jwt-auth[django]"') from exc

from k8s_jwt_auth import PolicyDenied
from k8s_jwt_auth.identity import WorkloadIdentity

from .conf import LoadedSettings, get_settings, logger, sensitive_token

__all__ = ["K8sJWTAuthBackend", "WorkloadUser", "configured_backend", "require_user"]

_NOT_STORED = "a WorkloadUser is not stored in the database (set MAP_TO_USERS for user-model rows)"


class WorkloadUser:
    """The `request.user` of a verified workload when `MAP_TO_USERS` is off. Needs no database.

    It behaves like a user for Django code (`is_authenticated`, `get_username()`, `has_perm()`), but has no
    primary key, groups or permissions: authorise workloads with policy rules, or turn on `MAP_TO_USERS`.

    Attributes:
        workload: the verified `WorkloadIdentity`.
        username: `system:serviceaccount:NS:SA`.
    """

    id = None
    pk = None
    is_active = True
    is_staff = False
    is_superuser = False

    def __init__(self, workload: WorkloadIdentity) -> None:
        self.workload = workload
        self.username = workload.username

    def __str__(self) -> str:
        return self.username

    def __repr__(self) -> str:
        return f"WorkloadUser({self.username!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WorkloadUser) and other.workload == self.workload

    def __hash__(self) -> int:
        return hash(self.workload)

    @property
    def is_authenticated(self) -> bool:
        """Always `True`."""
        return True

    @property
    def is_anonymous(self) -> bool:
        """Always `False`."""
        return False

    def get_username(self) -> str:
        """`system:serviceaccount:NS:SA`."""
        return self.username

    @property
    def groups(self) -> Any:
        """An empty manager: a workload belongs to no group."""
        return EmptyManager(Group)

    @property
    def user_permissions(self) -> Any:
        """An empty manager: a workload has no permission rows."""
        return EmptyManager(Permission)

    def get_user_permissions(self, obj: object = None) -> set[str]:
        """No permissions."""
        return set()

    def get_group_permissions(self, obj: object = None) -> set[str]:
        """No permissions."""
        return set()

    def get_all_permissions(self, obj: object = None) -> set[str]:
        """No permissions."""
        return set()

    def has_perm(self, perm: str, obj: object = None) -> bool:
        """`False`: Django permissions need `MAP_TO_USERS`; authorise workloads with policy rules."""
        return False

    def has_perms(self, perm_list: Iterable[str], obj: object = None) -> bool:
        """Whether the workload has every permission of `perm_list` (so only for an empty list)."""
        if isinstance(perm_list, str):
            raise ValueError("perm_list must be an iterable of permissions.")
        return all(self.has_perm(perm, obj) for perm in perm_list)

    def has_module_perms(self, app_label: str) -> bool:
        """`False`."""
        return False

    async def aget_all_permissions(self, obj: object = None) -> set[str]:
        """See `get_all_permissions()`."""
        return self.get_all_permissions(obj)

    async def ahas_perm(self, perm: str, obj: object = None) -> bool:
        """See `has_perm()`."""
        return self.has_perm(perm, obj)

    async def ahas_perms(self, perm_list: Iterable[str], obj: object = None) -> bool:
        """See `has_perms()`."""
        return self.has_perms(perm_list, obj)

    async def ahas_module_perms(self, app_label: str) -> bool:
        """See `has_module_perms()`."""
        return self.has_module_perms(app_label)

    def save(self, *args: object, **kwargs: object) -> None:
        """Not supported."""
        raise NotImplementedError(_NOT_STORED)

    def delete(self, *args: object, **kwargs: object) -> None:
        """Not supported."""
        raise NotImplementedError(_NOT_STORED)

    def set_password(self, raw_password: str) -> None:
        """Not supported."""
        raise NotImplementedError(_NOT_STORED)

    def check_password(self, raw_password: str) -> bool:
        """Not supported."""
        raise NotImplementedError(_NOT_STORED)


class K8sJWTAuthBackend(BaseBackend):  # type: ignore[misc]  # Django ships no type hints
    """Authenticates `k8s_token=...` credentials: a Kubernetes service-account token.

    Tune it like Django's `RemoteUserBackend`, by subclassing and listing the subclass in
    `AUTHENTICATION_BACKENDS`; the middleware and the DRF class use the first one listed there.

    Attributes:
        create_unknown_user: with `MAP_TO_USERS`, create a user row for a workload seen for the first time
            (`True`, the default) or refuse workloads without one (`False`).
    """

    create_unknown_user = True

    @sensitive_token
    def authenticate(self, request: HttpRequest | None, k8s_token: str | None = None) -> Any:
        """The user of a verified, policy-allowed token; `None` for no token or any failure (logged, audited)."""
        if k8s_token is None:
            return None
        gate, found = get_settings().loaded.gate, []

        def check(workload: WorkloadIdentity) -> None:
            found.append(require_user(workload, self.user_for_workload(request, workload)))

        outcome = gate.admit(_bearer(k8s_token), path=_path(request), method=_method(request), check=check)
        return found[0] if outcome.error is None else None

    @sensitive_token
    async def aauthenticate(self, request: HttpRequest | None, k8s_token: str | None = None) -> Any:
        """See `authenticate()`; fetching keys never blocks the event loop."""
        if k8s_token is None:
            return None
        gate, found = get_settings().loaded.gate, []

        async def check(workload: WorkloadIdentity) -> None:
            found.append(require_user(workload, await self.auser_for_workload(request, workload)))

        outcome = await gate.aadmit(_bearer(k8s_token), path=_path(request), method=_method(request), check=check)
        return found[0] if outcome.error is None else None

    def get_user(self, user_id: Any) -> Any:
        """The user-model row with this primary key (`MAP_TO_USERS` only), if it may authenticate."""
        if not get_settings().loaded.map_to_users:
            return None
        user_model = get_user_model()
        try:
            user = user_model._default_manager.get(pk=user_id)
        except user_model.DoesNotExist:
            return None
        return user if self.user_can_authenticate(user) else None

    # -- mapping workloads to users ---------------------------------------------------------------

    def user_for_workload(self, request: HttpRequest | None, workload: WorkloadIdentity) -> Any:
        """The user for a verified workload: a `WorkloadUser`, or with `MAP_TO_USERS` a user-model row.

        Returns `None` when the workload has no user row and `create_unknown_user` is `False`, or the row may
        not authenticate (inactive).
        """
        if not get_settings().loaded.map_to_users:
            return WorkloadUser(workload)
        return self._user_row(request, workload)

    async def auser_for_workload(self, request: HttpRequest | None, workload: WorkloadIdentity) -> Any:
        """See `user_for_workload()`; database work runs in a thread (`sync_to_async`)."""
        if not get_settings().loaded.map_to_users:
            return WorkloadUser(workload)
        return await sync_to_async(self._user_row)(request, workload)

    def clean_username(self, username: str) -> str:
        """The user-model username for a workload's `system:serviceaccount:NS:SA`. Unchanged by default."""
        return username

    def configure_user(self, request: HttpRequest | None, user: Any, created: bool = True) -> Any:
        """Configure a user row (e.g. groups from `user.workload.namespace`) and return it. Called on every
        authentication, with `created=True` the first time. Unchanged by default."""
        return user

    def user_can_authenticate(self, user: Any) -> bool:
        """Reject users with `is_active=False` (as Django's `ModelBackend` does)."""
        return getattr(user, "is_active", True) is not False

    def _user_row(self, request: HttpRequest | None, workload: WorkloadIdentity) -> Any:
        user_model = get_user_model()
        username = self.clean_username(workload.username)
        manager = user_model._default_manager
        created = False
        if self.create_unknown_user:
            user, created = manager.get_or_create(**{user_model.USERNAME_FIELD: username})
        else:
            try:
                user = manager.get_by_natural_key(username)
            except user_model.DoesNotExist:
                logger.info("no user for workload %s (create_unknown_user is False)", workload.username)
                return None
        user.workload = workload
        user = self.configure_user(request, user, created=created)
        return user if self.user_can_authenticate(user) else None



def require_user(workload: WorkloadIdentity, user: Any) -> Any:
    """The user a workload maps to; no user (unknown with `create_unknown_user` off, or inactive) refuses it.

    Raises:
        PolicyDenied: the workload has no active user.
    """
    if user is None:
        raise PolicyDenied(f"workload {workload.namespace}/{workload.service_account} has no active user",
                           workload=workload)
    return user


_BACKENDS: weakref.WeakKeyDictionary[LoadedSettings, K8sJWTAuthBackend] = weakref.WeakKeyDictionary()


def configured_backend(conf: LoadedSettings) -> K8sJWTAuthBackend:
    """The backend mapping workloads to users for these settings: the first `K8sJWTAuthBackend` (or subclass)
    listed in `AUTHENTICATION_BACKENDS`, else a default `K8sJWTAuthBackend`. One per loaded settings (they are
    reloaded when `AUTHENTICATION_BACKENDS` changes)."""
    backend = _BACKENDS.get(conf)
    if backend is None:
        backend = next((cls() for cls in map(import_string, getattr(settings, "AUTHENTICATION_BACKENDS", ()))
                        if isinstance(cls, type) and issubclass(cls, K8sJWTAuthBackend)), None) or K8sJWTAuthBackend()
        _BACKENDS[conf] = backend
    return backend


def _bearer(token: str) -> str:
    return "Bearer " + str(token)


def _path(request: HttpRequest | None) -> str:
    return str(getattr(request, "path", ""))


def _method(request: HttpRequest | None) -> str | None:
    return getattr(request, "method", None)
