"""The Django example (examples/django_project) honours the example contract, on real servers.

Each server is `uvicorn --app-dir examples/django_project example_project.asgi:application` (or the WSGI twin,
`example_project.wsgi:application`) in a subprocess on 127.0.0.1, configured only from K8S_JWT_AUTH_* variables
pointing at a FakeIssuer. Django settings are process-wide, so the example never shares a process with the test
settings of tests/django_tests/.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from k8s_jwt_auth.testing import FakeIssuer
from tests._asgi import MALFORMED_HEADERS, bad_tokens, bearer, static_verifier

PROJECT = Path(__file__).resolve().parents[1] / "examples" / "django_project"
APPS = {"asgi": ["example_project.asgi:application"],
        "wsgi": ["example_project.wsgi:application", "--interface", "wsgi"]}
ALLOW = "payments/*,!payments/batch"
STARTUP_TIMEOUT = 20.0
_LISTENING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


def example_env(**variables: str) -> dict[str, str]:
    """The test process's environment without K8S_JWT_AUTH_*/DJANGO_* variables, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("K8S_JWT_AUTH_", "DJANGO_"))}
    env.update({f"K8S_JWT_AUTH_{name}": value for name, value in variables.items()})
    return env


class Server:
    """A uvicorn subprocess; its stderr is drained by a thread (lines also go to a queue until it listens)."""

    def __init__(self, interface: str, env: dict[str, str]) -> None:
        command = [sys.executable, "-m", "uvicorn", "--app-dir", str(PROJECT), *APPS[interface],
                   "--host", "127.0.0.1", "--port", "0", "--no-access-log"]
        self.proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def url(self, timeout: float = STARTUP_TIMEOUT) -> str:
        """The base URL once uvicorn listens. Raises RuntimeError if it exits or does not start in time."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError("the example exited:\n" + "".join(self.output))
            if match := _LISTENING.search(line):
                return match.group(1)
        raise RuntimeError("the example did not start in time:\n" + "".join(self.output))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@contextlib.contextmanager
def serve(interface: str, env: dict[str, str]) -> Iterator[httpx.Client]:
    server = Server(interface, env)
    try:
        with httpx.Client(base_url=server.url(), timeout=10) as client:
            yield client
    finally:
        server.stop()


@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIssuer]:
    """A fake issuer of this module's own: other tests' key resets cannot reach the running servers."""
    with FakeIssuer() as fake:
        yield fake


@pytest.fixture(scope="module", params=sorted(APPS))
def example(request: pytest.FixtureRequest, issuer: FakeIssuer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """The example on a real server, keys from a JWKS file, K8S_JWT_AUTH_ALLOW as the policy."""
    jwks = tmp_path_factory.mktemp("django-example") / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    env = example_env(ISSUER=issuer.issuer, AUDIENCES="test", JWKS_FILE=str(jwks), ALLOW=ALLOW)
    with serve(request.param, env) as client:
        yield client


def error_body(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "reason", "message"}
    assert response.headers["content-type"] == "application/json"
    return body


def test_healthz_needs_no_token(example: httpx.Client) -> None:
    response = example.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_whoami_answers_the_cli_identity_keys(example: httpx.Client, issuer: FakeIssuer) -> None:
    token = issuer.mint("payments", "worker", pod="worker-1", node="node-a")
    response = example.get("/whoami", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == static_verifier(issuer).verify(token).to_dict()


def test_whoami_without_a_token_is_401(example: httpx.Client) -> None:
    response = example.get("/whoami")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert error_body(response) == {"error": "invalid_token", "reason": "missing_token",
                                    "message": "a bearer token is required (Authorization: Bearer <token>)"}


@pytest.mark.parametrize("case", ["expired", "tampered", "wrong_audience", "foreign_key", "garbage"])
def test_whoami_with_a_bad_token_is_401(example: httpx.Client, issuer: FakeIssuer, case: str) -> None:
    token, reason = bad_tokens(issuer)[case]
    response = example.get("/whoami", headers=bearer(token))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert error_body(response)["reason"] == reason
    assert token not in response.text


@pytest.mark.parametrize(("namespace", "service_account"), [("payments", "batch"), ("kube-system", "admin")])
def test_whoami_for_a_denied_workload_is_403(example: httpx.Client, issuer: FakeIssuer, namespace: str,
                                             service_account: str) -> None:
    response = example.get("/whoami", headers=bearer(issuer.mint(namespace, service_account)))
    assert response.status_code == 403
    assert response.headers["www-authenticate"].startswith('Bearer error="insufficient_scope"')
    assert error_body(response)["reason"] == "policy_denied"


def raw_status(base_url: str, authorization: bytes) -> int:
    """The status of `GET /whoami` sent byte for byte (httpx refuses to send some malformed values)."""
    host, port = httpx.URL(base_url).host, httpx.URL(base_url).port
    request = (b"GET /whoami HTTP/1.1\r\nHost: " + host.encode() + b"\r\nAuthorization: " + authorization
               + b"\r\nConnection: close\r\n\r\n")
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        with sock.makefile("rb") as response:
            status_line = response.readline()
    return int(status_line.split()[1])


@pytest.mark.parametrize("name", sorted(MALFORMED_HEADERS))
def test_malformed_authorization_headers_are_4xx(example: httpx.Client, name: str) -> None:
    assert 400 <= raw_status(str(example.base_url), MALFORMED_HEADERS[name]) < 500


def test_repeated_authorization_headers_are_401(example: httpx.Client, issuer: FakeIssuer) -> None:
    value = f"Bearer {issuer.mint('payments', 'worker')}".encode()
    response = example.get("/whoami", headers=[(b"authorization", value), (b"authorization", value)])
    assert response.status_code == 401
    assert error_body(response)["reason"] == "malformed"


@pytest.mark.parametrize("interface", sorted(APPS))
def test_whoami_is_503_when_keys_are_unavailable(interface: str, issuer: FakeIssuer) -> None:
    env = example_env(ISSUER=issuer.issuer, AUDIENCES="test")  # keys by discovery from the fake issuer
    issuer.fail("error")
    try:
        with serve(interface, env) as client:
            response = client.get("/whoami", headers=bearer(issuer.mint("payments", "worker")))
            health = client.get("/healthz")
    finally:
        issuer.fail(None)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert "www-authenticate" not in response.headers
    assert error_body(response)["reason"] == "keys_unavailable"
    assert health.status_code == 200


def test_missing_environment_fails_fast() -> None:
    server = Server("asgi", example_env(AUDIENCES="test"))
    try:
        with pytest.raises(RuntimeError, match=r'K8S_JWT_AUTH\["ISSUER"\]: is required'):
            server.url()
        assert server.proc.wait(timeout=10) != 0
    finally:
        server.stop()


def test_system_checks_pass(issuer: FakeIssuer) -> None:
    env = example_env(ISSUER=issuer.issuer, AUDIENCES="test", ALLOW=ALLOW)
    proc = subprocess.run([sys.executable, "manage.py", "check"], cwd=PROJECT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "System check identified no issues" in proc.stdout
