"""FastAPI dependencies: per-route policies, OpenAPI security scheme, errors, reuse of the middleware's workload."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect

from k8s_jwt_auth import ConfigurationError, Policy, TokenVerifier, VerifierConfig, WorkloadIdentity
from k8s_jwt_auth.integrations.fastapi import (
    K8sJWTAuthMiddleware,
    OptionalWorkload,
    Workload,
    add_exception_handlers,
    install,
    require_workload,
    workload_client,
)
from k8s_jwt_auth.testing import FakeIssuer

from ._asgi import MALFORMED_HEADERS, TestClient, bearer, static_verifier

Payments = Annotated[WorkloadIdentity, Depends(require_workload("payments/*", "!payments/batch"))]


def make_app(**install_options: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/whoami")
    async def whoami(workload: Workload) -> dict[str, Any]:
        return workload.to_dict()

    @app.get("/payments")
    async def payments(workload: Payments) -> dict[str, str]:
        return {"caller": workload.username}

    @app.get("/not-kube", dependencies=[Depends(require_workload("!kube-system/*"))])
    def not_kube() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/web-pods", dependencies=[Depends(require_workload("frontend/web/web-*"))])
    def web_pods() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/maybe")
    async def maybe(workload: OptionalWorkload) -> dict[str, str | None]:
        return {"caller": workload.username if workload else None}

    @app.get("/dry", dependencies=[Depends(require_workload(policy=Policy.parse("payments/*", dry_run=True)))])
    def dry() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/enforce-in-route")
    async def enforce_in_route(workload: Workload) -> None:
        Policy.parse("nobody/*").enforce(workload)  # an AuthError raised by route code renders the same way

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, workload: Workload) -> None:
        await websocket.accept()
        await websocket.send_json({"caller": workload.username})
        await websocket.close()

    return app


@pytest.fixture
def verifier(issuer: FakeIssuer) -> TokenVerifier:
    return static_verifier(issuer)


@pytest.fixture
def client(verifier: TokenVerifier) -> Iterator[TestClient]:
    app = make_app()
    install(app, verifier)
    with TestClient(app) as client:
        yield client


def test_workload_dependency_returns_the_identity(client: TestClient, issuer: FakeIssuer,
                                                  verifier: TokenVerifier) -> None:
    token = issuer.mint("payments", "worker", pod="worker-1")
    response = client.get("/whoami", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == verifier.verify(token).to_dict()


@pytest.mark.parametrize(("path", "namespace", "service_account", "pod", "status"), [
    ("/payments", "payments", "worker", None, 200),
    ("/payments", "payments", "batch", None, 403),
    ("/payments", "frontend", "web", None, 403),
    ("/not-kube", "frontend", "web", None, 200),
    ("/not-kube", "kube-system", "admin", None, 403),
    ("/web-pods", "frontend", "web", "web-7f9c", 200),
    ("/web-pods", "frontend", "web", "cron-1", 403),
    ("/web-pods", "frontend", "web", None, 403),
])
def test_per_route_policies(client: TestClient, issuer: FakeIssuer, path: str, namespace: str,
                            service_account: str, pod: str | None, status: int) -> None:
    response = client.get(path, headers=bearer(issuer.mint(namespace, service_account, pod=pod)))
    assert response.status_code == status
    if status == 403:
        assert response.json()["reason"] == "policy_denied"
        assert response.headers["www-authenticate"].startswith('Bearer error="insufficient_scope"')


def test_dry_run_route_policy_lets_requests_through(client: TestClient, issuer: FakeIssuer,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="k8s_jwt_auth.integrations.fastapi")
    response = client.get("/dry", headers=bearer(issuer.mint("kube-system", "admin")))
    assert response.status_code == 200
    assert "policy dry run: system:serviceaccount:kube-system:admin" in caplog.text


def test_optional_workload(client: TestClient, issuer: FakeIssuer) -> None:
    assert client.get("/maybe").json() == {"caller": None}
    assert client.get("/maybe", headers=bearer("not-a-jwt")).status_code == 401
    response = client.get("/maybe", headers=bearer(issuer.mint("payments", "worker")))
    assert response.json() == {"caller": "system:serviceaccount:payments:worker"}


def test_auth_errors_raised_by_route_code_render_as_our_body(client: TestClient, issuer: FakeIssuer) -> None:
    response = client.get("/enforce-in-route", headers=bearer(issuer.mint()))
    assert response.status_code == 403
    assert response.json()["reason"] == "policy_denied"


def test_openapi_has_an_http_bearer_scheme(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"] == {"KubernetesServiceAccountToken": {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "A Kubernetes projected service-account token (`Authorization: Bearer <token>`).",
    }}
    for path in ("/whoami", "/payments", "/not-kube", "/maybe"):
        assert schema["paths"][path]["get"]["security"] == [{"KubernetesServiceAccountToken": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_custom_header_dependency(verifier: TokenVerifier, issuer: FakeIssuer) -> None:
    app = FastAPI()

    @app.get("/x", dependencies=[Depends(require_workload(header="X-Workload-Token"))])
    def x() -> dict[str, bool]:
        return {"ok": True}

    install(app, verifier)
    token = issuer.mint()
    with TestClient(app) as client:
        assert client.get("/x", headers=bearer(token)).status_code == 401
        assert client.get("/x", headers={"X-Workload-Token": f"Bearer {token}"}).status_code == 200
        scheme = client.get("/openapi.json").json()["components"]["securitySchemes"]["KubernetesServiceAccountToken"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "X-Workload-Token")


def test_without_our_handlers_fastapi_wraps_the_same_body(verifier: TokenVerifier) -> None:
    app = FastAPI()

    @app.get("/x", dependencies=[Depends(require_workload(verifier=verifier))])
    async def x() -> None:
        pass  # pragma: no cover

    with TestClient(app) as client:
        response = client.get("/x", headers=bearer("not-a-jwt"))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert response.json()["detail"]["reason"] == "malformed"


def test_no_verifier_is_a_programming_error() -> None:
    app = make_app()
    with TestClient(app) as client, pytest.raises(RuntimeError, match="install"):
        client.get("/whoami", headers=bearer("a.b.c"))


def test_missing_token_needs_no_verifier() -> None:
    with TestClient(make_app()) as client:
        assert client.get("/whoami").status_code == 401


# -- with the middleware ------------------------------------------------------------------------------


class CountingVerifier(TokenVerifier):
    calls = 0

    async def verify_async(self, token: str | bytes) -> WorkloadIdentity:
        type(self).calls += 1
        return await super().verify_async(token)


def test_dependency_reuses_the_middlewares_workload(issuer: FakeIssuer) -> None:
    CountingVerifier.calls = 0
    verifier = CountingVerifier(VerifierConfig(issuer=issuer.issuer, audiences=["test"],
                                               jwks=issuer.jwks()))
    app = make_app()
    app.add_middleware(K8sJWTAuthMiddleware, verifier=verifier, exempt_paths=["/healthz"])
    add_exception_handlers(app)  # no install(): the dependency needs no verifier of its own
    with TestClient(app) as client:
        ok = client.get("/payments", headers=bearer(issuer.mint("payments", "worker")))
        denied = client.get("/payments", headers=bearer(issuer.mint("payments", "batch")))
        missing = client.get("/payments")
        health = client.get("/healthz")
    assert (ok.status_code, denied.status_code, missing.status_code, health.status_code) == (200, 403, 401, 200)
    assert denied.json()["reason"] == "policy_denied"
    assert CountingVerifier.calls == 2


def test_optional_middleware_and_dependency(verifier: TokenVerifier, issuer: FakeIssuer) -> None:
    app = make_app()
    app.add_middleware(K8sJWTAuthMiddleware, verifier=verifier, optional=True)
    with TestClient(app) as client:
        assert client.get("/maybe").json() == {"caller": None}
        assert client.get("/whoami").status_code == 401
        assert client.get("/whoami", headers=bearer(issuer.mint())).status_code == 200


# -- websockets, malformed headers, construction --------------------------------------------------------


def test_websocket_route_with_the_dependency(client: TestClient, issuer: FakeIssuer) -> None:
    with client.websocket_connect("/ws", headers=bearer(issuer.mint("payments", "worker"))) as ws:
        assert ws.receive_json() == {"caller": "system:serviceaccount:payments:worker"}
    with pytest.raises(WebSocketDisconnect) as info, client.websocket_connect("/ws"):
        pass  # pragma: no cover
    assert (info.value.code, info.value.reason) == (1008, "missing_token")


@pytest.mark.parametrize("name", sorted(MALFORMED_HEADERS))
def test_malformed_authorization_headers_are_4xx(client: TestClient, name: str) -> None:
    response = client.get("/whoami", headers=[(b"authorization", MALFORMED_HEADERS[name])])
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_invalid_dependency_arguments() -> None:
    with pytest.raises(ConfigurationError):
        require_workload("payments")
    with pytest.raises(ConfigurationError):
        require_workload("payments/*", policy=Policy())
    with pytest.raises(ConfigurationError):
        require_workload(header="not a header")


def test_install_builds_the_verifier_from_env(monkeypatch: pytest.MonkeyPatch, issuer: FakeIssuer) -> None:
    with pytest.raises(ConfigurationError, match="K8S_JWT_AUTH_ISSUER"):
        install(FastAPI())
    monkeypatch.setenv("K8S_JWT_AUTH_ISSUER", "https://kubernetes.default.svc.cluster.local")
    monkeypatch.setenv("K8S_JWT_AUTH_AUDIENCES", "test")
    monkeypatch.setenv("K8S_JWT_AUTH_JWKS_URI", "https://kubernetes.default.svc.cluster.local/openid/v1/jwks")
    app = FastAPI()
    verifier = install(app)
    assert app.state.k8s_jwt_auth is verifier
    assert verifier.config.audiences == ("test",)


def test_workload_client_calls_as_the_workload_with_the_installed_audiences(issuer: FakeIssuer) -> None:
    app = make_app()
    install(app, static_verifier(issuer, audiences=["payments-api"]))
    with workload_client(app, issuer, "payments", "worker", pod="worker-1") as client:
        whoami = client.get("/whoami").json()
        assert (whoami["namespace"], whoami["pod_name"], whoami["audiences"]) == ("payments", "worker-1",
                                                                                  ["payments-api"])
        assert client.get("/payments").json() == {"caller": "system:serviceaccount:payments:worker"}
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_json() == {"caller": "system:serviceaccount:payments:worker"}
    with workload_client(app, issuer, "payments", "batch") as client:
        assert client.get("/payments").status_code == 403
    with workload_client(app, issuer, "payments", "worker", audiences="elsewhere") as client:
        response = client.get("/whoami")
        assert (response.status_code, response.json()["reason"]) == (401, "bad_audience")


# -- the route's rules replace the service policy, whatever gates the route combines (#15) ----------------
# The README's form (`dependencies=[Depends(require_workload(...))]` plus a `Workload` parameter) is a case of
# tests/django_tests/test_contract.py; here, the same gates as two parameters, the service-policy one resolved first.


def _params_first_app(verifier: TokenVerifier) -> FastAPI:
    app = FastAPI()
    install(app, verifier)

    @app.get("/payments-params-first")
    async def payments_params_first(workload: Workload, _: Payments) -> dict[str, str]:
        return {"caller": workload.username}

    return app


@pytest.mark.parametrize(("namespace", "sa", "status"), [("payments", "worker", 200), ("payments", "batch", 403),
                                                        ("orders", "api", 403)])
def test_a_routes_rules_are_not_denied_again_by_the_service_policy(
    issuer: FakeIssuer, caplog: pytest.LogCaptureFixture, namespace: str, sa: str, status: int,
) -> None:
    from ._audit import audit_dicts, capture

    capture(caplog)
    verifier = TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences="test", jwks=issuer.jwks(),
                                            allow="orders/*"))
    with TestClient(_params_first_app(verifier)) as client:
        response = client.get("/payments-params-first", headers=bearer(issuer.mint(namespace, sa)))
    assert response.status_code == status
    assert len(audit_dicts(caplog)) == 1  # one decision, one record
    if status == 403:
        assert response.json()["reason"] == "policy_denied"


def test_installing_twice_raises_instead_of_silently_replacing_the_verifier(verifier: TokenVerifier) -> None:
    app = FastAPI()
    assert install(app, verifier) is verifier
    with pytest.raises(RuntimeError, match="installed twice on this app"):
        install(app, static_verifier_for_another_issuer())
    assert app.state.k8s_jwt_auth is verifier


def static_verifier_for_another_issuer() -> TokenVerifier:
    from k8s_jwt_auth.testing import SigningKey

    return TokenVerifier(VerifierConfig(issuer="https://other.test", audiences="x",
                                        jwks={"keys": [SigningKey.generate("ES256").public_jwk()]}))
