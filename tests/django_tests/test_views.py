"""Per-view rules: @workload_required on sync and async function views, WorkloadRequiredMixin on class-based views."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from django.test import AsyncClient, Client, RequestFactory

from k8s_jwt_auth import ConfigurationError, Policy
from k8s_jwt_auth.integrations.django.decorators import WorkloadRequiredMixin, view_policy, workload_required
from k8s_jwt_auth.testing import FakeIssuer
from tests._asgi import bearer, static_verifier

from .conftest import Configure
from .test_middleware import error_body


@pytest.mark.parametrize("path", ["/payments", "/async/payments"])
def test_workload_required_applies_the_view_rules(client: Client, configure: Configure, issuer: FakeIssuer,
                                                  path: str) -> None:
    allowed = client.get(path, headers=bearer(issuer.mint("payments", "worker")))
    denied = client.get(path, headers=bearer(issuer.mint("payments", "batch")))
    other = client.get(path, headers=bearer(issuer.mint("frontend", "web")))
    assert allowed.status_code == 200
    assert allowed.json()["user"] == "system:serviceaccount:payments:worker"
    for response in (denied, other):
        assert response.status_code == 403
        assert response["WWW-Authenticate"].startswith('Bearer error="insufficient_scope"')
        assert error_body(response)["reason"] == "policy_denied"


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/payments", "/async/payments"])
async def test_workload_required_under_asgi(configure: Configure, issuer: FakeIssuer, path: str) -> None:
    client = AsyncClient()
    allowed = await client.get(path, headers=bearer(issuer.mint("payments", "worker")))
    denied = await client.get(path, headers=bearer(issuer.mint("payments", "batch")))
    assert (allowed.status_code, denied.status_code) == (200, 403)


@pytest.mark.parametrize("path", ["/payments", "/async/payments", "/any", "/web", "/async/web"])
def test_views_need_a_workload_in_optional_mode(client: Client, configure: Configure, path: str) -> None:
    configure(OPTIONAL=True)
    response = client.get(path)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert error_body(response)["reason"] == "missing_token"


def test_bare_decorator_accepts_any_workload(client: Client, configure: Configure, issuer: FakeIssuer) -> None:
    response = client.get("/any", headers=bearer(issuer.mint("kube-system", "anything")))
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/web", "/async/web"])
def test_mixin_rules_match_pods(client: Client, configure: Configure, issuer: FakeIssuer, path: str) -> None:
    allowed = client.get(path, headers=bearer(issuer.mint("frontend", "web", pod="web-7c9f")))
    wrong_pod = client.get(path, headers=bearer(issuer.mint("frontend", "web", pod="batch-1")))
    unbound = client.get(path, headers=bearer(issuer.mint("frontend", "web")))
    assert allowed.status_code == 200
    assert allowed.json()["workload"]["pod_name"] == "web-7c9f"
    assert [wrong_pod.status_code, unbound.status_code] == [403, 403]


@pytest.mark.anyio
async def test_async_mixin_under_asgi(configure: Configure, issuer: FakeIssuer) -> None:
    client = AsyncClient()
    allowed = await client.get("/async/web", headers=bearer(issuer.mint("frontend", "web", pod="web-1")))
    denied = await client.get("/async/web", headers=bearer(issuer.mint("frontend", "api", pod="web-1")))
    assert (allowed.status_code, denied.status_code) == (200, 403)


def test_global_policy_applies_before_the_view_rules(client: Client, configure: Configure,
                                                     issuer: FakeIssuer) -> None:
    configure(ALLOW=["!payments/worker", "*/*"])
    response = client.get("/payments", headers=bearer(issuer.mint("payments", "worker")))
    assert response.status_code == 403
    assert "denied by rule !payments/worker" in error_body(response)["message"]


def test_a_dry_run_view_policy_logs_and_lets_the_workload_in(configure: Configure, issuer: FakeIssuer,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    @workload_required(policy=Policy.parse("payments/*", dry_run=True))
    def view(request: Any) -> Any:
        return "ok"

    request = RequestFactory().get("/")
    request.workload = static_verifier(issuer).verify(issuer.mint("frontend", "web"))
    with caplog.at_level(logging.WARNING, logger="k8s_jwt_auth.integrations.django"):
        assert view(request) == "ok"
    assert "policy dry run: system:serviceaccount:frontend:web would be denied" in caplog.text


def test_rules_are_checked_when_the_view_is_defined() -> None:
    with pytest.raises(ConfigurationError, match="not NAMESPACE/SERVICEACCOUNT"):
        workload_required("payments")
    with pytest.raises(ConfigurationError, match="not both"):
        view_policy(["payments/*"], Policy())
    with pytest.raises(ConfigurationError):
        type("Broken", (WorkloadRequiredMixin,), {"workload_rules": ("no-slash",)})


def test_guards_without_the_middleware_verify_the_token_themselves(configure: Configure, issuer: FakeIssuer) -> None:
    configure(ALLOW=["payments/*"])
    seen: list[Any] = []

    def view(request: Any) -> Any:
        seen.append((request.workload.username, request.user.get_username()))
        return "ok"

    guarded, ruled = workload_required(view), workload_required("frontend/*")(view)
    missing = guarded(RequestFactory().get("/"))
    assert (missing.status_code, json.loads(missing.content)["reason"]) == (401, "missing_token")
    assert guarded(RequestFactory().get("/", headers=bearer(issuer.mint("payments", "worker")))) == "ok"
    denied = guarded(RequestFactory().get("/", headers=bearer(issuer.mint("frontend", "web"))))
    assert (denied.status_code, json.loads(denied.content)["reason"]) == (403, "policy_denied")  # service policy
    # the view's own rules replace the service policy (docs/policy-model.md)
    assert ruled(RequestFactory().get("/", headers=bearer(issuer.mint("frontend", "web")))) == "ok"
    assert seen == [("system:serviceaccount:payments:worker",) * 2, ("system:serviceaccount:frontend:web",) * 2]
