"""Django REST framework: `K8sJWTAuthentication` and `WorkloadPermission`, with our error bodies.

```python
from k8s_jwt_auth.integrations.django.drf import K8sJWTAuthentication, workload_permission

class RefundView(APIView):
    authentication_classes = [K8sJWTAuthentication]            # first: DRF takes the 401 challenge from it
    permission_classes = [workload_permission("payments/*", "!payments/batch")]

    def get(self, request):
        return Response(request.auth.to_dict())                 # request.auth is the WorkloadIdentity
```

`K8sJWTAuthentication.authenticate()` returns `None` without bearer credentials, `(user, workload)` for a good
token (reusing the middleware's result when `K8sJWTAuthMiddleware` already verified the request), and raises for a
bad one. Errors are DRF exceptions whose `detail` is our body `{"error", "reason", "message"}`, so DRF's default
exception handler renders it unchanged, with the same statuses and headers as the middleware:

| our error | raised as (a subclass of) | status | headers |
| --- | --- | --- | --- |
| `InvalidToken` | `WorkloadAuthenticationFailed` (`AuthenticationFailed`) | 401 | `WWW-Authenticate` with the error |
| no workload | `WorkloadNotAuthenticated` (`NotAuthenticated`) | 401 | `WWW-Authenticate: Bearer` |
| `PolicyDenied` | `WorkloadPermissionDenied` (`PermissionDenied`) | 403 | `WWW-Authenticate` with the error |
| `ServiceUnavailable` | `WorkloadKeysUnavailable` (`APIException`) | 503 | `Retry-After` |

DRF answers 401 only when the *first* authentication class returns a challenge: list `K8sJWTAuthentication`
first, or DRF turns the 401s into 403s. In tests, `workload_api_client(issuer, namespace, service_account)` is an
`APIClient` that calls as that workload. Extra: `pip install "k8s-jwt-auth[drf]"`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

try:
    from rest_framework.authentication import BaseAuthentication
    from rest_framework.exceptions import APIException, AuthenticationFailed, NotAuthenticated, PermissionDenied
    from rest_framework.permissions import BasePermission
    from rest_framework.request import Request
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError('k8s_jwt_auth.integrations.django.drf needs Django REST framework: '
                      'pip install "k8s-jwt-auth[drf]"') from exc

from k8s_jwt_auth import AuthError, Policy, PolicyDenied, ServiceUnavailable
from k8s_jwt_auth.gate import AUTHENTICATE_ONLY, Outcome
from k8s_jwt_auth.http import challenge, error_response, missing_token
from k8s_jwt_auth.identity import WorkloadIdentity

from .conf import get_settings, sensitive_token
from .decorators import view_policy
from .middleware import admit

if TYPE_CHECKING:
    from rest_framework.test import APIClient

    from k8s_jwt_auth.testing import FakeIssuer

__all__ = [
    "K8sJWTAuthentication",
    "WorkloadAuthenticationFailed",
    "WorkloadKeysUnavailable",
    "WorkloadNotAuthenticated",
    "WorkloadPermission",
    "WorkloadPermissionDenied",
    "api_exception",
    "workload_api_client",
    "workload_permission",
]

_ERROR_ATTR = "_k8s_jwt_auth_error"


class _WorkloadAPIError:
    """Shared `__init__`: `detail` is our JSON body, headers come from `error_response()`."""

    def __init__(self, error: AuthError, realm: str | None = None) -> None:
        rendered = error_response(error, realm)
        super().__init__(detail=rendered.body)  # type: ignore[call-arg]  # the DRF exception is next in the MRO
        headers = dict(rendered.headers)
        self.auth_error = error
        self.auth_header = headers.get("WWW-Authenticate")
        self.wait = error.retry_after if isinstance(error, ServiceUnavailable) else None


class WorkloadAuthenticationFailed(_WorkloadAPIError, AuthenticationFailed):  # type: ignore[misc]
    """401: the token is malformed or does not verify. `auth_error` is our `InvalidToken`."""


class WorkloadNotAuthenticated(_WorkloadAPIError, NotAuthenticated):  # type: ignore[misc]
    """401: a workload is required but the request has no bearer credentials."""


class WorkloadPermissionDenied(_WorkloadAPIError, PermissionDenied):  # type: ignore[misc]
    """403: the policy denies the workload. `auth_error` is our `PolicyDenied`."""


class WorkloadKeysUnavailable(_WorkloadAPIError, APIException):  # type: ignore[misc]
    """503 with `Retry-After` (`wait`): the token cannot be checked now (keys or TokenReview unavailable)."""

    status_code = 503
    default_code = "temporarily_unavailable"


def api_exception(error: AuthError, realm: str | None = None) -> APIException:
    """The DRF exception for one of our errors (see the module table)."""
    if isinstance(error, ServiceUnavailable):
        return WorkloadKeysUnavailable(error, realm)
    if isinstance(error, PolicyDenied):
        return WorkloadPermissionDenied(error, realm)
    if error.reason == "missing_token":
        return WorkloadNotAuthenticated(error, realm)
    return WorkloadAuthenticationFailed(error, realm)


class K8sJWTAuthentication(BaseAuthentication):  # type: ignore[misc]  # DRF ships no type hints
    """DRF authentication with Kubernetes service-account tokens (settings: `K8S_JWT_AUTH`).

    A route-layer gate (docs/policy-model.md): it applies the service policy (`ALLOW`), unless the view has a
    `WorkloadPermission` with rules of its own (those then decide); behind `K8sJWTAuthMiddleware` it reuses the
    middleware's workload. `request.user` is a `WorkloadUser` (or a user row with `MAP_TO_USERS`), `request.auth`
    the `WorkloadIdentity`.
    """

    @sensitive_token
    def authenticate(self, request: Request) -> tuple[Any, WorkloadIdentity] | None:
        """`None` without bearer credentials, else `(user, workload)`.

        Raises:
            WorkloadAuthenticationFailed: 401, the token is malformed or invalid.
            WorkloadPermissionDenied: 403, the policy denies the workload.
            WorkloadKeysUnavailable: 503, the token cannot be checked now.
        """
        django_request = request._request
        workload = getattr(django_request, "workload", None)
        if isinstance(workload, WorkloadIdentity):  # K8sJWTAuthMiddleware verified this request already
            return django_request.user, workload
        conf = get_settings().loaded
        policy = AUTHENTICATE_ONLY if _view_has_rules(request) else None
        outcome = admit(django_request, conf, policy=policy, optional=True)
        if outcome.error is not None:
            setattr(request, _ERROR_ATTR, outcome.error)
            raise api_exception(outcome.error, conf.realm)
        return None if outcome.workload is None else (django_request.user, outcome.workload)

    def authenticate_header(self, request: Request) -> str:
        """The RFC 6750 challenge (with the error code of a refused token), so DRF answers 401, not 403."""
        return challenge(getattr(request, _ERROR_ATTR, None), get_settings().loaded.realm)


class WorkloadPermission(BasePermission):  # type: ignore[misc]  # DRF ships no type hints
    """Require a verified workload, allowed by `rules` (compact form) or `policy` when given.

    Subclass it with `rules = ("payments/*",)`, or use `workload_permission("payments/*")`. The workload comes
    from `K8sJWTAuthentication` (`request.auth`) or `K8sJWTAuthMiddleware` (`request.workload`); the rules replace
    the service policy for the view in `K8sJWTAuthentication`, and apply on top of it behind the middleware.

    Attributes:
        rules: compact rules (`NS/SA[/POD]`, `!` to deny).
        policy: a `Policy` instead of `rules`.
    """

    rules: ClassVar[str | Sequence[str]] = ()
    policy: ClassVar[Policy | None] = None
    _guard: ClassVar[Policy | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._guard = view_policy(cls.rules, cls.policy)

    def has_permission(self, request: Request, view: Any) -> bool:
        """`True` for an allowed workload.

        Raises:
            WorkloadNotAuthenticated: 401, the request has no workload.
            WorkloadPermissionDenied: 403, the rules deny it.
        """
        workload = _workload(request)
        if workload is not None and self._guard is None:
            return True
        conf = get_settings().loaded
        where = {"path": request._request.path, "method": request._request.method}
        outcome: Outcome = (conf.gate.refuse(missing_token(), **where) if workload is None
                            else conf.gate.authorize(workload, policy=self._guard, **where))
        if outcome.error is not None:
            raise api_exception(outcome.error, conf.realm)
        return True


def _view_has_rules(request: Request) -> bool:
    """Whether the view of a DRF request has a `WorkloadPermission` with rules of its own."""
    view = (getattr(request, "parser_context", None) or {}).get("view")
    return any(isinstance(cls, type) and issubclass(cls, WorkloadPermission) and cls._guard is not None
               for cls in getattr(view, "permission_classes", ()))


def workload_permission(*rules: str, policy: Policy | None = None) -> type[WorkloadPermission]:
    """A `WorkloadPermission` class for `permission_classes`: `[workload_permission("payments/*")]`.

    Raises:
        ConfigurationError: an invalid rule, or both rules and `policy`.
    """
    name = f"WorkloadPermission({', '.join(rules) if rules else policy!r})"
    return type(name, (WorkloadPermission,), {"rules": rules, "policy": policy})


def _workload(request: Request) -> WorkloadIdentity | None:
    if isinstance(request.auth, WorkloadIdentity):
        return request.auth
    workload = getattr(request._request, "workload", None)
    return workload if isinstance(workload, WorkloadIdentity) else None


def workload_api_client(issuer: FakeIssuer, namespace: str = "default", service_account: str = "default",
                        **mint_options: Any) -> APIClient:
    """A DRF `APIClient` whose every request calls as `namespace/service_account`, with a token minted by `issuer`.

    ```python
    client = workload_api_client(k8s_issuer, "payments", "worker")
    assert client.get("/refunds").status_code == 200
    client.credentials()                       # DRF's way to drop them: the next request sends no token
    ```

    The token is set with `client.credentials(...)`, in the header of `K8S_JWT_AUTH["HEADER"]`, minted for the
    `AUDIENCES` of `settings.K8S_JWT_AUTH` (see `k8s_jwt_auth.integrations.django.testing.workload_headers`).

    Args:
        issuer: a `k8s_jwt_auth.testing.FakeIssuer` (e.g. the `k8s_issuer` pytest fixture).
        namespace: the caller's namespace.
        service_account: the caller's service account.
        **mint_options: more `FakeIssuer.mint` options (`pod=`, `lifetime=`, `audiences=`, ...).
    """
    from rest_framework.test import APIClient  # test-only: not loaded by the authentication classes

    from .testing import workload_headers

    client = APIClient()
    headers = workload_headers(issuer, namespace, service_account, **mint_options)
    client.credentials(**{"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()})
    return client
