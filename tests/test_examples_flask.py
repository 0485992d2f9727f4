"""examples/flask_app honours the example contract, under Flask's test client and under gunicorn.

Configured only from K8S_JWT_AUTH_* variables, it serves `GET /healthz` (no auth, 200) and `GET /whoami`
(200 with `WorkloadIdentity.to_dict()`, 401/403/503 otherwise, 4xx for any malformed Authorization header).
The app module is loaded fresh with importlib for each test, pointing at the FakeIssuer.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from flask.testing import FlaskClient

from k8s_jwt_auth import ConfigurationError
from k8s_jwt_auth.testing import FakeIssuer

from ._asgi import MALFORMED_HEADERS, bad_tokens, bearer, static_verifier

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flask_app"
ALLOW = "payments/*,!payments/batch"


def load_example() -> ModuleType:
    """Import examples/flask_app/app.py as a new module (so it reads the environment again)."""
    spec = importlib.util.spec_from_file_location(f"example_flask_app_{uuid.uuid4().hex}", EXAMPLE / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def issuer(k8s_issuer_session: FakeIssuer) -> Iterator[FakeIssuer]:
    """The session's fake issuer, with failure modes cleared but its key kept (a fresh RSA key per test is slow)."""
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


@pytest.fixture
def client(static_env: None) -> FlaskClient:
    return load_example().app.test_client()


def error_body(response: Any) -> dict[str, Any]:
    body = response.get_json() if hasattr(response, "get_json") else response.json()
    assert set(body) == {"error", "reason", "message"}
    return body


def test_healthz_needs_no_token(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200


def test_whoami_answers_the_cli_identity_keys(client: FlaskClient, issuer: FakeIssuer) -> None:
    token = issuer.mint("payments", "worker", pod="worker-1", node="node-a")
    response = client.get("/whoami", headers=bearer(token))
    assert response.status_code == 200
    assert response.get_json() == static_verifier(issuer).verify(token).to_dict()


def test_whoami_without_a_token_is_401(client: FlaskClient) -> None:
    response = client.get("/whoami")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert error_body(response)["reason"] == "missing_token"


@pytest.mark.parametrize("case", ["expired", "tampered", "wrong_audience", "foreign_key", "garbage"])
def test_whoami_with_a_bad_token_is_401(client: FlaskClient, issuer: FakeIssuer, case: str) -> None:
    token, reason = bad_tokens(issuer)[case]
    response = client.get("/whoami", headers=bearer(token))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert error_body(response)["reason"] == reason


@pytest.mark.parametrize(("namespace", "service_account"), [("payments", "batch"), ("kube-system", "admin")])
def test_whoami_for_a_denied_workload_is_403(client: FlaskClient, issuer: FakeIssuer, namespace: str,
                                             service_account: str) -> None:
    response = client.get("/whoami", headers=bearer(issuer.mint(namespace, service_account)))
    assert response.status_code == 403
    assert error_body(response)["reason"] == "policy_denied"


@pytest.mark.parametrize("name", sorted(MALFORMED_HEADERS))
def test_malformed_authorization_headers_are_4xx(client: FlaskClient, name: str) -> None:
    response = client.get("/whoami", headers={"Authorization": MALFORMED_HEADERS[name].decode("latin-1")})
    assert 400 <= response.status_code < 500


def test_whoami_is_503_when_keys_are_unavailable(monkeypatch: pytest.MonkeyPatch, issuer: FakeIssuer) -> None:
    monkeypatch.setenv("K8S_JWT_AUTH_ISSUER", issuer.issuer)  # keys by discovery from the fake issuer
    monkeypatch.setenv("K8S_JWT_AUTH_AUDIENCES", "test")
    client = load_example().app.test_client()
    issuer.fail("error")
    response = client.get("/whoami", headers=bearer(issuer.mint("payments", "worker")))
    health = client.get("/healthz")
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert error_body(response)["reason"] == "keys_unavailable"
    assert health.status_code == 200


def test_missing_environment_fails_fast() -> None:
    with pytest.raises(ConfigurationError, match="K8S_JWT_AUTH_ISSUER"):
        load_example()


def wait_until_serving(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gunicorn exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"gunicorn did not answer within {timeout} s:\n{log.read_text()}")


@pytest.fixture
def gunicorn(static_env: None, tmp_path: Path) -> Iterator[str]:
    """`gunicorn --chdir examples/flask_app app:app` (threaded workers) on a socket we bound; yield its URL."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    log = tmp_path / "gunicorn.log"
    command = [sys.executable, "-m", "gunicorn", "--chdir", str(EXAMPLE), "--bind", f"fd://{listener.fileno()}",
               "--workers", "1", "--threads", "4", "--log-level", "warning", "app:app"]
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, pass_fds=(listener.fileno(),), env=dict(os.environ), stdout=sink,
                                stderr=subprocess.STDOUT)
    try:
        wait_until_serving(proc, url, log)
        yield url
    finally:
        listener.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_the_example_under_gunicorn(gunicorn: str, issuer: FakeIssuer) -> None:
    token = issuer.mint("payments", "worker", pod="worker-1")
    with httpx.Client(base_url=gunicorn, timeout=10) as http:
        responses = [
            http.get("/healthz"),
            http.get("/whoami", headers=bearer(token)),
            http.get("/whoami"),
            http.get("/whoami", headers=bearer(issuer.mint("kube-system", "admin"))),
            http.get("/whoami", headers={"Authorization": "Bearer a b"}),
            http.get("/whoami", headers={"Authorization": "Bearer " + "a" * 100_000}),
        ]
    assert [r.status_code for r in responses[:5]] == [200, 200, 401, 403, 401]
    assert 400 <= responses[5].status_code < 500
    assert responses[1].json() == static_verifier(issuer).verify(token).to_dict()
    assert responses[2].headers["www-authenticate"] == "Bearer"
    assert error_body(responses[3])["reason"] == "policy_denied"
    assert error_body(responses[4])["reason"] == "malformed"
