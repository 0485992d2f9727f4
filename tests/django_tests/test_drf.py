"""Django REST framework: K8sJWTAuthentication and WorkloadPermission with APIClient (the middleware exempts /drf/*)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings
from rest_framework.request import Request
from rest_framework.test import APIClient, APIRequestFactory

from k8s_jwt_auth import TokenVerifier, VerifierConfig
from k8s_jwt_auth.integrations.django.backends import WorkloadUser
from k8s_jwt_auth.integrations.django.drf import (
    K8sJWTAuthentication,
    WorkloadAuthenticationFailed,
    WorkloadPermission,
    workload_permission,
)
from k8s_jwt_auth.testing import FakeIssuer
from tests._asgi import MALFORMED_HEADERS, bearer, static_verifier

from .conftest import Configure
from .test_middleware import error_body


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def test_success_returns_user_and_workload(api: APIClient, configure: Configure, issuer: FakeIssuer) -> None:
    token = issuer.mint("payments", "worker", pod="worker-1")
    response = api.get("/drf/whoami", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {"user": "system:serviceaccount:payments:worker", "user_class": "WorkloadUser",
                               "workload": static_verifier(issuer).verify(token).to_dict()}


def test_authenticate_returns_the_user_and_identity_pair(configure: Configure, issuer: FakeIssuer) -> None:
    token = issuer.mint("payments", "worker")
    request = Request(APIRequestFactory().get("/", headers=bearer(token)))
    user, workload = K8sJWTAuthentication().authenticate(request) or (None, None)
    assert isinstance(user, WorkloadUser)
    assert workload == static_verifier(issuer).verify(token) == user.workload
    assert K8sJWTAuthentication().authenticate(Request(APIRequestFactory().get("/"))) is None


def test_a_bad_token_is_401_even_where_anonymous_requests_are_allowed(api: APIClient, configure: Configure) -> None:
    assert api.get("/drf/open").json() == {"authenticated": False}
    response = api.get("/drf/open", headers=bearer("not-a-jwt"))
    assert response.status_code == 401
    assert error_body(response)["reason"] == "malformed"


def test_permission_rules_answer_403_with_our_body(api: APIClient, configure: Configure, issuer: FakeIssuer) -> None:
    allowed = api.get("/drf/payments", headers=bearer(issuer.mint("payments", "worker")))
    denied = api.get("/drf/payments", headers=bearer(issuer.mint("payments", "batch")))
    assert allowed.status_code == 200
    assert denied.status_code == 403
    assert denied["WWW-Authenticate"].startswith('Bearer error="insufficient_scope"')
    assert error_body(denied) == {"error": "insufficient_scope", "reason": "policy_denied",
                                  "message": "workload payments/batch is not allowed (denied by rule !payments/batch)"}


def test_the_global_policy_applies_to_drf(api: APIClient, configure: Configure, issuer: FakeIssuer) -> None:
    configure(ALLOW=["payments/*"])
    response = api.get("/drf/open", headers=bearer(issuer.mint("kube-system", "admin")))
    assert response.status_code == 403
    assert error_body(response)["reason"] == "policy_denied"


@pytest.mark.parametrize("name", sorted(MALFORMED_HEADERS))
def test_malformed_authorization_headers_are_4xx(api: APIClient, configure: Configure, name: str) -> None:
    response = api.get("/drf/whoami", HTTP_AUTHORIZATION=MALFORMED_HEADERS[name].decode("latin-1"))
    assert 400 <= response.status_code < 500


class CountingVerifier(TokenVerifier):
    calls = 0

    def verify(self, token: str | bytes) -> Any:
        type(self).calls += 1
        return super().verify(token)


def test_reuses_the_middleware_result(api: APIClient, configure: Configure, issuer: FakeIssuer) -> None:
    verifier = CountingVerifier(VerifierConfig(issuer=issuer.issuer, audiences=["test"], jwks=issuer.jwks()))
    with override_settings(K8S_JWT_AUTH={"VERIFIER": verifier}):  # /drf/* is not exempt: the middleware verifies
        response = api.get("/drf/payments", headers=bearer(issuer.mint("payments", "worker")))
        refused = api.get("/drf/payments")
    assert response.status_code == 200
    assert response.json()["user_class"] == "WorkloadUser"
    assert CountingVerifier.calls == 1
    assert refused.status_code == 401  # the middleware answered


@pytest.mark.django_db
def test_map_to_users_in_drf(api: APIClient, configure: Configure, issuer: FakeIssuer) -> None:
    configure(MAP_TO_USERS=True)
    response = api.get("/drf/whoami", headers=bearer(issuer.mint("payments", "worker")))
    assert response.status_code == 200
    assert response.json()["user_class"] == "User"
    assert get_user_model().objects.get().username == "system:serviceaccount:payments:worker"


def test_permission_factory_and_subclasses() -> None:
    cls = workload_permission("payments/*", "!payments/batch")
    assert issubclass(cls, WorkloadPermission)
    assert [str(rule) for rule in cls._guard.rules] == ["payments/*", "!payments/batch"]  # type: ignore[union-attr]
    assert WorkloadPermission._guard is None
    assert WorkloadAuthenticationFailed.status_code == 401
