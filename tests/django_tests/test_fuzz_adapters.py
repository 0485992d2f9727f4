"""Property-based fuzzing of the Django adapters' request paths (issue #14 item 1), as tests/test_fuzz_entry_points.py
does for Starlette, FastAPI and Flask: `K8sJWTAuthMiddleware` under `Client` (WSGI, sync path) and `AsyncClient`
(ASGI, async path), with `@workload_required` on top, and DRF's `K8sJWTAuthentication` + `WorkloadPermission`.

Generated credentials headers (tests/_fuzz_http.py) must get exactly the answer the core gives: 200, or 401/403/503
with our JSON body, an RFC 6750 challenge on 401/403 and `Retry-After` on 503. No exception escapes the client
(both raise the view's exceptions), and no token shows in the body, the headers or the logs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import AsyncClient, Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from k8s_jwt_auth import Policy, TokenVerifier
from tests._fuzz_http import ROUTE_RULES, Answer, Sent, check_answer, expected, fuzz_verifier, requests, wire_text

fuzzing = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# tests/django_tests/urls.py: /payments has @workload_required("payments/*", "!payments/batch") behind the
# middleware; /drf/payments (exempt from the middleware below) has K8sJWTAuthentication and
# workload_permission("payments/*", "!payments/batch").
ROUTES = ["/whoami", "/payments", "/drf/payments"]


@pytest.fixture(scope="module")
def verifier() -> TokenVerifier:
    return fuzz_verifier()


@pytest.fixture
def configured(settings: Any, verifier: TokenVerifier, caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The fuzz verifier as `K8S_JWT_AUTH["VERIFIER"]` (one verifier for every example), and the logs."""
    settings.K8S_JWT_AUTH = {"VERIFIER": verifier, "EXEMPT_PATHS": ["/drf/*"]}
    caplog.set_level(logging.DEBUG, logger="k8s_jwt_auth")
    return caplog


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for all the examples of a test (a loop per example is slow)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _received(headers: dict[str, str]) -> list[str]:
    # Django's clients take headers as a dict and turn every name, whatever its case, into HTTP_AUTHORIZATION: the
    # dict's last value wins, and a request cannot carry the header twice.
    return list(headers.values())[-1:]


def _policies(verifier: TokenVerifier, path: str) -> list[Policy]:
    return [verifier.policy] + ([Policy(ROUTE_RULES)] if path != "/whoami" else [])  # ALLOW, then the view's rules


def _check(response: Any, want: Answer, sent: Sent, logs: pytest.LogCaptureFixture) -> None:
    document = check_answer(response.status_code, response.items(), response.content, want, sent.secrets, logs.text)
    if want.workload is not None:
        assert document["workload"] == want.workload.to_dict()


@fuzzing
@given(sent=requests(), path=st.sampled_from(ROUTES))
def test_middleware_and_drf_under_wsgi(configured: pytest.LogCaptureFixture, verifier: TokenVerifier, sent: Sent,
                                       path: str) -> None:
    # Client takes any str value: CR, LF, NUL, text beyond latin-1 (which a real WSGI server cannot pass).
    configured.clear()
    headers = dict(sent.headers)
    response = Client().get(path, headers=headers)
    _check(response, expected(_received(headers), verifier, _policies(verifier, path)), sent, configured)


@fuzzing
@given(sent=requests(), path=st.sampled_from(["/async/whoami", "/whoami", "/payments", "/async/payments"]))
def test_middleware_under_asgi(configured: pytest.LogCaptureFixture, verifier: TokenVerifier,
                               loop: asyncio.AbstractEventLoop, sent: Sent, path: str) -> None:
    # AsyncClient encodes values as latin-1: text beyond it is sent as its UTF-8 bytes, decoded as a server would.
    configured.clear()
    headers = {name: wire_text(value) for name, value in sent.headers}
    response = loop.run_until_complete(AsyncClient().get(path, headers=headers))
    policies = _policies(verifier, path.removeprefix("/async"))
    _check(response, expected(_received(headers), verifier, policies), sent, configured)
