"""K8sJWTAuthMiddleware under Django's Client (WSGI handler, sync path) and AsyncClient (ASGI handler, async path)."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest
from django.test import AsyncClient, Client, RequestFactory, override_settings
from django.views.debug import ExceptionReporter

from k8s_jwt_auth.integrations.django.backends import K8sJWTAuthBackend
from k8s_jwt_auth.integrations.django.middleware import K8sJWTAuthMiddleware
from k8s_jwt_auth.testing import FakeIssuer
from tests._asgi import MALFORMED_HEADERS, bad_tokens, bearer, static_verifier

from .conftest import Configure

LOGGER = "k8s_jwt_auth.integrations.django"
SESSION_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "k8s_jwt_auth.integrations.django.middleware.K8sJWTAuthMiddleware",
]


def error_body(response: Any) -> dict[str, str]:
    body: dict[str, str] = response.json()
    assert set(body) == {"error", "reason", "message"}
    assert response["Content-Type"] == "application/json"
    return body


async def aget(path: str, **headers: str) -> Any:
    return await AsyncClient().get(path, headers=headers)


# -- success ---------------------------------------------------------------------------------------


def test_valid_token_sets_user_and_workload(client: Client, configure: Configure, issuer: FakeIssuer) -> None:
    token = issuer.mint("payments", "worker", pod="worker-1", node="node-a")
    response = client.get("/whoami", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {
        "user": "system:serviceaccount:payments:worker", "user_class": "WorkloadUser", "authenticated": True,
        "workload": static_verifier(issuer).verify(token).to_dict(),
    }


@pytest.mark.anyio
async def test_async_view_under_asgi_sets_user_workload_and_auser(configure: Configure, issuer: FakeIssuer) -> None:
    token = issuer.mint("payments", "worker")
    response = await aget("/async/whoami", **bearer(token))
    assert response.status_code == 200
    body = response.json()
    assert body["user_class"] == "WorkloadUser"
    assert body["auser"] == body["user"] == "system:serviceaccount:payments:worker"
    assert body["workload"] == static_verifier(issuer).verify(token).to_dict()


@pytest.mark.anyio
async def test_sync_view_under_asgi(configure: Configure, issuer: FakeIssuer) -> None:
    response = await aget("/whoami", **bearer(issuer.mint("payments", "worker")))
    assert response.status_code == 200
    assert response.json()["user"] == "system:serviceaccount:payments:worker"


# -- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/async/whoami", "/no-such-page"])  # /whoami: tests/django_tests/test_contract.py
def test_missing_token_is_401_with_a_bare_challenge(client: Client, configure: Configure, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert error_body(response)["reason"] == "missing_token"


@pytest.mark.parametrize(("namespace", "service_account"), [("payments", "batch"), ("kube-system", "admin")])
def test_policy_denial_is_403(client: Client, configure: Configure, issuer: FakeIssuer, namespace: str,
                              service_account: str) -> None:
    configure(ALLOW=["payments/*", "!payments/batch"])
    response = client.get("/whoami", headers=bearer(issuer.mint(namespace, service_account)))
    assert response.status_code == 403
    assert response["WWW-Authenticate"].startswith('Bearer error="insufficient_scope"')
    assert error_body(response)["reason"] == "policy_denied"


def test_policy_allows_matching_workloads(client: Client, configure: Configure, issuer: FakeIssuer) -> None:
    configure(ALLOW="payments/*, !payments/batch")
    assert client.get("/whoami", headers=bearer(issuer.mint("payments", "worker"))).status_code == 200


def test_discovery_keys_work_once_the_issuer_answers(client: Client, configure: Configure,
                                                     issuer: FakeIssuer) -> None:
    configure(JWKS_FILE=None)
    assert client.get("/whoami", headers=bearer(issuer.mint("payments", "worker"))).status_code == 200


@pytest.mark.parametrize("name", sorted(MALFORMED_HEADERS))
def test_malformed_authorization_headers_are_4xx(client: Client, configure: Configure, name: str) -> None:
    response = client.get("/whoami", HTTP_AUTHORIZATION=MALFORMED_HEADERS[name].decode("latin-1"))
    assert 400 <= response.status_code < 500
    if response.status_code == 401 and name != "other_scheme" and name != "empty":
        assert error_body(response)["reason"] in {"malformed", "too_large"}


@pytest.mark.anyio
@pytest.mark.parametrize(("name", "reason"), [("two_tokens", "malformed"), ("non_latin1_bytes", "malformed"),
                                              ("huge_header", "too_large"), ("bearer_blank", "malformed")])
async def test_malformed_authorization_headers_are_401_under_asgi(configure: Configure, name: str,
                                                                  reason: str) -> None:
    response = await aget("/async/whoami", Authorization=MALFORMED_HEADERS[name].decode("latin-1"))
    assert response.status_code == 401
    assert error_body(response)["reason"] == reason


# -- modes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/public/info"])
def test_exempt_paths_need_no_token_and_ignore_one(client: Client, configure: Configure, issuer: FakeIssuer,
                                                   path: str) -> None:
    for headers in ({}, bearer("not-a-jwt"), bearer(issuer.mint("payments", "worker"))):
        response = client.get(path, headers=headers)
        assert response.status_code == 200
        assert response.json() == {"user": "AnonymousUser", "user_class": "AnonymousUser", "authenticated": False,
                                   "workload": None}


def test_optional_mode_lets_anonymous_requests_in(client: Client, configure: Configure, issuer: FakeIssuer) -> None:
    configure(OPTIONAL=True)
    anonymous = client.get("/whoami")
    assert anonymous.status_code == 200
    assert anonymous.json()["workload"] is None
    assert anonymous.json()["user_class"] == "AnonymousUser"
    assert client.get("/whoami", headers=bearer(issuer.mint("payments", "worker"))).json()["authenticated"] is True
    bad = client.get("/whoami", headers=bearer("not-a-jwt"))
    assert bad.status_code == 401
    assert error_body(bad)["reason"] == "malformed"


@pytest.mark.anyio
async def test_optional_mode_under_asgi(configure: Configure) -> None:
    configure(OPTIONAL=True)
    response = await aget("/async/whoami")
    assert response.status_code == 200
    assert response.json()["auser"] == "AnonymousUser"


def test_dry_run_logs_denials_without_enforcing(client: Client, configure: Configure, issuer: FakeIssuer,
                                                caplog: pytest.LogCaptureFixture) -> None:
    configure(ALLOW=["payments/*"], DRY_RUN=True)
    token = issuer.mint("kube-system", "admin")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        response = client.get("/whoami", headers=bearer(token))
    assert response.status_code == 200
    assert "policy dry run: system:serviceaccount:kube-system:admin would be denied" in caplog.text
    assert token not in caplog.text


def test_works_after_authentication_middleware_and_keeps_session_users_on_exempt_paths(
        client: Client, configure: Configure, issuer: FakeIssuer) -> None:
    with override_settings(MIDDLEWARE=SESSION_MIDDLEWARE,
                           INSTALLED_APPS=["django.contrib.sessions", *_installed_apps()],
                           SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies"):
        workload = client.get("/whoami", headers=bearer(issuer.mint("payments", "worker")))
        exempt = client.get("/healthz")
    assert workload.json()["user_class"] == "WorkloadUser"
    assert exempt.json()["user"] == "AnonymousUser"
    assert exempt.json()["user_class"] == "SimpleLazyObject"  # AuthenticationMiddleware's lazy user, untouched


def _installed_apps() -> list[str]:
    from django.conf import settings

    return list(settings.INSTALLED_APPS)


# -- logs and bodies never hold the token ----------------------------------------------------------


def test_no_token_in_logs_or_bodies(client: Client, configure: Configure, issuer: FakeIssuer,
                                    caplog: pytest.LogCaptureFixture) -> None:
    configure(ALLOW=["payments/*"])
    good = issuer.mint("payments", "worker")
    tokens = [good, issuer.mint("kube-system", "admin"), *(t for t, _ in bad_tokens(issuer).values())]
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        bodies = [client.get("/whoami", headers=bearer(token)).content.decode() for token in tokens]
    for token in tokens:
        assert token not in caplog.text
        assert all(token not in body for body in bodies)
    assert "rejected http /whoami: 403 policy_denied" in caplog.text
    assert static_verifier(issuer).verify(good).token_fingerprint in caplog.text


def _frames(request: Any, exc: BaseException) -> list[dict[str, Any]]:
    return ExceptionReporter(request, type(exc), exc, exc.__traceback__).get_traceback_frames()


def _shown(request: Any, exc: BaseException) -> str:
    """Everything Django's error report would show of the variables of the library's frames (not the test's)."""
    here = os.path.dirname(__file__)
    return "\n".join(f"{name}={value}" for frame in _frames(request, exc) if not frame["filename"].startswith(here)
                     for name, value in frame["vars"])


class BrokenBackend(K8sJWTAuthBackend):
    def user_for_workload(self, request: Any, workload: Any) -> Any:
        raise RuntimeError("a bug in the user mapping")

    async def auser_for_workload(self, request: Any, workload: Any) -> Any:
        raise RuntimeError("a bug in the user mapping")


def test_error_reports_hide_the_token(configure: Configure, issuer: FakeIssuer) -> None:
    def boom(request: Any) -> Any:
        raise RuntimeError("a bug in the view")

    token = issuer.mint("payments", "worker")
    request = RequestFactory().get("/whoami", headers=bearer(token))
    with pytest.raises(RuntimeError) as excinfo:
        K8sJWTAuthMiddleware(boom)(request)
    assert token[:40] not in _shown(request, excinfo.value)


def test_error_reports_hide_the_token_raised_inside_the_pipeline(settings: Any, configure: Configure,
                                                                 issuer: FakeIssuer) -> None:
    settings.AUTHENTICATION_BACKENDS = [f"{__name__}.BrokenBackend"]
    token = issuer.mint("payments", "worker")
    request = RequestFactory().get("/whoami", headers=bearer(token))
    with pytest.raises(RuntimeError, match="user mapping") as excinfo:
        K8sJWTAuthMiddleware(lambda request: None)(request)
    functions = [frame["function"] for frame in _frames(request, excinfo.value)]
    assert "admit" in functions and "check" in functions  # the report does reach into the gate's frames
    assert token[:40] not in _shown(request, excinfo.value)


@pytest.mark.anyio
async def test_error_reports_hide_the_token_under_asgi(settings: Any, configure: Configure,
                                                       issuer: FakeIssuer) -> None:
    async def boom(request: Any) -> Any:
        raise RuntimeError("a bug in the view")

    token = issuer.mint("payments", "worker")
    request = RequestFactory().get("/whoami", headers=bearer(token))
    with pytest.raises(RuntimeError) as excinfo:
        await K8sJWTAuthMiddleware(boom)(request)
    assert token[:40] not in _shown(request, excinfo.value)
    settings.AUTHENTICATION_BACKENDS = [f"{__name__}.BrokenBackend"]

    async def view(request: Any) -> Any:
        return None

    with pytest.raises(RuntimeError, match="user mapping") as excinfo:
        await K8sJWTAuthMiddleware(view)(request)
    assert "aadmit" in [frame["function"] for frame in _frames(request, excinfo.value)]
    assert token[:40] not in _shown(request, excinfo.value)
