"""Audit records of the Django middleware (sync and async), the view decorators and DRF: exact fields, no token."""

from __future__ import annotations

import pytest
from django.test import AsyncClient, Client
from rest_framework.test import APIClient

from k8s_jwt_auth.testing import FakeIssuer
from tests._asgi import bad_tokens, bearer, static_verifier
from tests._audit import FORGED_PATH, audit_dicts, capture, expected_allowed, expected_refused, forged_lines, leaks

from .conftest import Configure


def test_middleware_allowed_with_global_rule(client: Client, configure: Configure, issuer: FakeIssuer,
                                             caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    configure(ALLOW=["payments/*"])
    token = issuer.mint("payments", "worker", pod="worker-1")
    assert client.get("/whoami", headers=bearer(token)).status_code == 200
    workload = static_verifier(issuer).verify(token)
    assert audit_dicts(caplog) == [expected_allowed(workload, token, path="/whoami", rule="payments/*")]
    assert leaks(caplog, token) == []


def test_middleware_refusals(client: Client, configure: Configure, issuer: FakeIssuer,
                             caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    configure(ALLOW=["payments/*"])
    denied = issuer.mint("kube-system", "admin")
    wrong, _ = bad_tokens(issuer)["wrong_audience"]
    assert client.get("/whoami", headers=bearer(denied)).status_code == 403
    assert client.post("/whoami", headers=bearer(wrong)).status_code == 401
    assert client.get("/whoami").status_code == 401
    assert audit_dicts(caplog) == [
        expected_refused("denied_policy", "policy_denied", 403, denied, path="/whoami",
                         workload=static_verifier(issuer).verify(denied)),
        expected_refused("rejected_token", "bad_audience", 401, wrong, path="/whoami", method="POST"),
        expected_refused("rejected_token", "missing_token", 401, None, path="/whoami"),
    ]
    assert leaks(caplog, denied) == [] and leaks(caplog, wrong) == []


def test_middleware_unavailable(client: Client, configure: Configure, issuer: FakeIssuer,
                                caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    configure(JWKS_FILE=None)  # keys by discovery from the fake issuer
    issuer.fail("error")
    token = issuer.mint("payments", "worker")
    assert client.get("/whoami", headers=bearer(token)).status_code == 503
    assert audit_dicts(caplog) == [expected_refused("unavailable", "keys_unavailable", 503, token, path="/whoami")]


@pytest.mark.anyio
async def test_async_middleware_allowed(configure: Configure, issuer: FakeIssuer,
                                        caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    token = issuer.mint("payments", "worker")
    response = await AsyncClient().get("/async/whoami", headers=bearer(token))
    assert response.status_code == 200
    workload = static_verifier(issuer).verify(token)
    assert audit_dicts(caplog) == [expected_allowed(workload, token, path="/async/whoami")]


def test_decorator_gate_records_its_own_decision(client: Client, configure: Configure, issuer: FakeIssuer,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    batch = issuer.mint("payments", "batch")
    assert client.get("/payments", headers=bearer(batch)).status_code == 403
    workload = static_verifier(issuer).verify(batch)
    assert audit_dicts(caplog) == [  # the middleware admits it (no global policy), the view's rules deny it
        expected_allowed(workload, batch, path="/payments"),
        expected_refused("denied_policy", "policy_denied", 403, batch, path="/payments", workload=workload,
                         rule="!payments/batch"),
    ]


def test_drf_authentication(configure: Configure, issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    token = issuer.mint("payments", "worker")
    garbage, _ = bad_tokens(issuer)["garbage"]
    api = APIClient()
    assert api.get("/drf/whoami", headers=bearer(token)).status_code == 200  # /drf/* is exempt in the middleware
    assert api.get("/drf/whoami", headers=bearer(garbage)).status_code == 401
    assert audit_dicts(caplog) == [
        expected_allowed(static_verifier(issuer).verify(token), token, path="/drf/whoami"),
        expected_refused("rejected_token", "malformed", 401, garbage, path="/drf/whoami"),
    ]
    assert leaks(caplog, token) == []


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_a_path_with_line_breaks_cannot_forge_log_lines(kind: str, configure: Configure,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    import logging

    caplog.set_level(logging.DEBUG, logger="k8s_jwt_auth")
    configure(ALLOW=["payments/*"])
    if kind == "wsgi":
        status = Client().get(FORGED_PATH).status_code
    else:
        status = asyncio.run(AsyncClient().get(FORGED_PATH)).status_code
    assert status == 401
    assert audit_dicts(caplog)[0]["path"].startswith("/whoami\r\nWARNING")
    assert forged_lines(caplog) == []


def test_the_backend_writes_one_audit_record_per_decision_like_every_adapter(
    configure: Configure, issuer: FakeIssuer, caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio

    from django.contrib import auth
    from django.test import RequestFactory

    capture(caplog)
    configure(ALLOW=["payments/*"])
    good, denied = issuer.mint("payments", "worker"), issuer.mint("kube-system", "admin")
    wrong, _ = bad_tokens(issuer)["wrong_audience"]
    request = RequestFactory().post("/charge")
    assert auth.authenticate(request, k8s_token=good) is not None
    assert auth.authenticate(request, k8s_token=denied) is None
    assert asyncio.run(auth.aauthenticate(request, k8s_token=wrong)) is None
    verify = static_verifier(issuer).verify
    assert audit_dicts(caplog) == [
        expected_allowed(verify(good), good, path="/charge", method="POST", rule="payments/*"),
        expected_refused("denied_policy", "policy_denied", 403, denied, path="/charge", method="POST",
                         workload=verify(denied)),
        expected_refused("rejected_token", "bad_audience", 401, wrong, path="/charge", method="POST"),
    ]
    assert leaks(caplog, good) == [] and leaks(caplog, wrong) == []


def test_log_refusal_and_log_admitted_write_the_gates_records_for_your_own_decisions(
        configure: Configure, issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    from django.test import RequestFactory

    from k8s_jwt_auth import InvalidToken
    from k8s_jwt_auth.integrations.django.middleware import log_admitted, log_refusal

    capture(caplog)
    token = issuer.mint("payments", "worker")
    workload = static_verifier(issuer).verify(token)
    request = RequestFactory().post("/mine")
    log_refusal(request, InvalidToken("my own check failed", reason="claim_mismatch"), token)
    log_admitted(request, workload, None)
    assert audit_dicts(caplog) == [
        expected_refused("rejected_token", "claim_mismatch", 401, token, path="/mine", method="POST"),
        expected_allowed(workload, token, path="/mine", method="POST")]
    assert leaks(caplog, token) == []
