"""Per-view workload requirements: `@workload_required(*rules)` and `WorkloadRequiredMixin`.

```python
@workload_required("payments/*", "!payments/batch")
def refund(request):                       # sync or async views
    ...

class ReportView(WorkloadRequiredMixin, View):
    workload_rules = ("frontend/web/web-*",)
```

Rules are the compact policy form (`NS/SA[/POD]`, `!` to deny, globs). They are the route layer of the policy model
(docs/policy-model.md): behind `K8sJWTAuthMiddleware` (which applied the service policy `ALLOW`) they reuse its
`request.workload` and apply the view's rules; on a request the middleware let through without a workload (an
exempt path, `OPTIONAL` mode) or without the middleware, they verify the token themselves and apply the view's rules,
or the service policy when the view has none. Refusals are the middleware's: 401, 403, 503 with the same JSON bodies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, ClassVar, TypeVar, overload

try:
    from asgiref.sync import iscoroutinefunction
    from django.http import HttpRequest, HttpResponse
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError('k8s_jwt_auth.integrations.django needs Django: pip install "k8s-jwt-auth[django]"') from exc

from k8s_jwt_auth import ConfigurationError, Policy
from k8s_jwt_auth.gate import Outcome
from k8s_jwt_auth.identity import WorkloadIdentity

from .conf import LoadedSettings, get_settings, sensitive_token
from .middleware import aadmit, admit, auth_error_response

__all__ = ["WorkloadRequiredMixin", "acheck_workload", "check_workload", "view_policy", "workload_required"]

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


@sensitive_token
def check_workload(request: HttpRequest, policy: Policy | None = None) -> HttpResponse | None:
    """`None` when the request has a workload that `policy` allows, else the 401/403/503 response to send.

    `policy`: the view's rules; `None` for the service policy (`ALLOW`), which the middleware has applied already.
    """
    conf = get_settings().loaded
    workload = getattr(request, "workload", None)
    if isinstance(workload, WorkloadIdentity):  # the middleware admitted it: only the view's rules are new
        if policy is None:
            return None
        return _refusal(conf, conf.gate.authorize(workload, policy=policy, path=request.path, method=request.method))
    return _refusal(conf, admit(request, conf, policy=policy))


@sensitive_token
async def acheck_workload(request: HttpRequest, policy: Policy | None = None) -> HttpResponse | None:
    """`check_workload` for async views: verifying a token never blocks the event loop."""
    conf = get_settings().loaded
    workload = getattr(request, "workload", None)
    if isinstance(workload, WorkloadIdentity):
        if policy is None:
            return None
        return _refusal(conf, conf.gate.authorize(workload, policy=policy, path=request.path, method=request.method))
    return _refusal(conf, await aadmit(request, conf, policy=policy))


def _refusal(conf: LoadedSettings, outcome: Outcome) -> HttpResponse | None:
    return None if outcome.error is None else auth_error_response(outcome.error, conf.realm)


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
                refusal = await acheck_workload(request, guard)
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
        view: Any = super()
        if getattr(self, "view_is_async", False):
            return self._adispatch(view, request, *args, **kwargs)
        refusal = check_workload(request, self._workload_guard)
        return refusal if refusal is not None else view.dispatch(request, *args, **kwargs)

    async def _adispatch(self, view: Any, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        refusal = await acheck_workload(request, self._workload_guard)
        return refusal if refusal is not None else await view.dispatch(request, *args, **kwargs)
