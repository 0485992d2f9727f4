"""K8sJWTAuthMiddleware and WorkloadAuthBackend on a real Starlette app, driven by TestClient."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.authentication import AuthenticationError
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from k8s_jwt_auth import ConfigurationError, Policy, TokenVerifier, VerifierConfig
from k8s_jwt_auth.integrations.starlette import (
    K8sJWTAuthMiddleware,
    WorkloadAuthBackend,
    WorkloadUser,
    on_error,
    workload_client,
)
from k8s_jwt_auth.testing import FakeIssuer

from ._asgi import MALFORMED_HEADERS, TestClient, UnavailableKeys, bad_tokens, bearer, static_verifier

LOGGER = "k8s_jwt_auth.integrations.starlette"


async def whoami(request: Request) -> JSONResponse:
    user = request.user
    workload = user.workload.to_dict() if isinstance(user, WorkloadUser) else None
    return JSONResponse({"authenticated": user.is_authenticated, "display_name": user.display_name,
                         "scopes": request.auth.scopes, "workload": workload})


async def ws_whoami(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"user": websocket.user.display_name, "scopes": websocket.auth.scopes})
    await websocket.close()


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    yield {"started": True}


async def started(request: Request) -> JSONResponse:
    return JSONResponse({"started": request.state.started})


ROUTES = [Route("/whoami", whoami), Route("/healthz", whoami), Route("/public/{rest:path}", whoami),
          Route("/public", whoami), Route("/started", started), WebSocketRoute("/ws", ws_whoami)]


def make_app(verifier: TokenVerifier, **options: Any) -> Starlette:
    return Starlette(routes=ROUTES, lifespan=lifespan,
                     middleware=[Middleware(K8sJWTAuthMiddleware, verifier=verifier, **options)])


@contextlib.contextmanager
def client_for(verifier: TokenVerifier, **options: Any) -> Iterator[TestClient]:
    with TestClient(make_app(verifier, **options)) as client:
        yield client


@pytest.fixture
def verifier(issuer: FakeIssuer) -> TokenVerifier:
    return static_verifier(issuer)


@pytest.fixture
def client(verifier: TokenVerifier) -> Iterator[TestClient]:
    with client_for(verifier) as client:
        yield client


def test_valid_token_sets_user_and_auth_scopes(client: TestClient, issuer: FakeIssuer,
                                               verifier: TokenVerifier) -> None:
    token = issuer.mint("payments", "worker", pod="worker-1")
    response = client.get("/whoami", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {
        "authenticated": True,
        "display_name": "system:serviceaccount:payments:worker",
        "scopes": ["authenticated", "workload", "namespace:payments", "serviceaccount:payments:worker",
                   "audience:test", "pod-bound"],
        "workload": verifier.verify(token).to_dict(),
    }


def test_unbound_token_has_no_pod_bound_scope(client: TestClient, issuer: FakeIssuer) -> None:
    response = client.get("/whoami", headers=bearer(issuer.mint("payments", "worker")))
    assert response.status_code == 200
    assert "pod-bound" not in response.json()["scopes"]


def test_policy_denial_is_403(verifier: TokenVerifier, issuer: FakeIssuer) -> None:
    with client_for(verifier, policy=Policy.parse("payments/*,!payments/batch")) as client:
        allowed = client.get("/whoami", headers=bearer(issuer.mint("payments", "worker")))
        denied = client.get("/whoami", headers=bearer(issuer.mint("payments", "batch")))
    assert allowed.status_code == 200
    assert denied.status_code == 403
    assert denied.headers["www-authenticate"].startswith('Bearer error="insufficient_scope"')
    assert denied.json()["error"] == "insufficient_scope"
    assert denied.json()["reason"] == "policy_denied"


def test_the_verifiers_policy_applies_by_default(issuer: FakeIssuer) -> None:
    verifier = static_verifier(issuer, allow=["frontend/web/web-*"])
    with client_for(verifier) as client:
        pod = client.get("/whoami", headers=bearer(issuer.mint("frontend", "web", pod="web-1")))
        other_pod = client.get("/whoami", headers=bearer(issuer.mint("frontend", "web", pod="cron-1")))
    assert (pod.status_code, other_pod.status_code) == (200, 403)


def test_dry_run_policy_logs_and_lets_the_request_through(verifier: TokenVerifier, issuer: FakeIssuer,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with client_for(verifier, policy=Policy.parse("payments/*", dry_run=True)) as client:
        response = client.get("/whoami", headers=bearer(issuer.mint("kube-system", "admin")))
    assert response.status_code == 200
    assert [r.levelno for r in caplog.records if r.name == LOGGER] == [logging.WARNING]
    assert "system:serviceaccount:kube-system:admin" in caplog.text


def test_remote_keys_from_the_fake_issuer(issuer: FakeIssuer) -> None:
    remote = TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences=["test"]))
    with client_for(remote) as client:
        response = client.get("/whoami", headers=bearer(issuer.mint("payments", "worker")))
    assert response.status_code == 200
    assert response.json()["workload"]["namespace"] == "payments"


@pytest.mark.parametrize("path", ["/healthz", "/public", "/public/", "/public/docs/index.html"])
def test_exempt_paths_need_no_token(verifier: TokenVerifier, path: str) -> None:
    with client_for(verifier, exempt_paths=["/healthz", "/public/*"]) as client:
        response = client.get(path)
    assert response.status_code == 200
    assert response.json() == {"authenticated": False, "display_name": "", "scopes": [], "workload": None}


@pytest.mark.parametrize("path", ["/healthz/", "/healthzz", "/publicity", "/whoami"])
def test_paths_near_exempt_ones_still_need_a_token(verifier: TokenVerifier, path: str) -> None:
    with client_for(verifier, exempt_paths=["/healthz", "/public/*"]) as client:
        assert client.get(path).status_code == 401


def test_exempt_paths_are_route_paths_under_a_root_path(verifier: TokenVerifier) -> None:
    app = make_app(verifier, exempt_paths=["/healthz"])
    with TestClient(app, root_path="/api") as client:
        assert client.get("/api/healthz").status_code == 200
        assert client.get("/api/whoami").status_code == 401


def test_optional_mode(verifier: TokenVerifier, issuer: FakeIssuer) -> None:
    with client_for(verifier, optional=True) as client:
        anonymous = client.get("/whoami")
        other_scheme = client.get("/whoami", headers={"Authorization": "Basic dXNlcjpwYXNz"})
        bad = client.get("/whoami", headers=bearer("not-a-jwt"))
        good = client.get("/whoami", headers=bearer(issuer.mint("payments", "worker")))
    assert anonymous.status_code == other_scheme.status_code == 200
    assert anonymous.json() == {"authenticated": False, "display_name": "", "scopes": [], "workload": None}
    assert bad.status_code == 401
    assert bad.json()["reason"] == "malformed"
    assert good.json()["authenticated"] is True


def test_lifespan_runs_through_the_middleware(client: TestClient, issuer: FakeIssuer) -> None:
    assert client.get("/started", headers=bearer(issuer.mint())).json() == {"started": True}


@pytest.mark.anyio
async def test_lifespan_scope_is_passed_through_untouched(verifier: TokenVerifier) -> None:
    seen: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    async def nothing() -> Any:  # pragma: no cover - never called
        raise AssertionError

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    await K8sJWTAuthMiddleware(inner, verifier)(scope, nothing, nothing)
    assert seen == [{"type": "lifespan", "asgi": {"version": "3.0"}}]
    assert seen[0] is scope


def test_websocket_with_token_is_accepted(client: TestClient, issuer: FakeIssuer) -> None:
    with client.websocket_connect("/ws", headers=bearer(issuer.mint("payments", "worker"))) as ws:
        message = ws.receive_json()
    assert message["user"] == "system:serviceaccount:payments:worker"
    assert "namespace:payments" in message["scopes"]


@pytest.mark.parametrize(("headers", "reason"), [({}, "missing_token"),
                                                 ({"Authorization": "Bearer not-a-jwt"}, "malformed")])
def test_websocket_without_a_valid_token_is_closed_1008(client: TestClient, headers: dict[str, str],
                                                        reason: str) -> None:
    with pytest.raises(WebSocketDisconnect) as info, client.websocket_connect("/ws", headers=headers):
        pass  # pragma: no cover - the connection is refused before it opens
    assert (info.value.code, info.value.reason) == (1008, reason)


def test_websocket_is_closed_1013_when_keys_are_unavailable(issuer: FakeIssuer) -> None:
    token = issuer.mint()
    config = VerifierConfig(issuer=issuer.issuer, audiences=["test"], jwks=issuer.jwks())
    with client_for(TokenVerifier(config, keys=UnavailableKeys())) as client:
        with pytest.raises(WebSocketDisconnect) as info, client.websocket_connect("/ws", headers=bearer(token)):
            pass  # pragma: no cover
    assert (info.value.code, info.value.reason) == (1013, "keys_unavailable")


def test_websocket_false_lets_websockets_through(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    app = Starlette(routes=[WebSocketRoute("/ws", ws_plain)],
                    middleware=[Middleware(K8sJWTAuthMiddleware, verifier=verifier, websocket=False)])
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        assert ws.receive_text() == "hello"


async def ws_plain(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    await websocket.close()


@pytest.mark.parametrize("name", sorted(MALFORMED_HEADERS))
def test_malformed_authorization_headers_are_4xx(client: TestClient, name: str) -> None:
    response = client.get("/whoami", headers=[(b"authorization", MALFORMED_HEADERS[name])])
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.binary(max_size=300).map(lambda b: b"Bearer " + b) | st.binary(max_size=100))
def test_any_authorization_header_is_answered_with_a_4xx(client: TestClient, value: bytes) -> None:
    value = value.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")
    assert 400 <= client.get("/whoami", headers=[(b"authorization", value)]).status_code < 500


def test_no_token_in_logs_or_bodies(verifier: TokenVerifier, issuer: FakeIssuer,
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="k8s_jwt_auth")
    tokens = [issuer.mint("payments", "worker"), issuer.mint("kube-system", "admin"),
              *(token for token, _ in bad_tokens(issuer).values())]
    with client_for(verifier, policy=Policy.parse("payments/*")) as client:
        bodies = [client.get("/whoami", headers=bearer(token)).text for token in tokens]
    assert caplog.records
    for token in tokens:
        for part in {token, *token.split(".")} - {""}:
            assert part not in caplog.text
            assert all(part not in body for body in bodies)
    assert "rejected http /whoami: 403 policy_denied" in caplog.text


# -- Starlette's own AuthenticationMiddleware with our backend ------------------------------------------


def backend_app(verifier: TokenVerifier) -> Starlette:
    backend = WorkloadAuthBackend(verifier, realm="api")
    return Starlette(routes=ROUTES, middleware=[Middleware(AuthenticationMiddleware, backend=backend,
                                                           on_error=on_error)])


def test_backend_outcomes(verifier: TokenVerifier, issuer: FakeIssuer) -> None:
    with TestClient(backend_app(verifier)) as client:
        good = client.get("/whoami", headers=bearer(issuer.mint("payments", "worker", pod="worker-1")))
        anonymous = client.get("/whoami")
        bad = client.get("/whoami", headers=bearer("not-a-jwt"))
    assert good.status_code == 200
    assert good.json()["workload"]["pod_name"] == "worker-1"
    assert "pod-bound" in good.json()["scopes"]
    assert anonymous.status_code == 200
    assert anonymous.json()["authenticated"] is False
    assert bad.status_code == 401
    assert bad.headers["www-authenticate"].startswith('Bearer realm="api", error="invalid_token"')
    assert bad.json()["reason"] == "malformed"


def test_backend_applies_the_policy(issuer: FakeIssuer) -> None:
    verifier = static_verifier(issuer, allow=["payments/*"])
    with TestClient(backend_app(verifier)) as client:
        response = client.get("/whoami", headers=bearer(issuer.mint("kube-system", "admin")))
    assert response.status_code == 403
    assert response.json()["reason"] == "policy_denied"


def test_on_error_does_not_echo_foreign_errors() -> None:
    response = on_error(None, AuthenticationError("secret detail"))  # type: ignore[arg-type]
    assert response.status_code == 401
    assert b"secret detail" not in response.body


# -- construction ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    {"exempt_paths": ["healthz"]},
    {"exempt_paths": ["/pub*"]},
    {"exempt_paths": ["/*/x"]},
    {"header": "bad header"},
    {"header": ""},
])
def test_invalid_options_fail_at_construction(verifier: TokenVerifier, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        K8sJWTAuthMiddleware(ROUTES[0], verifier, **options)


def test_verifier_from_env(monkeypatch: pytest.MonkeyPatch, issuer: FakeIssuer, tmp_path: Any) -> None:
    with pytest.raises(ConfigurationError, match="K8S_JWT_AUTH_ISSUER"):
        K8sJWTAuthMiddleware(ROUTES[0])
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    monkeypatch.setenv("K8S_JWT_AUTH_ISSUER", issuer.issuer)
    monkeypatch.setenv("K8S_JWT_AUTH_AUDIENCES", "test")
    monkeypatch.setenv("K8S_JWT_AUTH_JWKS_FILE", str(jwks))
    monkeypatch.setenv("K8S_JWT_AUTH_ALLOW", "payments/*")
    middleware = K8sJWTAuthMiddleware(ROUTES[0])
    assert middleware.verifier.config.issuer == issuer.issuer
    assert middleware.policy == Policy.parse("payments/*")


def test_a_config_is_turned_into_a_verifier(issuer: FakeIssuer) -> None:
    config = VerifierConfig(issuer=issuer.issuer, audiences=["test"], jwks=issuer.jwks())
    with TestClient(make_app(config)) as client:  # type: ignore[arg-type]
        assert client.get("/whoami", headers=bearer(issuer.mint())).status_code == 200
    with pytest.raises(ConfigurationError):
        K8sJWTAuthMiddleware(ROUTES[0], "https://issuer")  # type: ignore[arg-type]


# -- workload_client: a TestClient that calls as a workload ------------------------------------------------


def test_workload_client_mints_for_the_middlewares_audiences(issuer: FakeIssuer) -> None:
    app = make_app(static_verifier(issuer, audiences=["payments-api"]))
    with workload_client(app, issuer, "payments", "worker", pod="worker-1") as client:
        response = client.get("/whoami")
        assert response.status_code == 200
        workload = response.json()["workload"]
        assert (workload["namespace"], workload["service_account"], workload["pod_name"]) == \
            ("payments", "worker", "worker-1")
        assert workload["audiences"] == ["payments-api"]
        assert client.get("/started").json() == {"started": True}  # the lifespan ran
        with client.websocket_connect("/ws") as ws:  # websockets send the token too
            assert ws.receive_json()["user"] == "system:serviceaccount:payments:worker"
        # a request's own header wins
        refused = client.get("/whoami", headers=bearer("not-a-jwt"))
        assert (refused.status_code, refused.json()["reason"]) == (401, "malformed")


def test_workload_client_uses_the_middlewares_header_and_config(issuer: FakeIssuer) -> None:
    config = VerifierConfig(issuer=issuer.issuer, audiences=["orders-api"], jwks=issuer.jwks(), allow=["shop/*"])
    app = Starlette(routes=ROUTES, middleware=[
        Middleware(K8sJWTAuthMiddleware, verifier=config, header="X-Forwarded-Authorization")])
    with workload_client(app, issuer, "shop", "cart") as client:
        assert client.headers["x-forwarded-authorization"].startswith("Bearer ")
        assert "authorization" not in client.headers
        assert client.get("/whoami").json()["workload"]["audiences"] == ["orders-api"]
    with workload_client(app, issuer, "batch", "job") as client:
        assert client.get("/whoami").status_code == 403


def test_workload_client_reads_the_environment_like_the_middleware(monkeypatch: pytest.MonkeyPatch,
                                                                   issuer: FakeIssuer, tmp_path: Any) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    monkeypatch.setenv("K8S_JWT_AUTH_ISSUER", issuer.issuer)
    monkeypatch.setenv("K8S_JWT_AUTH_AUDIENCES", "inventory")
    monkeypatch.setenv("K8S_JWT_AUTH_JWKS_FILE", str(jwks))
    app = Starlette(routes=ROUTES, middleware=[Middleware(K8sJWTAuthMiddleware)])
    with workload_client(app, issuer, "shop", "cart") as client:
        assert client.get("/whoami").json()["workload"]["audiences"] == ["inventory"]


def test_workload_client_with_starlettes_authentication_middleware(issuer: FakeIssuer) -> None:
    backend = WorkloadAuthBackend(static_verifier(issuer, audiences=["billing"]), header="x-auth")
    app = Starlette(routes=ROUTES, middleware=[Middleware(AuthenticationMiddleware, backend=backend,
                                                          on_error=on_error)])
    with workload_client(app, issuer, "billing", "api") as client:
        response = client.get("/whoami")
        assert response.status_code == 200
        assert response.json()["display_name"] == "system:serviceaccount:billing:api"


def test_workload_client_without_a_known_verifier_uses_the_given_or_default_audiences(issuer: FakeIssuer) -> None:
    bare = Starlette(routes=[Route("/whoami", whoami)])
    client = workload_client(bare, issuer, audiences="elsewhere", lifetime=60)
    token = client.headers["authorization"].removeprefix("Bearer ")
    assert static_verifier(issuer, audiences=["elsewhere"]).verify(token).audiences == ("elsewhere",)
    default = workload_client(bare, issuer).headers["authorization"].removeprefix("Bearer ")
    assert static_verifier(issuer).verify(default).audiences == ("test",)  # FakeIssuer.mint's default
