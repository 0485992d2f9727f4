"""Flask: authenticate Kubernetes workloads with the `K8sJWTAuth` extension.

```python
from flask import Flask
from k8s_jwt_auth.integrations.flask import K8sJWTAuth, current_workload, workload_required

auth = K8sJWTAuth()

def create_app() -> Flask:
    app = Flask(__name__)
    app.config["K8S_JWT_AUTH_ISSUER"] = "https://kubernetes.default.svc.cluster.local"
    app.config["K8S_JWT_AUTH_AUDIENCES"] = ["payments-api"]
    auth.init_app(app)                   # one TokenVerifier per app, in app.extensions["k8s_jwt_auth"]

    @app.get("/charge")
    @workload_required("payments/*", "!payments/batch")
    def charge():
        return {"caller": current_workload.username}

    return app
```

Settings are read from `app.config` once, in `init_app`: the verifier settings (`K8S_JWT_AUTH_ISSUER`,
`..._AUDIENCES`, `..._JWKS_URI`, `..._ALLOW`, ..., the suffixes of `VerifierConfig`) and the extension's own
(`CONFIG_DEFAULTS`: `..._ENFORCE`, `..._OPTIONAL`, `..._EXEMPT_PATHS`, `..._EXEMPT_ENDPOINTS`, `..._HEADER`,
`..._REALM`). Or give `verifier=` (a `TokenVerifier` or `VerifierConfig`) to the extension or to `init_app`.

Refusals: 401 (`WWW-Authenticate: Bearer ...`, RFC 6750) for missing or invalid tokens, 403 for policy
denials, 503 with `Retry-After` when the token cannot be checked now (keys or TokenReview unavailable); the
body is `{"error", "reason", "message"}`.
`init_app` registers one error handler, for `AuthError`; override the response with `@auth.error_handler`.
Tokens are never logged: logs (logger `k8s_jwt_auth.integrations.flask`) show the token's SHA-256 fingerprint.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar, cast

try:
    from flask import Flask, Request, Response, after_this_request, current_app, g, has_app_context, has_request_context
    from flask import request as flask_request
    from flask.signals import request_started
    from flask.testing import FlaskClient
    from flask.typing import ResponseReturnValue
    from werkzeug.local import LocalProxy
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError('k8s_jwt_auth.integrations.flask needs Flask: pip install "k8s-jwt-auth[flask]"') from exc

from k8s_jwt_auth import (
    AlreadyInstalled,
    AuthError,
    ConfigurationError,
    Policy,
    Rule,
    TokenVerifier,
    VerifierConfig,
)
from k8s_jwt_auth.config import ENV_PREFIX, parse_list
from k8s_jwt_auth.gate import AUTHENTICATE_ONLY, Gate
from k8s_jwt_auth.http import error_response
from k8s_jwt_auth.identity import WorkloadIdentity
from k8s_jwt_auth.options import AdapterOptions, flag_option

from ._common import GateView, build_verifier

if TYPE_CHECKING:
    from k8s_jwt_auth.testing import FakeIssuer

__all__ = [
    "CONFIG_DEFAULTS",
    "EXTENSION_KEY",
    "ErrorHandler",
    "K8sJWTAuth",
    "K8sJWTAuthClient",
    "K8sJWTAuthState",
    "auth_error_response",
    "current_workload",
    "get_current_workload",
    "verify_workload_in_request",
    "workload_client",
    "workload_exempt",
    "workload_required",
]

logger = logging.getLogger("k8s_jwt_auth.integrations.flask")

EXTENSION_KEY = "k8s_jwt_auth"
"""The `app.extensions` key holding the app's `K8sJWTAuthState`."""

CONFIG_DEFAULTS: Mapping[str, object] = MappingProxyType({
    "K8S_JWT_AUTH_ENFORCE": False,
    "K8S_JWT_AUTH_OPTIONAL": False,
    "K8S_JWT_AUTH_EXEMPT_PATHS": (),
    "K8S_JWT_AUTH_EXEMPT_ENDPOINTS": (),
    "K8S_JWT_AUTH_HEADER": "Authorization",
    "K8S_JWT_AUTH_REALM": None,
})
"""The extension's own settings and their defaults (set with `app.config.setdefault` in `init_app`).

They are never passed to `VerifierConfig.from_mapping`; every other `K8S_JWT_AUTH_*` key is a verifier setting.
"""

ErrorHandler = Callable[[AuthError], "ResponseReturnValue | Awaitable[ResponseReturnValue]"]
"""What `@K8sJWTAuth.error_handler` takes: the `AuthError` in, any Flask response value out (sync or async)."""

_T = TypeVar("_T")
_HandlerT = TypeVar("_HandlerT", bound=ErrorHandler)
_ViewT = TypeVar("_ViewT", bound=Callable[..., Any])

_G_KEY = "_k8s_jwt_auth"  # g attribute holding the request's `_RequestAuth`
_EXEMPT_ATTR = "_k8s_jwt_auth_exempt"
_RULES_ATTR = "_k8s_jwt_auth_rules"  # on a @workload_required wrapper: its own Policy (the route's rules)
# Views passed to @workload_required (the undecorated functions). One of them registered as a route means the
# decorator sat ABOVE the route decorator, so Flask routes to the unprotected function: such a route is refused
# (fail closed) and init_app refuses to start with one. Weak: it never keeps a function alive.
_GUARDED_VIEWS: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()


@dataclass(frozen=True, slots=True, kw_only=True)
class K8sJWTAuthState(GateView):
    """Per-app state, `app.extensions["k8s_jwt_auth"]`: built once by `init_app`, never changed.

    Attributes:
        extension: the `K8sJWTAuth` that initialised the app (holds the error handler).
        gate: the app's request pipeline (its verifier, and the service policy `K8S_JWT_AUTH_ALLOW`).
        options: `K8S_JWT_AUTH_HEADER`, `..._REALM`, `..._OPTIONAL`, `..._EXEMPT_PATHS`, parsed as every adapter
            parses them (`k8s_jwt_auth.options`).
        enforce: whether every request is authenticated before its view (`K8S_JWT_AUTH_ENFORCE`).
        exempt_endpoints: endpoint names the enforcing mode lets through.
    """

    extension: K8sJWTAuth
    gate: Gate
    options: AdapterOptions
    enforce: bool
    exempt_endpoints: frozenset[str]


class K8sJWTAuth:
    """The Flask extension: one verifier per app, an `AuthError` handler and the optional enforcing mode.

    Args:
        app: the app to initialise now; or call `init_app(app)` later (application factories).
        verifier: a `TokenVerifier` or `VerifierConfig` for every app this extension initialises, instead of
            the `K8S_JWT_AUTH_*` verifier settings in `app.config`.

    Raises:
        ConfigurationError: (from `init_app`) for missing or invalid settings, naming the key.
    """

    def __init__(self, app: Flask | None = None, *, verifier: TokenVerifier | VerifierConfig | None = None) -> None:
        self._verifier = verifier
        self._error_handler: ErrorHandler | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, *, verifier: TokenVerifier | VerifierConfig | None = None) -> None:
        """Read the app's settings, build its verifier, register the error handler and hooks.

        Args:
            app: the Flask app.
            verifier: overrides the extension's `verifier` and the `app.config` verifier settings.

        Raises:
            ConfigurationError: for missing or invalid settings, naming the `app.config` key.
            AlreadyInstalled: when the app is already initialised (a `RuntimeError`).
        """
        if EXTENSION_KEY in app.extensions:
            raise AlreadyInstalled("this Flask app", "call K8sJWTAuth(app) or auth.init_app(app) once per app")
        wrong = _unguarded_views(app)
        if wrong:
            raise _wrong_order(wrong)
        for key, value in CONFIG_DEFAULTS.items():
            app.config.setdefault(key, value)
        built = _build_verifier(app.config, verifier if verifier is not None else self._verifier)
        app.extensions[EXTENSION_KEY] = _build_state(self, built, app.config)
        app.register_error_handler(AuthError, _handle_auth_error)
        request_started.connect(_on_request_started, app)
        app.before_request(_enforce)

    def error_handler(self, handler: _HandlerT) -> _HandlerT:
        """Register the function that renders refusals instead of `auth_error_response` (a decorator).

        ```python
        @auth.error_handler
        def refused(exc: AuthError):
            return {"denied": exc.reason}, exc.status_code
        ```

        It gets the `AuthError` (`status_code`, `reason`, ...) and returns any Flask response value.
        """
        self._error_handler = handler
        return handler


# -- settings --------------------------------------------------------------------------------------------


def _verifier_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The verifier settings in `app.config`: every `K8S_JWT_AUTH_*` key but the extension's, `None` meaning unset."""
    return {key: value for key, value in config.items()
            if key.startswith(ENV_PREFIX) and key not in CONFIG_DEFAULTS and value is not None}


def _build_verifier(config: Mapping[str, Any], given: TokenVerifier | VerifierConfig | None) -> TokenVerifier:
    settings = _verifier_settings(config)
    if given is not None and settings:
        logger.warning("verifier= given: ignoring %s in app.config", ", ".join(sorted(settings)))
    return build_verifier(given, lambda: VerifierConfig.from_mapping(settings, prefix=ENV_PREFIX))


def _build_state(extension: K8sJWTAuth, verifier: TokenVerifier, config: Mapping[str, Any]) -> K8sJWTAuthState:
    options = AdapterOptions.parse({suffix: config.get(ENV_PREFIX + suffix) for suffix in _SHARED_OPTIONS},
                                   lambda suffix: ENV_PREFIX + suffix)
    return K8sJWTAuthState(
        extension=extension,
        gate=Gate(verifier, logger=logger),
        options=options,
        enforce=_setting(config, "ENFORCE", flag_option),
        exempt_endpoints=_setting(config, "EXEMPT_ENDPOINTS", lambda v: frozenset(parse_list(v, "endpoints"))),
    )


_SHARED_OPTIONS = ("HEADER", "REALM", "OPTIONAL", "EXEMPT_PATHS")


def _setting(config: Mapping[str, Any], suffix: str, parse: Callable[[Any], _T]) -> _T:
    key = ENV_PREFIX + suffix
    value = config.get(key)
    try:
        return parse(CONFIG_DEFAULTS[key] if value is None else value)
    except (ValueError, TypeError) as exc:  # ConfigurationError is a ValueError
        message = exc.message if isinstance(exc, ConfigurationError) else str(exc)
        raise ConfigurationError(f"{key}: {message}", setting=suffix) from exc


def _state(app: Flask | None = None) -> K8sJWTAuthState:
    state = (current_app if app is None else app).extensions.get(EXTENSION_KEY)
    if not isinstance(state, K8sJWTAuthState):
        raise RuntimeError("K8sJWTAuth is not initialised on this app: call K8sJWTAuth(app) or auth.init_app(app)")
    return state


# -- authentication --------------------------------------------------------------------------------------


class _RequestAuth:
    """What the extension knows about one request, kept on the request object (and on `g`, its documented home).

    Found through the request object, not `g`: requests made inside one outer `app.app_context()` share `g`.
    """

    __slots__ = ("admitted_by", "error", "gated", "responding", "workload")

    def __init__(self) -> None:
        self.gated = False  # whether `workload` passed a gate
        self.workload: WorkloadIdentity | None = None
        self.error: AuthError | None = None  # the refusal, once the request is refused
        self.responding = False  # set once the response is built (after_request hooks and later)
        self.admitted_by: Policy | None = None  # the rules of the last gate passed (audited once per policy)


def _record(current: Request | None = None) -> _RequestAuth:
    if current is None:
        current = _current_request()
    record = current.__dict__.get(_G_KEY)  # kept on the request too: found again without a proxy hop
    if isinstance(record, _RequestAuth):
        return record
    record = _RequestAuth()
    setattr(g, _G_KEY, record)  # documented home (g._k8s_jwt_auth); g may outlive the request (outer app context)
    current.__dict__[_G_KEY] = record
    return record


def _current_request() -> Request:
    """The request object behind the `request` proxy: read once, then its attributes cost no proxy hop each."""
    current: Request = flask_request._get_current_object()  # type: ignore[attr-defined]
    return current


def _credentials(request: Request, options: AdapterOptions) -> str | None:
    """The credentials header's value, from the environ (a WSGI server joins a repeated header into one value)."""
    return request.environ.get(options.meta_key)


def _gate(state: K8sJWTAuthState, policy: Policy | None, optional: bool,
          request: Request | None = None) -> WorkloadIdentity | None:
    """Pass the request through one gate: `policy` (the enforcing layer gives the service policy), or `None` for a
    route-layer gate without rules (the service policy, unless the view's `@workload_required` has rules).

    The first gate of a request verifies the token; later ones reuse the workload and only apply rules of their
    own (docs/policy-model.md). The refusal is recorded on the request and raised (rendered by the error handler).
    """
    if request is None:
        request = _current_request()
    record = _record(request)
    path, method = request.path, request.method
    if record.workload is not None:  # verified by an earlier gate of this request
        if policy is None or policy is record.admitted_by:
            return record.workload
        outcome = state.gate.authorize(record.workload, policy=policy, path=path, method=method)
    else:
        chosen = policy
        if chosen is None and _view_rules() is not None:
            chosen = AUTHENTICATE_ONLY  # the view's @workload_required rules decide, not the service policy
        outcome = state.gate.admit(_credentials(request, state.options), policy=chosen, optional=optional,
                                   path=path, method=method)
    if outcome.error is not None:
        record.error = outcome.error
        raise outcome.error
    record.gated, record.workload = True, outcome.workload
    if outcome.workload is not None and policy is not None:
        record.admitted_by = policy
    return outcome.workload


def _view_rules() -> Policy | None:
    """The rules of the current endpoint's `@workload_required(...)`, if it has some."""
    endpoint = flask_request.endpoint
    view = current_app.view_functions.get(endpoint) if endpoint is not None else None
    rules = getattr(view, _RULES_ATTR, None)
    return rules if isinstance(rules, Policy) else None


def _view_policy(rules: tuple[str | Rule, ...], policy: Policy | None) -> Policy | None:
    if rules and callable(rules[0]):
        raise TypeError("use @workload_required() with parentheses")
    if rules and policy is not None:
        raise ConfigurationError("give policy rules either as *rules or as policy=, not both")
    return Policy(rules) if rules else policy


def verify_workload_in_request(
    *rules: str | Rule, policy: Policy | None = None, optional: bool = False
) -> WorkloadIdentity | None:
    """Authenticate the current request and apply a policy: the non-decorator form of `workload_required`.

    ```python
    @bp.before_request
    def authenticate() -> None:                    # return None: a before_request value is a response
        verify_workload_in_request("payments/*")
    ```

    Args:
        *rules: compact policy rules (`payments/*`, `!kube-system/*`, `frontend/web/web-*`).
        policy: a `Policy` instead of `rules` (e.g. `Policy.parse(..., dry_run=True)`). With neither, the
            app's policy applies (`K8S_JWT_AUTH_ALLOW`).
        optional: return `None` for requests without bearer credentials (a bad token is still refused).

    Returns:
        The verified workload (also `current_workload` from now on), or `None` in optional mode.

    Raises:
        InvalidToken: 401, with the reason (`missing_token`, `malformed`, `expired`, ...).
        PolicyDenied: 403.
        ServiceUnavailable: 503 (keys or TokenReview unavailable).
        ConfigurationError: for rules that do not parse, or both `rules` and `policy`.
    """
    return _gate(_state(), _view_policy(rules, policy), optional)


def workload_required(
    *rules: str | Rule, policy: Policy | None = None, optional: bool = False
) -> Callable[[_ViewT], _ViewT]:
    """A view decorator: the view runs only for a verified workload that the policy allows.

    ```python
    @app.post("/charge")
    @workload_required("payments/*", "!payments/batch")
    def charge():
        return {"caller": current_workload.username}
    ```

    Async views work (`current_app.ensure_sync`). Rules are parsed when the view is decorated, so a typo fails
    at import. The refusal is raised as an `AuthError` and rendered by the extension's error handler.

    Args:
        *rules: compact policy rules for this view; they replace the app's policy (which the enforcing mode
            still applies before the view).
        policy: a `Policy` for this view, instead of `rules`.
        optional: run the view with `current_workload` `None` for requests without bearer credentials.

    Raises:
        ConfigurationError: for rules that do not parse, or both `rules` and `policy`.
        TypeError: when used without parentheses.
    """
    view_policy = _view_policy(rules, policy)

    def decorator(view: _ViewT) -> _ViewT:
        _GUARDED_VIEWS.add(view)

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _gate(_state(), view_policy, optional)
            return current_app.ensure_sync(view)(*args, **kwargs)

        setattr(wrapper, _RULES_ATTR, view_policy)
        return cast(_ViewT, wrapper)

    return decorator


def workload_exempt(view: _ViewT) -> _ViewT:
    """Mark a view as exempt from the enforcing mode (`K8S_JWT_AUTH_ENFORCE`), e.g. a health check.

    Put it below the route decorator. It does not undo `workload_required` on the same view.
    """
    setattr(view, _EXEMPT_ATTR, True)
    return view


def _is_exempt(state: K8sJWTAuthState, request: Request, view: object) -> bool:
    endpoint = request.endpoint
    if endpoint is not None and endpoint in state.exempt_endpoints:
        return True
    if state.exempt_paths and state.exempt_paths(request.path):
        return True
    return bool(getattr(view, _EXEMPT_ATTR, False))


def _unguarded_views(app: Flask) -> list[str]:
    """Endpoints whose registered view is a function that @workload_required wrapped AFTER it was registered."""
    return sorted(endpoint for endpoint, view in app.view_functions.items() if view in _GUARDED_VIEWS)


def _wrong_order(endpoints: list[str]) -> ConfigurationError:
    return ConfigurationError(
        f"view(s) {', '.join(map(repr, endpoints))}: @workload_required is above the route decorator, so Flask "
        "registered the view without it; put @workload_required below @app.route / @app.get (nearest the "
        "function)")


def _enforce() -> None:
    """The `before_request` hook: refuse a route registered without its @workload_required, then the enforcing
    mode."""
    request = _current_request()
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    endpoint = request.endpoint
    view = app.view_functions.get(endpoint) if endpoint is not None else None
    if view is not None and view in _GUARDED_VIEWS:
        raise _wrong_order([endpoint])  # type: ignore[list-item]  # fail closed: never serve it unauthenticated
    state = _state(app)
    if state.enforce and not _is_exempt(state, request, view):
        _gate(state, state.policy, state.optional, request)  # the enforcing layer: always the service policy


def _on_request_started(sender: Flask, **extra: object) -> None:
    """Flag the response phase: `after_this_request` functions run before every `after_request` hook."""
    record = _record()

    def responding(response: Response) -> Response:
        record.responding = True
        return response

    after_this_request(responding)


# -- current_workload ------------------------------------------------------------------------------------


def _load_workload() -> WorkloadIdentity | None:
    if not has_request_context():
        return None
    record = _record()
    if record.gated or record.error is not None:
        return record.workload  # None when refused before any gate passed: later hooks see no workload
    state = _state()
    if not record.responding:
        return _gate(state, None, optional=True)
    try:
        return _gate(state, None, optional=True)
    except AuthError:
        return None  # the response is built: a late failure reads as "no workload", never as a 500


def get_current_workload(*, load: bool = True) -> WorkloadIdentity | None:
    """The request's verified workload, or `None` (no bearer credentials, or no request context).

    Args:
        load: verify the request's token now if nothing has yet (as `current_workload` does), applying the
            app's policy. With `False`, only return what a decorator or the enforcing mode stored.

    Raises:
        InvalidToken, PolicyDenied, ServiceUnavailable: with `load`, for a bad token, a denied workload or
            unavailable keys (rendered by the extension's error handler), until the response is built.
    """
    if not load:
        return _record().workload if has_request_context() else None
    return _load_workload()


current_workload: WorkloadIdentity = cast(WorkloadIdentity, LocalProxy(_load_workload))
"""The request's verified `WorkloadIdentity` (a `LocalProxy`, kept on `g`), or a proxy to `None`.

Loaded lazily: if no decorator or enforcing hook has authenticated the request, the first access verifies the
token and applies the app's policy; a bad token raises (401/403/503 through the error handler). A proxy is never
`is None`: test it with `if current_workload:` or use `get_current_workload()`.
"""


# -- errors ----------------------------------------------------------------------------------------------


def auth_error_response(exc: AuthError, realm: str | None = None) -> Response:
    """Render an `AuthError` as a Flask `Response`: status, `WWW-Authenticate`/`Retry-After`, JSON body."""
    rendered = error_response(exc, realm)
    response_class = current_app.response_class if has_app_context() else Response
    return response_class(rendered.json_bytes(), status=rendered.status, headers=list(rendered.headers))


def _handle_auth_error(exc: AuthError) -> ResponseReturnValue:
    """The app's `errorhandler(AuthError)`: the extension's `error_handler`, or `auth_error_response`."""
    if isinstance(exc, ConfigurationError):
        raise exc  # a setup bug, not a refusal: Flask answers its usual 500
    state = _state()
    handler = state.extension._error_handler
    if handler is not None:
        return cast(ResponseReturnValue, current_app.ensure_sync(handler)(exc))
    return auth_error_response(exc, state.realm)


# -- testing ---------------------------------------------------------------------------------------------


class K8sJWTAuthClient(FlaskClient):
    """A Flask test client that sends `Bearer <token>` with every request (as flask-login's `FlaskLoginClient`).

    ```python
    app.test_client_class = K8sJWTAuthClient
    client = app.test_client(token=k8s_issuer.mint("payments", "worker", audiences="payments-api"))
    ```

    The token goes in the app's configured header (`K8S_JWT_AUTH_HEADER`); a request's own `headers=` win.

    Args:
        token: the bearer token; `None` sends none.
    """

    def __init__(self, *args: Any, token: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if token is not None:
            state = self.application.extensions.get(EXTENSION_KEY)
            header = state.header if isinstance(state, K8sJWTAuthState) else "Authorization"
            self.environ_base["HTTP_" + header.upper().replace("-", "_")] = f"Bearer {token}"


def workload_client(app: Flask, issuer: FakeIssuer, namespace: str = "default", service_account: str = "default",
                    **mint_options: Any) -> K8sJWTAuthClient:
    """A test client for `app` that calls as `namespace/service_account`, with a token minted by `issuer`.

    ```python
    client = workload_client(app, k8s_issuer, "payments", "worker", pod="worker-1")
    assert client.get("/whoami").json["namespace"] == "payments"
    ```

    Args:
        app: an app initialised with `K8sJWTAuth`.
        issuer: a `k8s_jwt_auth.testing.FakeIssuer` (e.g. the `k8s_issuer` pytest fixture).
        namespace: the caller's namespace.
        service_account: the caller's service account.
        **mint_options: more `FakeIssuer.mint` options (`pod=`, `lifetime=`, ...). `audiences` defaults to the
            app verifier's audiences.
    """
    state = app.extensions.get(EXTENSION_KEY)
    if isinstance(state, K8sJWTAuthState):
        mint_options.setdefault("audiences", tuple(state.verifier.config.audiences))
    token = issuer.mint(namespace, service_account, **mint_options)
    return K8sJWTAuthClient(app, app.response_class, token=token)
