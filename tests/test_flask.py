"""The Flask extension on small real apps built by a factory, driven by Flask's test client and a real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Blueprint, Flask, g, jsonify
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.serving import make_server
from werkzeug.wrappers import Response

from k8s_jwt_auth import AuthError, ConfigurationError, Policy, PolicyDenied, TokenVerifier, VerifierConfig
from k8s_jwt_auth.integrations.flask import (
    CONFIG_DEFAULTS,
    EXTENSION_KEY,
    K8sJWTAuth,
    K8sJWTAuthClient,
    K8sJWTAuthState,
    auth_error_response,
    current_workload,
    get_current_workload,
    verify_workload_in_request,
    workload_client,
    workload_exempt,
    workload_required,
)
from k8s_jwt_auth.testing import FakeIssuer

from ._asgi import MALFORMED_HEADERS, bad_tokens, bearer, static_verifier
from ._threaded import serving

LOGGER = "k8s_jwt_auth.integrations.flask"

views = Blueprint("views", __name__)


def workload_body() -> dict[str, Any]:
    workload = get_current_workload()
    return {"workload": workload.to_dict() if workload else None}


@views.get("/whoami")
@workload_required()
def whoami() -> dict[str, Any]:
    return current_workload.to_dict()


@views.get("/anyone")
@workload_required(optional=True)
def anyone() -> dict[str, Any]:
    return workload_body()


@views.get("/lazy")
def lazy() -> dict[str, Any]:
    return workload_body()  # no decorator: current_workload loads on first access


@views.get("/web-pods")
@workload_required("frontend/web/web-*")
def web_pods() -> dict[str, Any]:
    return current_workload.to_dict()


@views.get("/not-kube-system")
@workload_required("!kube-system/*")
def not_kube_system() -> dict[str, Any]:
    return current_workload.to_dict()


@views.get("/dry-run")
@workload_required(policy=Policy.parse("payments/*", dry_run=True))
def dry_run() -> dict[str, Any]:
    return current_workload.to_dict()


@views.get("/async")
@workload_required("payments/*")
async def async_view() -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"async": True, **current_workload.to_dict()}


@views.get("/inline")
def inline() -> dict[str, Any]:
    workload = verify_workload_in_request("payments/*", optional=True)
    return {"workload": workload.to_dict() if workload else None}


def stored_body() -> dict[str, Any]:
    workload = get_current_workload(load=False)
    return {"status": "ok", "workload": workload.to_dict() if workload else None}


@views.get("/healthz")
def healthz() -> dict[str, Any]:
    return stored_body()


@views.get("/public", defaults={"rest": ""})
@views.get("/public/", defaults={"rest": ""}, strict_slashes=True, endpoint="public_slash")
@views.get("/public/<path:rest>")
def public(rest: str) -> dict[str, Any]:
    return stored_body()


@views.get("/status")
def status() -> dict[str, Any]:
    return stored_body()


@views.get("/marked")
@workload_exempt
def marked() -> dict[str, Any]:
    return stored_body()


@views.get("/raise-denied")
def raise_denied() -> dict[str, Any]:
    raise PolicyDenied("no", rule="x/y")


@views.get("/raise-config")
def raise_config() -> dict[str, Any]:
    raise ConfigurationError("a setup bug")


def make_app(settings: Mapping[str, object] | None = None, *, verifier: TokenVerifier | VerifierConfig | None = None,
             extension: K8sJWTAuth | None = None) -> Flask:
    """The application factory of these tests."""
    app = Flask(__name__)
    app.config.update(TESTING=True, **(settings or {}))
    (extension or K8sJWTAuth()).init_app(app, verifier=verifier)
    app.register_blueprint(views)
    return app


@pytest.fixture
def base(issuer: FakeIssuer, tmp_path: Path) -> dict[str, object]:
    """app.config settings for a verifier with the fake issuer's keys in a JWKS file (no fetch)."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    return {"K8S_JWT_AUTH_ISSUER": issuer.issuer, "K8S_JWT_AUTH_AUDIENCES": ["test"],
            "K8S_JWT_AUTH_JWKS_FILE": str(jwks)}


@pytest.fixture
def build(base: dict[str, object]) -> Callable[..., Flask]:
    """An app from the base settings plus `**settings` (app.config keys without the K8S_JWT_AUTH_ prefix)."""

    def factory(**settings: object) -> Flask:
        return make_app({**base, **{f"K8S_JWT_AUTH_{key}": value for key, value in settings.items()}})

    return factory


@pytest.fixture
def app(build: Callable[..., Flask]) -> Flask:
    return build()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def error_body(response: Any) -> dict[str, str]:
    body = response.get_json()
    assert set(body) == {"error", "reason", "message"}
    assert response.headers["content-type"] == "application/json"
    return body


# -- outcomes --------------------------------------------------------------------------------------------


def test_valid_token_gives_the_identity(client: FlaskClient, issuer: FakeIssuer) -> None:
    token = issuer.mint("payments", "worker", pod="worker-1", node="node-a")
    response = client.get("/whoami", headers=bearer(token))
    assert response.status_code == 200
    assert response.get_json() == static_verifier(issuer).verify(token).to_dict()


def test_the_apps_policy_denies_with_403(build: Callable[..., Flask], issuer: FakeIssuer) -> None:
    client = build(ALLOW="payments/*,!payments/batch").test_client()
    allowed = client.get("/whoami", headers=bearer(issuer.mint("payments", "worker")))
    denied = client.get("/whoami", headers=bearer(issuer.mint("payments", "batch")))
    assert allowed.status_code == 200
    assert denied.status_code == 403
    assert denied.headers["www-authenticate"].startswith('Bearer error="insufficient_scope"')
    assert (error_body(denied)["error"], error_body(denied)["reason"]) == ("insufficient_scope", "policy_denied")


def test_per_view_rules_replace_the_apps_policy(build: Callable[..., Flask], issuer: FakeIssuer) -> None:
    client = build(ALLOW="payments/*").test_client()
    web_pod = bearer(issuer.mint("frontend", "web", pod="web-1"))
    assert client.get("/web-pods", headers=web_pod).status_code == 200
    assert client.get("/web-pods", headers=bearer(issuer.mint("frontend", "web", pod="cron-1"))).status_code == 403
    assert client.get("/web-pods", headers=bearer(issuer.mint("frontend", "web"))).status_code == 403
    assert client.get("/not-kube-system", headers=web_pod).status_code == 200
    assert client.get("/not-kube-system", headers=bearer(issuer.mint("kube-system", "x"))).status_code == 403
    assert client.get("/whoami", headers=web_pod).status_code == 403


def test_dry_run_from_app_config_logs_and_lets_through(build: Callable[..., Flask], issuer: FakeIssuer,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    client = build(ALLOW="payments/*", DRY_RUN="true").test_client()
    response = client.get("/whoami", headers=bearer(issuer.mint("kube-system", "admin")))
    assert response.status_code == 200
    assert [r.levelno for r in caplog.records if r.name == LOGGER] == [logging.WARNING]
    assert "policy dry run: system:serviceaccount:kube-system:admin would be denied" in caplog.text


def test_dry_run_policy_on_a_view(client: FlaskClient, issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    response = client.get("/dry-run", headers=bearer(issuer.mint("kube-system", "admin")))
    assert response.status_code == 200
    assert "would be denied" in caplog.text


def test_optional_view(client: FlaskClient, issuer: FakeIssuer, app: Flask) -> None:
    token = issuer.mint("payments", "worker")
    anonymous = client.get("/anyone")
    other_scheme = client.get("/anyone", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    bad = client.get("/anyone", headers=bearer("not-a-jwt"))
    good = client.get("/anyone", headers=bearer(token))
    assert anonymous.status_code == other_scheme.status_code == 200
    assert anonymous.get_json() == other_scheme.get_json() == {"workload": None}
    assert bad.status_code == 401
    assert error_body(bad)["reason"] == "malformed"
    assert good.get_json() == {"workload": app.extensions[EXTENSION_KEY].verifier.verify(token).to_dict()}


def test_async_view_with_the_decorator(client: FlaskClient, issuer: FakeIssuer) -> None:
    good = client.get("/async", headers=bearer(issuer.mint("payments", "worker")))
    denied = client.get("/async", headers=bearer(issuer.mint("kube-system", "admin")))
    assert good.status_code == 200
    assert good.get_json()["async"] is True
    assert good.get_json()["namespace"] == "payments"
    assert denied.status_code == 403


def test_verify_workload_in_request(client: FlaskClient, issuer: FakeIssuer) -> None:
    assert client.get("/inline").get_json() == {"workload": None}
    assert client.get("/inline", headers=bearer(issuer.mint("payments", "w"))).get_json()["workload"]["namespace"] \
        == "payments"
    assert client.get("/inline", headers=bearer(issuer.mint("kube-system", "w"))).status_code == 403


def test_errors_raised_by_views_are_rendered_and_configuration_errors_are_not(client: FlaskClient) -> None:
    response = client.get("/raise-denied")
    assert response.status_code == 403
    assert error_body(response)["reason"] == "policy_denied"
    with pytest.raises(ConfigurationError):  # TESTING propagates it; in production it is Flask's plain 500
        client.get("/raise-config")


# -- current_workload ------------------------------------------------------------------------------------


def test_current_workload_loads_lazily(build: Callable[..., Flask], issuer: FakeIssuer) -> None:
    client = build(ALLOW="payments/*").test_client()
    assert client.get("/lazy").get_json() == {"workload": None}
    assert client.get("/lazy", headers=bearer(issuer.mint("payments", "w"))).get_json()["workload"]["namespace"] \
        == "payments"
    bad = client.get("/lazy", headers=bearer("not-a-jwt"))
    denied = client.get("/lazy", headers=bearer(issuer.mint("kube-system", "w")))
    assert (bad.status_code, error_body(bad)["reason"]) == (401, "malformed")
    assert (denied.status_code, error_body(denied)["reason"]) == (403, "policy_denied")


class CountingVerifier(TokenVerifier):
    calls = 0

    def verify(self, token: str | bytes) -> Any:
        self.calls += 1
        return super().verify(token)


def test_a_request_is_verified_once(issuer: FakeIssuer) -> None:
    verifier = CountingVerifier(VerifierConfig(issuer=issuer.issuer, audiences="test", jwks=issuer.jwks()))
    app = make_app({"K8S_JWT_AUTH_ENFORCE": True}, verifier=verifier)
    seen: list[Any] = []

    @app.after_request
    def audit(response: Response) -> Response:
        seen.append(current_workload.namespace)
        return response

    assert app.test_client().get("/web-pods", headers=bearer(issuer.mint("frontend", "web", pod="web-1"))) \
        .status_code == 200
    assert verifier.calls == 1
    assert seen == ["frontend"]


def test_current_workload_outside_a_request_is_none(app: Flask) -> None:
    assert not current_workload
    assert get_current_workload() is None
    with app.app_context():
        assert get_current_workload(load=False) is None


def test_requests_inside_one_app_context_do_not_share_the_workload(app: Flask, issuer: FakeIssuer) -> None:
    client = app.test_client()
    with app.app_context():
        first = client.get("/anyone", headers=bearer(issuer.mint("payments", "worker")))
        second = client.get("/anyone")
        third = client.get("/lazy")
    assert first.get_json()["workload"]["namespace"] == "payments"
    assert second.get_json() == third.get_json() == {"workload": None}


def test_hooks_after_the_response_never_turn_a_bad_token_into_a_500(app: Flask, issuer: FakeIssuer) -> None:
    seen: list[Any] = []

    @app.after_request
    def audit(response: Response) -> Response:
        seen.append(get_current_workload())
        return response

    @app.teardown_request
    def teardown(exc: BaseException | None) -> None:
        seen.append(bool(current_workload))

    client = app.test_client()
    assert client.get("/healthz", headers=bearer("not-a-jwt")).status_code == 200
    assert client.get("/whoami", headers=bearer("not-a-jwt")).status_code == 401
    assert client.get("/healthz", headers=bearer(issuer.mint("a", "b"))).status_code == 200
    assert seen[:4] == [None, False, None, False]
    assert seen[4].namespace == "a"


def test_the_workload_is_kept_on_g_under_a_prefixed_name(app: Flask, issuer: FakeIssuer) -> None:
    with app.test_request_context(headers=bearer(issuer.mint("payments", "worker"))):
        assert current_workload.namespace == "payments"
        assert [name for name in vars(g) if "k8s" in name] == ["_k8s_jwt_auth"]


# -- enforcing mode --------------------------------------------------------------------------------------


@pytest.fixture
def enforcing(build: Callable[..., Flask]) -> FlaskClient:
    return build(ENFORCE=True, EXEMPT_PATHS=["/healthz", "/public/*"], EXEMPT_ENDPOINTS="views.status",
                 ALLOW="payments/*").test_client()


@pytest.mark.parametrize("path", ["/healthz", "/public", "/public/", "/public/docs/x.html", "/status", "/marked"])
def test_exempt_paths_and_endpoints_need_no_token(enforcing: FlaskClient, path: str) -> None:
    response = enforcing.get(path)
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "workload": None}


@pytest.mark.parametrize("path", ["/healthz/", "/healthzz", "/publicity", "/lazy", "/no-such-page"])
def test_everything_else_needs_a_token(enforcing: FlaskClient, path: str) -> None:
    response = enforcing.get(path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_enforcing_mode_applies_the_apps_policy_then_the_views(enforcing: FlaskClient, issuer: FakeIssuer) -> None:
    payments = bearer(issuer.mint("payments", "worker"))
    assert enforcing.get("/lazy", headers=payments).get_json()["workload"]["namespace"] == "payments"
    assert enforcing.get("/no-such-page", headers=payments).status_code == 404
    assert enforcing.get("/lazy", headers=bearer(issuer.mint("frontend", "web", pod="web-1"))).status_code == 403
    assert enforcing.get("/web-pods", headers=bearer(issuer.mint("frontend", "web", pod="web-1"))).status_code == 403
    assert enforcing.get("/healthz", headers=payments).get_json()["workload"] is None


def test_enforcing_mode_with_optional(build: Callable[..., Flask], issuer: FakeIssuer) -> None:
    client = build(ENFORCE="true", OPTIONAL="yes").test_client()
    assert client.get("/lazy").get_json() == {"workload": None}
    assert client.get("/lazy", headers=bearer("not-a-jwt")).status_code == 401
    assert client.get("/whoami").status_code == 401  # the view's own decorator is not optional


# -- error handler ---------------------------------------------------------------------------------------


def test_custom_error_handler(base: dict[str, object], issuer: FakeIssuer) -> None:
    auth = K8sJWTAuth()

    @auth.error_handler
    def refused(exc: AuthError) -> Any:
        response = auth_error_response(exc)
        response.headers["X-Refused"] = exc.reason
        return response

    client = make_app({**base, "K8S_JWT_AUTH_ALLOW": "payments/*"}, extension=auth).test_client()
    missing = client.get("/whoami")
    denied = client.get("/whoami", headers=bearer(issuer.mint("kube-system", "x")))
    assert (missing.status_code, missing.headers["x-refused"], missing.headers["www-authenticate"]) == (
        401, "missing_token", "Bearer")
    assert (denied.status_code, denied.headers["x-refused"]) == (403, "policy_denied")


def test_async_custom_error_handler_returning_a_tuple(base: dict[str, object]) -> None:
    auth = K8sJWTAuth()

    @auth.error_handler
    async def refused(exc: AuthError) -> Any:
        return jsonify(denied=exc.reason), exc.status_code, {"WWW-Authenticate": "Bearer"}

    response = make_app(base, extension=auth).test_client().get("/whoami", headers=bearer("x.y.z"))
    assert response.status_code == 401
    assert response.get_json() == {"denied": "malformed"}
    assert response.headers["www-authenticate"] == "Bearer"


# -- malformed input and logs ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MALFORMED_HEADERS))
def test_malformed_authorization_headers_are_401(client: FlaskClient, name: str) -> None:
    response = client.get("/whoami", headers={"Authorization": MALFORMED_HEADERS[name].decode("latin-1")})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.binary(max_size=300).map(lambda b: b"Bearer " + b) | st.binary(max_size=100))
def test_any_authorization_header_is_answered_with_a_4xx(client: FlaskClient, value: bytes) -> None:
    text = value.decode("latin-1").replace("\r", "").replace("\n", "").replace("\x00", "")
    assert 400 <= client.get("/whoami", headers={"Authorization": text}).status_code < 500


def test_no_token_in_logs_or_bodies(build: Callable[..., Flask], issuer: FakeIssuer,
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="k8s_jwt_auth")
    tokens = [issuer.mint("payments", "worker"), issuer.mint("kube-system", "admin"),
              *(token for token, _ in bad_tokens(issuer).values())]
    client = build(ALLOW="payments/*").test_client()
    bodies = [client.get(path, headers=bearer(token)).get_data(as_text=True)
              for token in tokens for path in ("/whoami", "/lazy")]
    assert caplog.records
    for token in tokens:
        for part in {token, *token.split(".")} - {""}:
            assert part not in caplog.text
            assert all(part not in body for body in bodies if "namespace" not in body)
    assert "rejected http /whoami: 403 policy_denied" in caplog.text


# -- configuration ---------------------------------------------------------------------------------------


def test_defaults_are_set_in_app_config(app: Flask) -> None:
    for key, value in CONFIG_DEFAULTS.items():
        assert app.config[key] == value
    state = app.extensions[EXTENSION_KEY]
    assert isinstance(state, K8sJWTAuthState)
    assert (state.enforce, state.optional, state.header, state.realm) == (False, False, "Authorization", None)


@pytest.mark.parametrize(("strings", "lists"), [
    ({"AUDIENCES": "a, test", "ALLOW": "payments/* !kube-system/*", "EXEMPT_PATHS": "/healthz,/readyz",
      "EXEMPT_ENDPOINTS": "views.status", "ENFORCE": "1", "LEEWAY": "5"},
     {"AUDIENCES": ["a", "test"], "ALLOW": ["payments/*", "!kube-system/*"], "EXEMPT_PATHS": ("/healthz", "/readyz"),
      "EXEMPT_ENDPOINTS": ["views.status"], "ENFORCE": True, "LEEWAY": 5}),
])
def test_app_config_takes_strings_and_lists(build: Callable[..., Flask], strings: dict[str, object],
                                            lists: dict[str, object]) -> None:
    states = [build(**strings).extensions[EXTENSION_KEY], build(**lists).extensions[EXTENSION_KEY]]
    for state in states:
        assert state.verifier.config.audiences == ("a", "test")
        assert state.verifier.config.leeway == 5.0
        assert state.policy == Policy.parse("payments/*,!kube-system/*")
        assert state.exempt_paths.exact == {"/healthz", "/readyz"}
        assert (state.exempt_endpoints, state.enforce) == (frozenset({"views.status"}), True)


def test_none_means_unset(build: Callable[..., Flask]) -> None:
    state = build(JWKS_URI=None, CA_FILE=None, REALM=None).extensions[EXTENSION_KEY]
    assert (state.verifier.config.jwks_uri, state.verifier.config.ca_file, state.realm) == (None, None, None)


@pytest.mark.parametrize(("settings", "key"), [
    ({"LEEWAYY": 5}, "K8S_JWT_AUTH_LEEWAYY"),
    ({"DRY_RUN": "maybe"}, "K8S_JWT_AUTH_DRY_RUN"),
    ({"ENFORCE": "maybe"}, "K8S_JWT_AUTH_ENFORCE"),
    ({"OPTIONAL": 2}, "K8S_JWT_AUTH_OPTIONAL"),
    ({"EXEMPT_PATHS": ["healthz"]}, "K8S_JWT_AUTH_EXEMPT_PATHS"),
    ({"EXEMPT_PATHS": ["/pub*"]}, "K8S_JWT_AUTH_EXEMPT_PATHS"),
    ({"EXEMPT_ENDPOINTS": 3}, "K8S_JWT_AUTH_EXEMPT_ENDPOINTS"),
    ({"HEADER": "bad header"}, "K8S_JWT_AUTH_HEADER"),
    ({"REALM": 1}, "K8S_JWT_AUTH_REALM"),
    ({"ISSUER": None}, "K8S_JWT_AUTH_ISSUER"),
    ({"LEEWAY": float("nan")}, "K8S_JWT_AUTH_LEEWAY"),
    ({"COOLDOWN": "inf"}, "K8S_JWT_AUTH_COOLDOWN"),
    ({"TOKEN_CACHE_TTL": -5}, "K8S_JWT_AUTH_TOKEN_CACHE_TTL"),
])
def test_bad_settings_name_the_key(build: Callable[..., Flask], settings: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigurationError, match=key):
        build(**settings)


def test_bad_policy_rules_fail_at_startup(build: Callable[..., Flask]) -> None:
    with pytest.raises(ConfigurationError, match="policy rule"):
        build(ALLOW="payments")


def test_an_explicit_verifier_wins_over_app_config(issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    verifier = static_verifier(issuer)
    app = make_app({"K8S_JWT_AUTH_ALLOW": "nobody/*", "K8S_JWT_AUTH_ENFORCE": True}, verifier=verifier)
    assert app.extensions[EXTENSION_KEY].verifier is verifier
    assert app.extensions[EXTENSION_KEY].enforce is True
    assert "ignoring K8S_JWT_AUTH_ALLOW" in caplog.text
    assert app.test_client().get("/whoami", headers=bearer(issuer.mint())).status_code == 200


def test_a_verifier_config_or_a_verifier_on_the_extension(issuer: FakeIssuer) -> None:
    config = VerifierConfig(issuer=issuer.issuer, audiences="test", jwks=issuer.jwks())
    auth = K8sJWTAuth(verifier=config)
    first, second = make_app(extension=auth), make_app(extension=auth)
    assert first.extensions[EXTENSION_KEY].verifier.config is config
    assert first.test_client().get("/whoami", headers=bearer(issuer.mint())).status_code == 200
    assert second.test_client().get("/whoami", headers=bearer(issuer.mint())).status_code == 200
    with pytest.raises(ConfigurationError, match="verifier must be"):
        make_app(verifier="https://issuer.test")  # type: ignore[arg-type]


def test_setup_mistakes(app: Flask) -> None:
    with pytest.raises(RuntimeError, match="installed twice on this Flask app"):
        K8sJWTAuth(app)
    with pytest.raises(TypeError, match="parentheses"):
        workload_required(whoami)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not both"):
        workload_required("a/b", policy=Policy())
    with pytest.raises(ConfigurationError, match="policy rule"):
        workload_required("payments")
    bare = Flask("bare")
    bare.config["TESTING"] = True
    bare.register_blueprint(views)
    with pytest.raises(RuntimeError, match="init_app"):
        bare.test_client().get("/whoami")


def test_the_extension_in_the_constructor(base: dict[str, object], issuer: FakeIssuer) -> None:
    app = Flask(__name__)
    app.config.update(base)
    K8sJWTAuth(app)

    @app.get("/me")
    @workload_required()
    def me() -> dict[str, Any]:
        return {"sa": current_workload.service_account}

    assert app.test_client().get("/me", headers=bearer(issuer.mint("a", "b"))).get_json() == {"sa": "b"}


# -- several apps in one process -------------------------------------------------------------------------


def test_two_apps_with_different_issuers_and_policies(base: dict[str, object], issuer: FakeIssuer) -> None:
    auth = K8sJWTAuth()  # one extension, as in the application-factory pattern
    with FakeIssuer(issuer="https://cluster-b.test") as other:
        app_a = make_app({**base, "K8S_JWT_AUTH_ALLOW": "payments/*"}, extension=auth)
        app_b = make_app({"K8S_JWT_AUTH_ISSUER": other.issuer, "K8S_JWT_AUTH_AUDIENCES": "b-api",
                          "K8S_JWT_AUTH_JWKS_URI": other.jwks_uri, "K8S_JWT_AUTH_ALLOW": "frontend/*"}, extension=auth)
        a, b = app_a.test_client(), app_b.test_client()
        token_a = bearer(issuer.mint("payments", "worker"))
        token_b = bearer(other.mint("frontend", "web", audiences="b-api"))
        results = [a.get("/whoami", headers=token_a), b.get("/whoami", headers=token_a),
                   b.get("/whoami", headers=token_b), a.get("/whoami", headers=token_b),
                   a.get("/whoami", headers=bearer(issuer.mint("frontend", "web")))]
    assert [r.status_code for r in results] == [200, 401, 200, 401, 403]
    assert results[0].get_json()["issuer"] == issuer.issuer
    assert results[2].get_json()["issuer"] == "https://cluster-b.test"
    assert error_body(results[1])["reason"] == "unknown_key"
    assert app_a.extensions[EXTENSION_KEY].verifier is not app_b.extensions[EXTENSION_KEY].verifier
    assert not hasattr(auth, "app")


# -- testing helpers -------------------------------------------------------------------------------------


def test_test_client_class_sends_the_token(app: Flask, issuer: FakeIssuer) -> None:
    app.test_client_class = K8sJWTAuthClient
    client = app.test_client(token=issuer.mint("payments", "worker"))
    assert client.get("/whoami").get_json()["service_account"] == "worker"
    assert client.get("/whoami", headers=bearer("not-a-jwt")).status_code == 401  # a request's header wins
    assert app.test_client().get("/whoami").status_code == 401


def test_workload_client_mints_for_the_apps_audience(build: Callable[..., Flask], issuer: FakeIssuer) -> None:
    app = build(AUDIENCES="payments-api", HEADER="X-Workload-Token")
    client = workload_client(app, issuer, "payments", "worker", pod="worker-1")
    body = client.get("/whoami").get_json()
    assert (body["namespace"], body["pod_name"], body["audiences"]) == ("payments", "worker-1", ["payments-api"])


# -- a real threaded WSGI server -------------------------------------------------------------------------


@contextlib.contextmanager
def serve(app: Flask) -> Iterator[str]:
    """Serve `app` with werkzeug's threaded server on a free port of 127.0.0.1; yield its base URL."""
    with serving(make_server("127.0.0.1", 0, app, threaded=True)) as url:
        yield url


def test_concurrent_requests_on_a_real_threaded_server(issuer: FakeIssuer) -> None:
    app = make_app({"K8S_JWT_AUTH_ISSUER": issuer.issuer, "K8S_JWT_AUTH_AUDIENCES": "test",
                    "K8S_JWT_AUTH_ALLOW": "payments/*"})  # keys by discovery: one cache shared by the threads
    good = [issuer.mint("payments", f"sa-{i}", pod=f"pod-{i}") for i in range(8)]
    cases = [(bearer(t), 200) for t in good] + [({}, 401), (bearer("not-a-jwt"), 401),
                                               (bearer(issuer.mint("kube-system", "x")), 403)] * 2
    fetches = (issuer.discovery_fetches, issuer.jwks_fetches)
    barrier = threading.Barrier(len(cases), timeout=10)

    def call(url: str, headers: dict[str, str]) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=10) as http:
            barrier.wait()
            return http.get("/whoami", headers=headers)

    with serve(app) as url, ThreadPoolExecutor(len(cases)) as pool:
        responses = list(pool.map(lambda case: call(url, case[0]), cases))
    assert [r.status_code for r in responses] == [status for _, status in cases]
    verifier = app.extensions[EXTENSION_KEY].verifier
    assert [r.json() for r in responses[:8]] == [verifier.verify(t).to_dict() for t in good]
    assert responses[8].headers["www-authenticate"] == "Bearer"
    assert [r.json()["reason"] for r in responses[8:11]] == ["missing_token", "malformed", "policy_denied"]
    assert (issuer.discovery_fetches - fetches[0], issuer.jwks_fetches - fetches[1]) == (1, 1)


def raw_status(url: str, authorization: bytes) -> int:
    """Send one raw HTTP/1.1 request (httpx refuses some of these header values) and return the status."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /whoami HTTP/1.1\r\nHost: test\r\nConnection: close\r\nAuthorization: "
                     + authorization + b"\r\n\r\n")
        status_line = sock.makefile("rb").readline()
    return int(status_line.split()[1])


def test_malformed_headers_on_a_real_server(app: Flask) -> None:
    with serve(app) as url:
        statuses = {name: raw_status(url, value) for name, value in MALFORMED_HEADERS.items()}
    assert all(400 <= status < 500 for status in statuses.values()), statuses


# -- @workload_required above the route decorator (#15: it used to leave the route open) --------------------


def test_workload_required_above_the_route_fails_closed_never_open(base: dict[str, object]) -> None:
    app = Flask(__name__)
    app.config.update(**base)
    K8sJWTAuth(app)

    @workload_required("payments/*")  # wrong order: Flask registered the bare function
    @app.get("/charge")
    def charge() -> dict[str, str]:
        return {"charged": "yes"}

    app.testing = False  # what production sees: Flask's plain 500, never the view's 200
    response = app.test_client().get("/charge")
    assert response.status_code == 500 and b"charged" not in response.data
    app.testing = True
    with pytest.raises(ConfigurationError, match=r"'charge': @workload_required is above the route decorator"):
        app.test_client().get("/charge")


def test_init_app_refuses_a_route_registered_without_its_workload_required(base: dict[str, object]) -> None:
    app = Flask(__name__)
    app.config.update(**base)

    @workload_required()
    @app.get("/open-by-mistake")
    def open_by_mistake() -> str:
        return "served"

    with pytest.raises(ConfigurationError, match="'open_by_mistake'"):
        K8sJWTAuth(app)


def test_workload_required_below_the_route_is_the_right_order(issuer: FakeIssuer, base: dict[str, object]) -> None:
    app = Flask(__name__)
    app.config.update(TESTING=True, **base)
    K8sJWTAuth(app)

    @app.get("/charge")
    @workload_required("payments/*")
    def charge() -> dict[str, str]:
        return {"caller": current_workload.username}

    client = app.test_client()
    assert client.get("/charge").status_code == 401
    token = issuer.mint("payments", "worker")
    assert client.get("/charge", headers={"Authorization": f"Bearer {token}"}).json == {
        "caller": "system:serviceaccount:payments:worker"}
