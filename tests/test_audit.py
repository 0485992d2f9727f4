"""The audit log: one record per decision, exact fields, never the token; through Starlette, FastAPI and Flask."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from flask import Flask
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from k8s_jwt_auth import Policy, PolicyDenied, TokenVerifier, VerifierConfig
from k8s_jwt_auth.audit import AUDIT_LOGGER, AuditRecord, JsonFormatter, audit_allowed, configure_audit
from k8s_jwt_auth.integrations.fastapi import Workload, install, require_workload
from k8s_jwt_auth.integrations.flask import K8sJWTAuth, current_workload, workload_required
from k8s_jwt_auth.integrations.starlette import K8sJWTAuthMiddleware
from k8s_jwt_auth.testing import FakeIssuer

from ._asgi import TestClient, UnavailableKeys, bad_tokens, bearer, static_verifier
from ._audit import (
    FORGED_PATH,
    audit_dicts,
    capture,
    expected_allowed,
    expected_refused,
    forged_lines,
    json_lines,
    leaks,
)


@pytest.fixture(autouse=True)
def default_levels() -> Iterator[None]:
    yield
    configure_audit(allowed=logging.INFO, denied=logging.WARNING, unavailable=logging.ERROR)


# -- Starlette -------------------------------------------------------------------------------------


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"user": request.user.display_name})


async def ws_whoami(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.close()


def starlette_client(verifier: TokenVerifier, policy: Policy | None = None) -> TestClient:
    app = Starlette(routes=[Route("/whoami", whoami, methods=["GET", "POST"]), WebSocketRoute("/ws", ws_whoami)],
                    middleware=[Middleware(K8sJWTAuthMiddleware, verifier=verifier, policy=policy)])
    return TestClient(app)


def test_starlette_allowed(issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    token = issuer.mint("payments", "worker", pod="worker-1")
    with starlette_client(static_verifier(issuer), Policy.parse("payments/*")) as client:
        assert client.post("/whoami", headers=bearer(token)).status_code == 200
    workload = static_verifier(issuer).verify(token)
    assert audit_dicts(caplog) == [expected_allowed(workload, token, path="/whoami", method="POST", rule="payments/*")]
    assert [r.levelno for r in caplog.records if r.name == AUDIT_LOGGER.name] == [logging.INFO]
    assert leaks(caplog, token) == []


def test_starlette_denied_by_policy(issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    token = issuer.mint("kube-system", "admin")
    with starlette_client(static_verifier(issuer), Policy.parse("payments/* !kube-system/*")) as client:
        assert client.get("/whoami", headers=bearer(token)).status_code == 403
    workload = static_verifier(issuer).verify(token)
    assert audit_dicts(caplog) == [expected_refused("denied_policy", "policy_denied", 403, token, path="/whoami",
                                                    workload=workload, rule="!kube-system/*")]
    assert [r.levelno for r in caplog.records if r.name == AUDIT_LOGGER.name] == [logging.WARNING]
    assert leaks(caplog, token) == []


@pytest.mark.parametrize("case", ["expired", "tampered", "wrong_audience", "foreign_key", "garbage"])
def test_starlette_rejected_tokens(issuer: FakeIssuer, caplog: pytest.LogCaptureFixture, case: str) -> None:
    capture(caplog)
    token, reason = bad_tokens(issuer)[case]
    with starlette_client(static_verifier(issuer)) as client:
        assert client.get("/whoami", headers=bearer(token)).status_code == 401
    assert audit_dicts(caplog) == [expected_refused("rejected_token", reason, 401, token, path="/whoami")]
    assert leaks(caplog, token) == []


def test_starlette_missing_token_has_no_fingerprint(issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    with starlette_client(static_verifier(issuer)) as client:
        assert client.get("/whoami").status_code == 401
    assert audit_dicts(caplog) == [expected_refused("rejected_token", "missing_token", 401, None, path="/whoami")]


def test_starlette_unavailable(issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    token = issuer.mint("payments", "worker")
    verifier = TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences=["test"]), keys=UnavailableKeys())
    with starlette_client(verifier) as client:
        assert client.get("/whoami", headers=bearer(token)).status_code == 503
    assert audit_dicts(caplog) == [expected_refused("unavailable", "keys_unavailable", 503, token, path="/whoami")]
    assert [r.levelno for r in caplog.records if r.name == AUDIT_LOGGER.name] == [logging.ERROR]


def test_starlette_dry_run_denial_is_recorded_and_let_through(issuer: FakeIssuer,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    token = issuer.mint("kube-system", "admin")
    with starlette_client(static_verifier(issuer), Policy.parse("payments/*", dry_run=True)) as client:
        assert client.get("/whoami", headers=bearer(token)).status_code == 200
    workload = static_verifier(issuer).verify(token)
    assert audit_dicts(caplog) == [expected_allowed(workload, token, path="/whoami", decision="dry_run_denied")]


def test_starlette_websocket_records_transport(issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    token = issuer.mint("payments", "worker")
    with starlette_client(static_verifier(issuer)) as client:
        with client.websocket_connect("/ws", headers=bearer(token)):
            pass
        with pytest.raises(WebSocketDisconnect), client.websocket_connect("/ws"):
            pass  # pragma: no cover - refused before accept
    workload = static_verifier(issuer).verify(token)
    assert audit_dicts(caplog) == [
        expected_allowed(workload, token, path="/ws", method=None, transport="websocket"),
        expected_refused("rejected_token", "missing_token", 401, None, path="/ws", method=None, transport="websocket"),
    ]


# -- FastAPI ---------------------------------------------------------------------------------------


def fastapi_app(verifier: TokenVerifier, *, middleware: bool = False) -> FastAPI:
    """`/whoami` (any workload, through `Workload`) and `/payments` (route rule `payments/*`)."""
    app = FastAPI()
    install(app, verifier)
    if middleware:
        app.add_middleware(K8sJWTAuthMiddleware, verifier=verifier)

    @app.get("/whoami")
    async def fastapi_whoami(workload: Workload) -> dict[str, Any]:
        return {"user": workload.username}

    @app.get("/payments", dependencies=[Depends(require_workload("payments/*"))])
    async def payments() -> dict[str, Any]:
        return {}

    return app


def test_fastapi_dependency_records_each_decision(issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    app = fastapi_app(static_verifier(issuer))

    good, other = issuer.mint("payments", "worker"), issuer.mint("frontend", "web")
    with TestClient(app) as client:
        assert client.get("/whoami", headers=bearer(good)).status_code == 200
        assert client.get("/payments", headers=bearer(other)).status_code == 403
    verifier = static_verifier(issuer)
    assert audit_dicts(caplog) == [
        expected_allowed(verifier.verify(good), good, path="/whoami"),
        expected_refused("denied_policy", "policy_denied", 403, other, path="/payments",
                         workload=verifier.verify(other)),
    ]


# -- Flask -----------------------------------------------------------------------------------------


def build_flask(issuer: FakeIssuer, tmp_path: Path, **settings: object) -> Flask:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    app = Flask(__name__)
    app.config.update(TESTING=True, K8S_JWT_AUTH_ISSUER=issuer.issuer, K8S_JWT_AUTH_AUDIENCES=["test"],
                      K8S_JWT_AUTH_JWKS_FILE=str(jwks), **settings)
    K8sJWTAuth(app)

    @app.route("/charge", methods=["POST"])
    @workload_required("payments/*")
    def charge() -> dict[str, Any]:
        return {"user": current_workload.username}

    return app


@pytest.fixture
def flask_app(issuer: FakeIssuer, tmp_path: Path) -> Flask:
    return build_flask(issuer, tmp_path)


def test_flask_decisions(flask_app: Flask, issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    good, denied = issuer.mint("payments", "worker", pod="worker-1"), issuer.mint("frontend", "web")
    expired, _ = bad_tokens(issuer)["expired"]
    client = flask_app.test_client()
    assert client.post("/charge", headers=bearer(good)).status_code == 200
    assert client.post("/charge", headers=bearer(denied)).status_code == 403
    assert client.post("/charge", headers=bearer(expired)).status_code == 401
    verifier = static_verifier(issuer)
    assert audit_dicts(caplog) == [
        expected_allowed(verifier.verify(good), good, path="/charge", method="POST", rule="payments/*"),
        expected_refused("denied_policy", "policy_denied", 403, denied, path="/charge", method="POST",
                         workload=verifier.verify(denied)),
        expected_refused("rejected_token", "expired", 401, expired, path="/charge", method="POST"),
    ]
    for token in (good, denied, expired):
        assert leaks(caplog, token) == []


def test_flask_unavailable(issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    app = Flask(__name__)
    app.config["TESTING"] = True
    verifier = TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences=["test"]), keys=UnavailableKeys())
    K8sJWTAuth(app, verifier=verifier)
    app.add_url_rule("/x", "x", workload_required()(lambda: {}))
    token = issuer.mint()
    assert app.test_client().get("/x", headers=bearer(token)).status_code == 503
    assert audit_dicts(caplog) == [expected_refused("unavailable", "keys_unavailable", 503, token, path="/x")]


# -- levels, formatter, record ---------------------------------------------------------------------


def test_allowed_level_is_configurable_and_disabled_records_are_not_built(
        issuer: FakeIssuer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    capture(caplog, logging.INFO)
    configure_audit(allowed=logging.DEBUG)
    built: list[object] = []
    monkeypatch.setattr("k8s_jwt_auth.audit.AuditRecord", lambda **kw: built.append(kw))
    token = issuer.mint("payments", "worker")
    with starlette_client(static_verifier(issuer)) as client:
        assert client.get("/whoami", headers=bearer(token)).status_code == 200
    assert audit_dicts(caplog) == [] and built == []


def test_denied_level_is_configurable(issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    configure_audit(denied=logging.INFO)
    with starlette_client(static_verifier(issuer)) as client:
        assert client.get("/whoami").status_code == 401
    assert [r.levelno for r in caplog.records if r.name == AUDIT_LOGGER.name] == [logging.INFO]


def test_json_formatter_renders_one_parseable_line(issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    token = issuer.mint("payments", "worker")
    with starlette_client(static_verifier(issuer), Policy.parse("!payments/*")) as client:
        client.get("/whoami", headers=bearer(token))
        client.get("/whoami", headers=bearer("not-a-jwt"))
    lines = json_lines(caplog)
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    first, second = (json.loads(line) for line in lines)
    assert first["logger"] == "k8s_jwt_auth.audit" and first["level"] == "WARNING"
    assert first["decision"] == "denied_policy" and first["rule"] == "!payments/*"
    assert second["decision"] == "rejected_token" and second["reason"] == "malformed"
    assert leaks(caplog, token) == []


def test_json_formatter_handles_plain_records() -> None:
    record = logging.LogRecord("k8s_jwt_auth.keys", logging.WARNING, __file__, 1, "refresh %s", ("failed",), None)
    assert json.loads(JsonFormatter().format(record))["message"] == "refresh failed"


def test_record_is_frozen_and_has_every_field() -> None:
    record = AuditRecord(decision="rejected_token", reason="expired", status=401)
    with pytest.raises(AttributeError):
        record.reason = "ok"  # type: ignore[misc]
    assert list(record.as_dict()) == ["decision", "reason", "status", "issuer", "namespace", "service_account",
                                      "pod", "jti", "cluster", "reviewed", "stale", "token_fingerprint", "rule", "path",
                                      "method", "transport"]
    assert "expired" in record.message


def test_policy_denied_carries_the_workload(issuer: FakeIssuer) -> None:
    workload = static_verifier(issuer).verify(issuer.mint("kube-system", "admin"))
    with pytest.raises(PolicyDenied) as caught:
        Policy.parse("payments/*").enforce(workload)
    assert caught.value.workload is workload


def test_stale_token_is_flagged(issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    token = issuer.mint("payments", "old-client", warn_after=time.time() - 60)
    with starlette_client(static_verifier(issuer)) as client:
        assert client.get("/whoami", headers=bearer(token)).status_code == 200
    [record] = audit_dicts(caplog)
    assert record["decision"] == "allowed" and record["stale"] is True


def test_audit_allowed_without_policy_has_no_rule(issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    token = issuer.mint()
    workload = static_verifier(issuer).verify(token)
    audit_allowed(workload)
    assert audit_dicts(caplog) == [expected_allowed(workload, token, path=None, method=None)]


# -- one record per gate, not per check ------------------------------------------------------------


def test_flask_enforcing_mode_and_decorator_with_the_same_policy_record_once(
        issuer: FakeIssuer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    flask_app = build_flask(issuer, tmp_path, K8S_JWT_AUTH_ENFORCE=True)
    flask_app.add_url_rule("/any", "any", workload_required()(lambda: {}))
    token = issuer.mint("payments", "worker")
    client = flask_app.test_client()
    assert client.get("/any", headers=bearer(token)).status_code == 200  # enforcing mode + same app policy
    assert client.post("/charge", headers=bearer(token)).status_code == 200  # enforcing mode + the view's rules
    decisions = [(d["path"], d["decision"], d["rule"]) for d in audit_dicts(caplog)]
    assert decisions == [("/any", "allowed", None), ("/charge", "allowed", None), ("/charge", "allowed", "payments/*")]


def test_fastapi_dependency_after_the_middleware_records_only_route_rules(
        issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    app = fastapi_app(static_verifier(issuer), middleware=True)

    token = issuer.mint("payments", "worker")
    with TestClient(app) as client:
        assert client.get("/whoami", headers=bearer(token)).status_code == 200
        assert client.get("/payments", headers=bearer(token)).status_code == 200
    decisions = [(d["path"], d["rule"]) for d in audit_dicts(caplog)]
    assert decisions == [("/whoami", None), ("/payments", None), ("/payments", "payments/*")]


# -- forged log lines (#14 item 7) -------------------------------------------------------------------


def test_a_path_with_line_breaks_cannot_forge_log_lines_starlette(issuer: FakeIssuer,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="k8s_jwt_auth")
    with starlette_client(static_verifier(issuer)) as client:
        assert client.get(FORGED_PATH).status_code == 401
    assert audit_dicts(caplog)[0]["path"].startswith("/whoami\r\nWARNING")  # the field keeps the real path
    assert any("/whoami\\r\\nWARNING" in r.getMessage() for r in caplog.records)  # the message shows it escaped
    assert forged_lines(caplog) == []


def test_a_path_with_line_breaks_cannot_forge_log_lines_flask(issuer: FakeIssuer,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    # (FastAPI's dependencies run only for matched routes, and no route pattern matches a line break.)
    caplog.set_level(logging.DEBUG, logger="k8s_jwt_auth")
    flask_app = Flask(__name__)
    flask_app.config["K8S_JWT_AUTH_ENFORCE"] = True
    K8sJWTAuth(flask_app, verifier=static_verifier(issuer))
    assert flask_app.test_client().get(FORGED_PATH).status_code == 401
    assert audit_dicts(caplog)[0]["path"].startswith("/whoami\r\nWARNING")
    assert forged_lines(caplog) == []


def test_printable_escapes_every_line_break_and_bounds_the_length() -> None:
    from k8s_jwt_auth.audit import printable

    assert printable("/ok/path-1") == "/ok/path-1"
    assert printable("/a\r\nb\u2028c\x85d\x00e\x1b[31m") == "/a\\r\\nb\\u2028c\\x85d\\x00e\\x1b[31m"
    assert printable("x" * 600) == "x" * 512 + "..."
