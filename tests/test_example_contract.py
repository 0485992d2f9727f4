"""Every example app honours the example contract, run under its real start command.

The examples (FastAPI, Starlette, Flask, Django over ASGI and WSGI) are configured only from K8S_JWT_AUTH_*
variables and serve `GET /healthz` (no authentication, 200) and `GET /whoami` (200 with
`WorkloadIdentity.to_dict()` for a workload `K8S_JWT_AUTH_ALLOW` allows; 401 with `WWW-Authenticate: Bearer ...`
for a missing or invalid token, 403 for a denied workload, 503 with `Retry-After` when keys are unavailable, and a
4xx for any malformed Authorization header). See tests/_servers.py for how each one is started.

Two servers per app, both on 127.0.0.1 and living as long as that app's tests: one with the module's fake issuer's
keys in a JWKS file, and one finding its keys by discovery from a fake issuer that answers every request with a 500.
The module owns its fake issuers, so no other test's key rotation or failure mode can reach the running servers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from k8s_jwt_auth.testing import FakeIssuer

from ._asgi import MALFORMED_HEADERS, bad_tokens, bearer, static_verifier
from ._servers import EXAMPLES, Server, example_env, raw_get, serve

ALLOW = "payments/*,!payments/batch"
# Malformed Authorization values, sent byte for byte: the shared cases, plus a value far over any server's limit.
RAW_MALFORMED: dict[str, bytes] = {**MALFORMED_HEADERS, "token_100k": b"Bearer " + b"a" * 100_000}
# How a server that lacks K8S_JWT_AUTH_ISSUER names it: Django reads the variables into its K8S_JWT_AUTH setting
# and names the key of that dict.
MISSING_ISSUER = {name: "K8S_JWT_AUTH_ISSUER" for name in EXAMPLES} | {
    "django-asgi": 'K8S_JWT_AUTH["ISSUER"]: is required',
    "django-wsgi": 'K8S_JWT_AUTH["ISSUER"]: is required',
}


@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIssuer]:
    with FakeIssuer() as fake:
        yield fake


@pytest.fixture(scope="module")
def failing_issuer() -> Iterator[FakeIssuer]:
    """A fake issuer whose discovery and JWKS endpoints answer 500, for as long as the module runs."""
    with FakeIssuer() as fake:
        fake.fail("error")
        yield fake


@pytest.fixture(scope="module")
def jwks_file(issuer: FakeIssuer, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("example-contract") / "jwks.json"
    path.write_text(json.dumps(issuer.jwks()))
    return str(path)


@pytest.fixture(scope="module", params=sorted(EXAMPLES))
def app(request: pytest.FixtureRequest) -> str:
    """The example under test; the servers of one app stop before the next app's start."""
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def example(app: str, issuer: FakeIssuer, jwks_file: str) -> Iterator[httpx.Client]:
    """The example serving, with the fake issuer's keys from a JWKS file and ALLOW as its policy."""
    env = example_env(ISSUER=issuer.issuer, AUDIENCES="test", JWKS_FILE=jwks_file, ALLOW=ALLOW)
    with serve(EXAMPLES[app], env) as client:
        yield client


@pytest.fixture(scope="module")
def keyless(app: str, failing_issuer: FakeIssuer) -> Iterator[httpx.Client]:
    """The example serving, finding its keys by discovery from an issuer that answers 500."""
    env = example_env(ISSUER=failing_issuer.issuer, AUDIENCES="test", ALLOW=ALLOW)
    with serve(EXAMPLES[app], env) as client:
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
    assert response.headers["content-type"] == "application/json"
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


@pytest.mark.parametrize("name", sorted(RAW_MALFORMED))
def test_malformed_authorization_headers_are_4xx(example: httpx.Client, name: str) -> None:
    status = raw_get(str(example.base_url), "/whoami", [(b"Authorization", RAW_MALFORMED[name])])
    assert 400 <= status < 500


def test_a_header_with_two_tokens_is_401_malformed(example: httpx.Client) -> None:
    response = example.get("/whoami", headers={"Authorization": "Bearer a b"})
    assert response.status_code == 401
    assert error_body(response)["reason"] == "malformed"


def test_repeated_authorization_headers_are_401_malformed(example: httpx.Client, issuer: FakeIssuer) -> None:
    value = f"Bearer {issuer.mint('payments', 'worker')}".encode()
    response = example.get("/whoami", headers=[(b"authorization", value), (b"authorization", value)])
    assert response.status_code == 401
    assert error_body(response)["reason"] == "malformed"


def test_whoami_is_503_when_keys_are_unavailable(keyless: httpx.Client, failing_issuer: FakeIssuer) -> None:
    response = keyless.get("/whoami", headers=bearer(failing_issuer.mint("payments", "worker")))
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert "www-authenticate" not in response.headers
    assert error_body(response)["reason"] == "keys_unavailable"
    assert keyless.get("/healthz").status_code == 200


def test_missing_environment_fails_fast(app: str) -> None:
    server = Server(EXAMPLES[app], example_env(AUDIENCES="test", ALLOW=ALLOW))
    try:
        assert server.wait() != 0, server.log()
    finally:
        server.stop()
    assert MISSING_ISSUER[app] in server.log()
