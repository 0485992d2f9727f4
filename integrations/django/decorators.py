"""Per-view workload requirements: `@workload_required(*rules)` and `WorkloadRequiredMixin`.

```python
@workload_required("payments/*", "!payments/batch")
def refund(request):                       # sync or async views
    ...

class ReportView(WorkloadRequiredMixin, View):
    workload_rules = ("frontend/web/web-*",)
```

Rules are the compact policy form (`NS/SA[/POD]`, `!` to deny, globs) and apply on top of the global `ALLOW`
policy the middleware enforces. A request without a workload (an exempt path, `OPTIONAL` mode without a token) gets
a 401, a workload the view's rules deny a 403, with the middleware's JSON bodies. They need
`K8sJWTAuthMiddleware`, which sets `request.workload`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, ClassVar, TypeVar, overload

try:
    from asgiref.sync import iscoroutinefunction
    from django.core.exceptions import ImproperlyConfigured
    from django.http import HttpRequest, HttpResponse
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError('k8s_jwt_auth.integrations.django needs Django: pip install "k8s-jwt-auth[django]"') from exc

from k8s_jwt_auth import AuthError, ConfigurationError, Policy
from k8s_jwt_auth._http import missing_token
from k8s_jwt_auth.identity import WorkloadIdentity

from .._common import check_policy
from .conf import get_settings
from .middleware import auth_error_response, log_admitted, log_refusal, logger

__all__ = ["WorkloadRequiredMixin", "check_workload", "view_policy", "workload_required"]

_View = TypeVar("_View", bound=Callable[..., Any])


def view_policy(rules: str | Sequence[str] = (), policy: Policy | None = None) -> Policy | None:
    """The policy of a view: `policy`, or one parsed from compact `rules`; `None` for neither.

    Raises:
        ConfigurationError: both are given, or a rule is not `[!]NS/SA[/POD]` (when the view is defined).
    """
    if policy is not None and rules:
        raise ConfigurationError("give rules or policy=, not both")
    if policy is not None:
        return policy
    return Policy.parse(rules) if rules else None


def _workload(request: HttpRequest) -> WorkloadIdentity | None:
    try:
        workload: WorkloadIdentity | None = request.workload
    except AttributeError as exc:
        raise ImproperlyConfigured("request.workload is not set: add k8s_jwt_auth.integrations.django.middleware."
                                   "K8sJWTAuthMiddleware to MIDDLEWARE") from exc
    return workload


def check_workload(request: HttpRequest, policy: Policy | None = None) -> HttpResponse | None:
    """`None` when the request has a workload that `policy` allows, else the 401/403 response to send.

    Raises:
        ImproperlyConfigured: `K8sJWTAuthMiddleware` did not run for this request.
    """
    workload = _workload(request)
    try:
        if workload is None:
            raise missing_token()
        decision = check_policy(workload, policy, logger)
    except AuthError as exc:
        log_refusal(request, exc)
        return auth_error_response(exc, get_settings().loaded.realm)
    if decision is not None:  # a second gate after the middleware: record its own decision
        log_admitted(request, workload, decision)
    return None


@overload
def workload_required(view: _View, /) -> _View: ...


@overload
def workload_required(*rules: str, policy: Policy | None = None) -> Callable[[_View], _View]: ...


def workload_required(*rules: Any, policy: Policy | None = None) -> Any:
    """Require a verified workload for a function view (sync or async), allowed by `rules` or `policy`.

    Use it bare (`@workload_required`) or with rules (`@workload_required("payments/*", "!payments/batch")`).

    Raises:
        ConfigurationError: an invalid rule, or both rules and `policy` (when the view is defined).
    """
    if len(rules) == 1 and callable(rules[0]) and policy is None:
        return workload_required()(rules[0])
    guard = view_policy(rules, policy)

    def decorator(view: _View) -> _View:
        if iscoroutinefunction(view):
            @wraps(view)
            async def async_view(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                refusal = check_workload(request, guard)
                return refusal if refusal is not None else await view(request, *args, **kwargs)

            return async_view  # type: ignore[return-value]

        @wraps(view)
        def sync_view(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            refusal = check_workload(request, guard)
            return refusal if refusal is not None else view(request, *args, **kwargs)

        return sync_view  # type: ignore[return-value]

    return decorator


class WorkloadRequiredMixin:
    """Require a verified workload for a class-based view (sync or async handlers); put it first in the bases.

    Attributes:
        workload_rules: compact rules the workload must pass (`("payments/*", "!payments/batch")`).
        workload_policy: a `Policy` instead of `workload_rules`.
    """

    workload_rules: ClassVar[str | Sequence[str]] = ()
    workload_policy: ClassVar[Policy | None] = None
    _workload_guard: ClassVar[Policy | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._workload_guard = view_policy(cls.workload_rules, cls.workload_policy)

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        """Refuse the request, or hand it to the view's handler."""
        refusal = check_workload(request, self._workload_guard)
        if refusal is None:
            view: Any = super()
            return view.dispatch(request, *args, **kwargs)
        if getattr(self, "view_is_async", False):
            return _resolved(refusal)
        return refusal


async def _resolved(response: HttpResponse) -> HttpResponse:
    return response
