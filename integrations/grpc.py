"""gRPC servers: authenticate Kubernetes workloads with a server interceptor (`grpc.server` and `grpc.aio.server`).

```python
import grpc
from concurrent import futures
from k8s_jwt_auth.integrations.grpc import K8sJWTAuthInterceptor, current_workload

server = grpc.server(futures.ThreadPoolExecutor(16), interceptors=[
    K8sJWTAuthInterceptor(verifier, rules={"/payments.Payments/Refund": "payments/admin"}),
])

def charge(request, context):                     # any handler: generated servicer methods too
    workload = current_workload()                 # a k8s_jwt_auth.WorkloadIdentity
    ...
```

`AioK8sJWTAuthInterceptor` is the same for `grpc.aio.server(interceptors=[...])`; handlers may be coroutines,
async generators or plain functions there.

Every call except the exempt methods (by default the standard health service, `/grpc.health.v1.Health/Check`
and `/Watch`) must carry `authorization: Bearer <token>` metadata. Refusals end the call with:

| outcome | status | details (`<reason>: <message>`) |
| --- | --- | --- |
| no token, or a bad one (expired, forged, wrong audience...) | `UNAUTHENTICATED` | `expired: ...` |
| the policy denies the workload | `PERMISSION_DENIED` | `policy_denied: ...` |
| keys or TokenReview unavailable | `UNAVAILABLE`, trailing `grpc-retry-pushback-ms` | `keys_unavailable: ...` |

The details never hold the token; the `UNAVAILABLE` message is the error's public sentence (no internal URLs).
Each decision writes exactly one audit record (`transport="grpc"`, `path` the full method name), as in every other
adapter. Logs (logger `k8s_jwt_auth.integrations.grpc`) show the token's SHA-256 fingerprint, never the token.

Where the check runs: a sync server calls `intercept_service` on its one dispatch thread, which serves every new
call; a key fetch there (the first token of a new key) would stall the whole server. So the sync interceptor only
picks the method's policy there, and verifies inside the handler it returns, on the server's thread pool, before
the real handler runs. The aio interceptor verifies in `intercept_service` with `Gate.aadmit`, never blocking the
event loop, and a refused call never reaches the method's handler lookup.

Where `current_workload()` is set: grpc.aio runs each call in a task of its own, whose context the interceptors
and coroutine or async-generator handlers share, so the aio interceptor sets it there (interceptors after ours
see it too); a plain function on an aio server runs on grpc's thread pool, where no context is copied, so it is
wrapped to run with it set. On a sync server the wrapper sets it around the handler and around each step of a
streaming handler's response iterator, on the pool thread that runs the step, and resets it after.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Final, TypeAlias

try:
    import grpc
    import grpc.aio
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError('k8s_jwt_auth.integrations.grpc needs grpcio: pip install "k8s-jwt-auth[grpc]"') from exc

from k8s_jwt_auth import (
    AuthError,
    ConfigurationError,
    PolicyDenied,
    Rule,
    ServiceUnavailable,
    TokenVerifier,
    VerifierConfig,
)
from k8s_jwt_auth.gate import Gate
from k8s_jwt_auth.http import error_response
from k8s_jwt_auth.identity import WorkloadIdentity
from k8s_jwt_auth.options import flag_option
from k8s_jwt_auth.policy import Policy

from ._common import build_verifier

__all__ = [
    "HEALTH_METHODS",
    "AioK8sJWTAuthInterceptor",
    "K8sJWTAuthInterceptor",
    "MethodRules",
    "NoWorkloadError",
    "RefusalStatus",
    "current_workload",
    "get_current_workload",
    "refusal_status",
]

logger = logging.getLogger("k8s_jwt_auth.integrations.grpc")

HEALTH_METHODS: Final = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch")
"""The standard health-checking service's methods: the default `exempt_methods` (probes carry no token)."""

MethodRules: TypeAlias = Mapping[str, "str | Sequence[str | Rule] | Policy"]
"""`rules=`: full method names (`/pkg.Service/Method`) or globs over them → the rules for those methods: compact
rule strings as `K8S_JWT_AUTH_ALLOW` takes them (`"payments/*, !payments/batch"` or a list), `Rule`s, or a
`Policy`."""

PUSHBACK_KEY: Final = "grpc-retry-pushback-ms"
_AUTHORIZATION: Final = "authorization"
_WILDCARD = re.compile(r"[*?\[]")
_GLOB_PART = re.compile(r"\[[^\]]*\]|[*?]")
_MEMO_SIZE = 4096  # methods remembered by the policy lookup; a client sending random names only clears it

_CURRENT: contextvars.ContextVar[WorkloadIdentity | None] = contextvars.ContextVar(
    "k8s_jwt_auth.integrations.grpc.workload", default=None)


# -- the workload inside a handler ---------------------------------------------------------------------------


class NoWorkloadError(LookupError):
    """`current_workload()` was called where no verified workload is: outside a handler, in an exempt method, or
    in an anonymous call (optional mode without a token)."""


def current_workload() -> WorkloadIdentity:
    """The verified workload of the call being handled (sync or aio handler, streaming ones included).

    Raises:
        NoWorkloadError: outside a call our interceptor authenticated (an exempt method, an anonymous call in
            optional mode, or code that is not running a handler).
    """
    workload = _CURRENT.get()
    if workload is None:
        raise NoWorkloadError("no verified workload here: current_workload() works inside the handler of a call "
                              "that K8sJWTAuthInterceptor or AioK8sJWTAuthInterceptor authenticated (not in an "
                              "exempt method or an anonymous call; use get_current_workload() there)")
    return workload


def get_current_workload() -> WorkloadIdentity | None:
    """The verified workload of the call being handled, or `None` (anonymous, exempt, or no call at all)."""
    return _CURRENT.get()


# -- refusals ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefusalStatus(grpc.Status):
    """How a refusal ends a call: a `grpc.Status`, for `context.abort_with_status(...)` (sync and aio).

    Attributes:
        code: `UNAUTHENTICATED`, `PERMISSION_DENIED` or `UNAVAILABLE`.
        details: `<reason>: <message>`, e.g. `expired: the token has expired`; never the token.
        trailing_metadata: `grpc-retry-pushback-ms` for `UNAVAILABLE` (the error's `retry_after`), else empty.
    """

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str], ...] = ()


def refusal_status(error: AuthError) -> RefusalStatus:
    """The gRPC status of a refusal: 401 → `UNAUTHENTICATED`, 403 → `PERMISSION_DENIED`, 503 → `UNAVAILABLE`.

    The message is the one an HTTP adapter puts in its JSON body (for `UNAVAILABLE`, the error's public sentence,
    which names no internal URL). Any other `AuthError` fails closed as `UNAUTHENTICATED`.
    """
    message = error_response(error).body["message"]
    details = f"{error.reason}: {message}"
    if isinstance(error, ServiceUnavailable):
        return RefusalStatus(grpc.StatusCode.UNAVAILABLE, details, ((PUSHBACK_KEY, str(error.retry_after * 1000)),))
    if isinstance(error, PolicyDenied):
        return RefusalStatus(grpc.StatusCode.PERMISSION_DENIED, details)
    return RefusalStatus(grpc.StatusCode.UNAUTHENTICATED, details)


def _credentials(metadata: Iterable[tuple[str, str | bytes]] | None) -> list[str | bytes]:
    """Every `authorization` value of the call's metadata (gRPC keys are lower-case): a repeated one is refused."""
    return [value for key, value in metadata or () if key == _AUTHORIZATION]


# -- which methods, which rules --------------------------------------------------------------------------------


def _check_method(key: object, setting: str) -> bool:
    """Validate a method name or glob; whether it is a glob.

    Raises:
        ConfigurationError: `key` can never match a gRPC method.
    """
    if not isinstance(key, str):
        raise ConfigurationError(f"{setting}: {key!r} is not a method name; use '/package.Service/Method' or a "
                                 "glob such as '/package.Service/*'")
    if not key.startswith("/") or any(c.isspace() for c in key):
        raise ConfigurationError(f"{setting}: {key!r} can never match a gRPC method: full method names start with "
                                 "'/' and have no spaces ('/package.Service/Method', or a glob such as "
                                 "'/package.Service/*')")
    if _WILDCARD.search(key) is not None:
        if key.count("/") > 2:
            raise ConfigurationError(f"{setting}: {key!r} can never match a gRPC method: a full method name has "
                                     "exactly two '/' ('/package.Service/Method')")
        return True
    service, slash, name = key[1:].partition("/")
    if not service or not slash or not name or "/" in name:
        raise ConfigurationError(f"{setting}: {key!r} is not a full method name '/package.Service/Method' "
                                 "(a glob such as '/package.Service/*' matches several)")
    return False


def _rule_policy(key: str, value: object) -> Policy:
    """The policy of one `rules=` entry.

    Raises:
        ConfigurationError: a value that is not rules, a rule that does not parse, or no rule at all.
    """
    setting = f"rules[{key!r}]"
    try:
        if isinstance(value, Policy):
            policy = value
        elif isinstance(value, str):
            policy = Policy.parse(value)
        elif isinstance(value, (list, tuple)) and all(isinstance(r, (str, Rule)) for r in value):
            policy = Policy(value)
        else:
            raise ConfigurationError(f"expected rule strings ('payments/*, !payments/batch' or a list), Rules or "
                                     f"a Policy, not {type(value).__name__}")
    except ConfigurationError as exc:
        raise ConfigurationError(f"{setting}: {exc.message}") from exc
    if policy.is_open:
        raise ConfigurationError(f"{setting}: no rule given; '*/*' allows every verified workload")
    return policy


def _specificity(glob: str) -> tuple[int, int]:
    """How specific a glob is: its literal start's length, then its count of literal characters."""
    return _WILDCARD.search(glob).start(), len(_GLOB_PART.sub("", glob))  # type: ignore[union-attr]  # a glob


class _MethodTable:
    """Exact method names and globs → values; an exact name beats every glob, then the most specific glob wins
    (longest literal start, then most literal characters); two globs that tie on both are refused."""

    __slots__ = ("exact", "globs")

    def __init__(self, entries: Iterable[tuple[str, Any]], setting: str) -> None:
        self.exact: dict[str, Any] = {}
        globs: dict[str, tuple[tuple[int, int], Any]] = {}
        for key, value in entries:
            if _check_method(key, setting):
                globs[key] = (_specificity(key), value)
            else:
                self.exact[key] = value
        ordered = sorted(globs.items(), key=lambda item: (-item[1][0][0], -item[1][0][1], item[0]))
        for (first, (rank, _)), (second, (other, _)) in zip(ordered, ordered[1:], strict=False):
            if rank == other and first[:rank[0]] == second[:rank[0]]:
                raise ConfigurationError(
                    f"{setting}: the globs {first!r} and {second!r} are equally specific (the same literal start, "
                    "as many literal characters): which one decides a method both match would be arbitrary; name "
                    "the methods exactly or make one glob more specific")
        self.globs: tuple[tuple[str, Any], ...] = tuple((glob, value) for glob, (_, value) in ordered)

    def find(self, method: str) -> tuple[bool, Any]:
        """`(True, value)` of the entry deciding `method`, or `(False, None)`."""
        if method in self.exact:
            return True, self.exact[method]
        for glob, value in self.globs:
            if fnmatchcase(method, glob):
                return True, value
        return False, None


# -- the interceptors ------------------------------------------------------------------------------------------


class _Interceptor:
    """What both interceptors share: settings, the gate, and the policy of each method."""

    def __init__(self, verifier: TokenVerifier | VerifierConfig | None = None, *,
                 rules: MethodRules | None = None, exempt_methods: Sequence[str] | None = HEALTH_METHODS,
                 optional: bool = False) -> None:
        self.gate = Gate(build_verifier(verifier), logger=logger)
        self.verifier, self.policy = self.gate.verifier, self.gate.policy
        self.optional = flag_option(optional)
        exempt = HEALTH_METHODS if exempt_methods is None else exempt_methods
        if isinstance(exempt, (str, bytes)) or not isinstance(exempt, Iterable):
            raise ConfigurationError(f"exempt_methods must be a list of method names, not {exempt!r}")
        self.exempt_methods: tuple[str, ...] = tuple(exempt)
        self._exempt = _MethodTable(((method, True) for method in self.exempt_methods), "exempt_methods")
        if rules is not None and not isinstance(rules, Mapping):
            raise ConfigurationError(f"rules must be a mapping of method names or globs to rules, not "
                                     f"{type(rules).__name__}")
        self._rules = _MethodTable(((key, _rule_policy(key, value)) for key, value in (rules or {}).items()),
                                   "rules")
        for key in self._rules.exact:
            if self._exempt.find(key)[0]:
                raise ConfigurationError(f"rules[{key!r}]: the method is also exempt (exempt_methods), so its rules "
                                         "would never apply; remove it from exempt_methods or from rules")
        self._methods: dict[str, _Method] = {}

    def policy_for(self, method: str) -> Policy | None:
        """The policy deciding calls to `method`: its `rules` entry, else the service policy; `None` if exempt."""
        return self._method(method).policy

    def _method(self, method: str) -> _Method:
        """What is decided per method, once: its policy and whether optional mode applies to it (only without
        rules of its own, as a route's own rules need a token behind an optional enforcing layer)."""
        found = self._methods.get(method)
        if found is not None:
            return found
        if self._exempt.find(method)[0]:
            found = _Method(self.gate, method, None, True)
        else:
            has_rules, policy = self._rules.find(method)
            found = _Method(self.gate, method, policy, False) if has_rules else \
                _Method(self.gate, method, self.policy, self.optional)
        if len(self._methods) >= _MEMO_SIZE:  # a client sending random method names only clears it
            self._methods.clear()
        self._methods[method] = found
        return found

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(policy={self.policy!r}, rules={len(self._rules.exact) + len(self._rules.globs)}"
                f", exempt_methods={self.exempt_methods!r}, optional={self.optional})")


class K8sJWTAuthInterceptor(_Interceptor, grpc.ServerInterceptor):
    """A `grpc.ServerInterceptor` for sync servers: every call but the exempt ones needs an allowed workload.

    ```python
    server = grpc.server(futures.ThreadPoolExecutor(16), interceptors=[K8sJWTAuthInterceptor(verifier)])
    ```

    The token is verified on the server's thread pool, just before the method's handler runs (see the module
    docstring); `current_workload()` returns it inside the handler, streaming ones included.

    Args:
        verifier: a `TokenVerifier`, a `VerifierConfig`, or `None` to build one from `K8S_JWT_AUTH_*`
            environment variables (`VerifierConfig.from_env()`).
        rules: per-method rules: full method names (`/pkg.Service/Method`) or globs over them (`/pkg.Service/*`)
            → compact rule strings (`"payments/*, !payments/batch"`, or a list), `Rule`s or a `Policy`. An entry
            replaces the service policy for its methods; methods without one get the service policy
            (`verifier.policy`, `K8S_JWT_AUTH_ALLOW`). An exact name beats a glob; among globs the longest
            literal start wins, then the most literal characters; globs that tie on both are refused.
        exempt_methods: methods (or globs) let through without a token; default the health service's `Check`
            and `Watch` (`HEALTH_METHODS`); `()` for none. Exempt beats `rules`.
        optional: let calls *without* a token through anonymously (a bad token is still refused), for methods
            without a `rules` entry; methods with rules always need a token.

    Raises:
        ConfigurationError: at construction, for invalid settings, a key that can never match a gRPC method,
            an entry without rules, ambiguous globs, or a method both exempt and in `rules`.
    """

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Pick the method's policy and wrap its handler in the check (runs on the server's dispatch thread)."""
        found = self._method(handler_call_details.method)
        if found.policy is None:
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: the caller learns it only once admitted, as behind HTTP middleware
            return grpc.stream_stream_rpc_method_handler(found.unimplemented)
        return found.guarded(handler)


class AioK8sJWTAuthInterceptor(_Interceptor, grpc.aio.ServerInterceptor):
    """A `grpc.aio.ServerInterceptor`: `K8sJWTAuthInterceptor` for `grpc.aio.server(interceptors=[...])`.

    The token is verified in `intercept_service` with `Gate.aadmit` (a key fetch never blocks the event loop); a
    refused call ends there, before the method's handler is even looked up. Handlers may be coroutines, async
    generators or plain functions (run by grpc on its thread pool); `current_workload()` works in all of them.
    Same arguments as `K8sJWTAuthInterceptor`.

    Raises:
        ConfigurationError: at construction, as `K8sJWTAuthInterceptor`.
    """

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Coroutine[Any, Any, grpc.RpcMethodHandler[Any, Any] | None]:
        """Verify the call's token and apply the method's policy; refuse it, or hand it to its handler.

        Raises:
            TypeError: called outside an event loop: by a sync `grpc.server`, which would otherwise get a
                coroutine for a handler and lose its serving thread (every later call hanging until its
                deadline); it logs this error and answers the call `UNKNOWN`. Use `K8sJWTAuthInterceptor` there.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise TypeError("AioK8sJWTAuthInterceptor serves grpc.aio.server(); give grpc.server() "
                            "K8sJWTAuthInterceptor") from None
        return self._intercept(continuation, handler_call_details)

    async def _intercept(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        found = self._method(handler_call_details.method)
        if found.policy is None:
            return await continuation(handler_call_details)
        outcome = await self.gate.aadmit(_credentials(handler_call_details.invocation_metadata), policy=found.policy,
                                         optional=found.optional, path=found.name, transport="grpc")
        if outcome.error is not None:
            return _refusal_handler(refusal_status(outcome.error))
        # The call's own context (grpc.aio runs each call in a task, and the interceptors, the handler lookup and
        # coroutine or async-generator handlers in its context): later interceptors and the handler see it.
        _CURRENT.set(outcome.workload)
        handler = await continuation(handler_call_details)
        return None if handler is None else _on_its_thread(handler, outcome.workload)


# -- sync servers: the check runs in the handler ---------------------------------------------------------------


class _Method:
    """One method's policy and, for sync servers, its check and its last handler wrapped in it.

    A generic or generated handler is the same object call after call: its wrapped twin is built once (the
    `(handler, guarded)` pair is replaced in one assignment, so that racing servers never mismatch them).
    """

    __slots__ = ("gate", "last", "name", "optional", "policy")

    def __init__(self, gate: Gate, name: str, policy: Policy | None, optional: bool) -> None:
        self.gate, self.name, self.policy, self.optional = gate, name, policy, optional
        self.last: tuple[object, grpc.RpcMethodHandler[Any, Any]] | None = None

    def check(self, context: grpc.ServicerContext) -> WorkloadIdentity | None:
        """The admitted workload (`None`: anonymous); a refusal aborts the call (`abort_with_status` raises).
        Runs on the sync server's thread pool, in the call's handler."""
        outcome = self.gate.admit(_credentials(context.invocation_metadata()), policy=self.policy,
                                  optional=self.optional, path=self.name, transport="grpc")
        if outcome.error is not None:
            context.abort_with_status(refusal_status(outcome.error))
        return outcome.workload

    def guarded(self, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        """`handler` wrapped in the check (built once per handler object)."""
        last = self.last
        if last is not None and last[0] is handler:
            return last[1]
        guarded = _guarded(handler, self.check)
        self.last = (handler, guarded)
        return guarded

    def unimplemented(self, request_iterator: object, context: grpc.ServicerContext) -> None:
        """The handler of an unknown method: refused like any other, or `UNIMPLEMENTED` once admitted."""
        self.check(context)
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


_FACTORIES: Final = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}
# grpc's _server.py reads these on a behaviour (its own pool; a behaviour taking a send-response callback, as the
# health service's Watch): the wrapper, which passes every argument on, carries them too
_EXPERIMENTAL: Final = ("experimental_thread_pool", "experimental_non_blocking")


def _rebuilt(handler: grpc.RpcMethodHandler[Any, Any],
             behaviour: Callable[..., Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same kind and serializers as `handler`, with `behaviour`."""
    _, factory = _FACTORIES[handler.request_streaming, handler.response_streaming]
    return factory(behaviour, request_deserializer=handler.request_deserializer,
                   response_serializer=handler.response_serializer)


def _behaviour(handler: grpc.RpcMethodHandler[Any, Any]) -> Callable[..., Any]:
    name, _ = _FACTORIES[handler.request_streaming, handler.response_streaming]
    behaviour: Callable[..., Any] = getattr(handler, name)
    return behaviour


def _guarded(handler: grpc.RpcMethodHandler[Any, Any],
             check: Callable[[grpc.ServicerContext], WorkloadIdentity | None]) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler`, checking the call first and running with its workload as `current_workload()`."""
    behaviour, streaming = _behaviour(handler), handler.response_streaming

    def guarded(request: Any, context: grpc.ServicerContext, *more: Any) -> Any:
        workload = check(context)
        token = _CURRENT.set(workload)
        try:
            result = behaviour(request, context, *more)
        finally:
            _CURRENT.reset(token)
        return _steps(result, workload) if streaming and result is not None else result

    for name in _EXPERIMENTAL:
        if hasattr(behaviour, name):
            setattr(guarded, name, getattr(behaviour, name))
    return _rebuilt(handler, guarded)


def _steps(responses: Iterable[Any], workload: WorkloadIdentity | None) -> Iterator[Any]:
    """Iterate a streaming handler's responses with `workload` set around each step (where its code runs)."""
    iterator = iter(responses)
    try:
        while True:
            token = _CURRENT.set(workload)
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                _CURRENT.reset(token)
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


# -- aio servers: the check ran in intercept_service -----------------------------------------------------------


def _refusal_handler(status: RefusalStatus) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler that ends any call with `status`. Stream-stream: it reads no request, whatever the call's kind."""

    async def refuse(request_iterator: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(status.code, status.details, status.trailing_metadata)

    return grpc.stream_stream_rpc_method_handler(refuse)


def _on_its_thread(handler: grpc.RpcMethodHandler[Any, Any],
                   workload: WorkloadIdentity | None) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` as is when grpc.aio runs it in the call's context (a coroutine or async-generator function);
    a plain function, which grpc.aio runs on its thread pool (no context copied there), wrapped so that it runs
    with `workload` set, its streamed responses too."""
    behaviour, streaming = _behaviour(handler), handler.response_streaming
    if inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour):
        return handler

    def function(request: Any, context: Any) -> Any:
        token = _CURRENT.set(workload)
        try:
            result = behaviour(request, context)
        finally:
            _CURRENT.reset(token)
        return _steps(result, workload) if streaming and result is not None else result

    return _rebuilt(handler, function)
