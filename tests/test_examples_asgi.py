"""The example apps (examples/fastapi_app, examples/starlette_app) honour the example contract.

Both are configured only from K8S_JWT_AUTH_* variables and serve `GET /healthz` (no auth, 200) and
`GET /whoami` (200 with `WorkloadIdentity.to_dict()`, 401/403/503 otherwise, 4xx for any malformed
Authorization header). They are loaded fresh with importlib for each test, pointing at the FakeIssuer.
"""

from __future__ import annotations

import importlib.util
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from k8s_jwt_auth import ConfigurationError
from k8s_jwt_auth.testing import FakeIssuer

from ._asgi import MALFORMED_HEADERS, TestClient, bad_tokens, bearer, run_uvicorn, static_verifier

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
APPS = ["fastapi_app", "starlette_app"]
ALLOW = "payments/*,!payments/batch"


def load_example(name: str) -> ModuleType:
    """Import examples/<name>/app.py as a new module (so it reads the environment again)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}_{uuid.uuid4().hex}", EXAMPLES / name / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def issuer(k8s_issuer_session: FakeIssuer) -> Iterator[FakeIssuer]:
    """The session's fake issuer, with failure modes cleared but its key kept.

    These tests only mint tokens and never rotate keys; a fresh RSA key per test would dominate their run time.
    """
    k8s_issuer_session.fail(None)
    yield k8s_issuer_session
    k8s_issuer_session.fail(None)


@pytest.fixture
def static_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, issuer: FakeIssuer) -> None:
    """Environment for a verifier with the fake issuer's keys in a JWKS file."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    monkeypatch.setenv("K8S_JWT_AUTH_ISSUER", issuer.issuer)
    monkeypatch.setenv("K8S_JWT_AUTH_AUDIENCES", "test")
    monkeypatch.setenv("K8S_JWT_AUTH_JWKS_FILE", str(jwks))
    monkeypatch.setenv("K8S_JWT_AUTH_ALLOW", ALLOW)


@pytest.fixture(params=APPS)
def example(request: pytest.FixtureRequest, static_env: None) -> Iterator[TestClient]:
    with TestClient(load_example(request.param).app) as client:
        yield client


def error_body(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error", "reason", "message"}
    return body


def test_healthz_needs_no_token(example: TestClient) -> None:
    response = example.get("/healthz")
    assert response.status_code == 200


def test_whoami_answers_the_cli_identity_keys(example: TestClient, issuer: FakeIssuer) -> None:
    token = issuer.mint("payments", "worker", pod="worker-1", node="node-a")
    response = example.get("/whoami", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == static_verifier(issuer).verify(token).to_dict()


def test_whoami_without_a_token_is_401(example: TestClient) -> None:
    response = example.get("/whoami")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert error_body(response)["reason"] == "missing_token"


@pytest.mark.parametrize("case", ["expired", "tampered", "wrong_audience", "foreign_key", "garbage"])
def test_whoami_with_a_bad_token_is_401(example: TestClient, issuer: FakeIssuer, case: str) -> None:
    token, reason = bad_tokens(issuer)[case]
    response = example.get("/whoami", headers=bearer(token))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert error_body(response)["reason"] == reason


@pytest.mark.parametrize(("namespace", "service_account"), [("payments", "batch"), ("kube-system", "admin")])
def test_whoami_for_a_denied_workload_is_403(example: TestClient, issuer: FakeIssuer, namespace: str,
                                             service_account: str) -> None:
    response = example.get("/whoami", headers=bearer(issuer.mint(namespace, service_account)))
    assert response.status_code == 403
    assert error_body(response)["reason"] == "policy_denied"


@pytest.mark.parametrize("name", sorted(MALFORMED_HEADERS))
def test_malformed_authorization_headers_are_4xx(example: TestClient, name: str) -> None:
    response = example.get("/whoami", headers=[(b"authorization", MALFORMED_HEADERS[name])])
    assert 400 <= response.status_code < 500


@pytest.mark.parametrize("name", APPS)
def test_whoami_is_503_when_keys_are_unavailable(name: str, monkeypatch: pytest.MonkeyPatch,
                                                 issuer: FakeIssuer) -> None:
    monkeypatch.setenv("K8S_JWT_AUTH_ISSUER", issuer.issuer)  # keys by discovery from the fake issuer
    monkeypatch.setenv("K8S_JWT_AUTH_AUDIENCES", "test")
    app = load_example(name).app
    issuer.fail("error")
    with TestClient(app) as client:
        response = client.get("/whoami", headers=bearer(issuer.mint("payments", "worker")))
        health = client.get("/healthz")
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert error_body(response)["reason"] == "keys_unavailable"
    assert health.status_code == 200


@pytest.mark.parametrize("name", APPS)
def test_missing_environment_fails_fast(name: str) -> None:
    with pytest.raises(ConfigurationError, match="K8S_JWT_AUTH_ISSUER"):
        load_example(name)


@pytest.mark.parametrize("name", APPS)
def test_examples_on_a_real_uvicorn_server(name: str, static_env: None, issuer: FakeIssuer) -> None:
    app = load_example(name).app
    token = issuer.mint("payments", "worker", pod="worker-1")
    calls: list[Callable[[httpx.Client], httpx.Response]] = [
        lambda c: c.get("/healthz"),
        lambda c: c.get("/whoami", headers=bearer(token)),
        lambda c: c.get("/whoami"),
        lambda c: c.get("/whoami", headers=bearer(issuer.mint("kube-system", "admin"))),
        lambda c: c.get("/whoami", headers={"Authorization": "Bearer a b"}),
        lambda c: c.get("/whoami", headers={"Authorization": "Bearer " + "a" * 100_000}),
    ]
    started = time.monotonic()
    with run_uvicorn(app) as url, httpx.Client(base_url=url, timeout=5) as client:
        responses = [call(client) for call in calls]
    assert time.monotonic() - started < 15
    assert [r.status_code for r in responses[:5]] == [200, 200, 401, 403, 401]
    assert 400 <= responses[5].status_code < 500
    assert responses[1].json() == static_verifier(issuer).verify(token).to_dict()
    assert responses[2].headers["www-authenticate"] == "Bearer"
    assert error_body(responses[3])["reason"] == "policy_denied"
    assert error_body(responses[4])["reason"] == "malformed"
