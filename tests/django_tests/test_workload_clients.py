"""workload_client / async_workload_client / workload_headers / workload_api_client against the test project."""

from __future__ import annotations

import pytest
from django.test import AsyncClient, Client
from rest_framework.test import APIClient

from k8s_jwt_auth.integrations.django.conf import SettingsError
from k8s_jwt_auth.integrations.django.drf import workload_api_client
from k8s_jwt_auth.integrations.django.testing import async_workload_client, workload_client, workload_headers
from k8s_jwt_auth.testing import FakeIssuer

from .conftest import Configure


def test_workload_client_calls_as_the_workload(configure: Configure, issuer: FakeIssuer) -> None:
    configure(AUDIENCES=["payments-api"])
    client = workload_client(issuer, "payments", "worker", pod="worker-1")
    assert isinstance(client, Client)
    response = client.get("/whoami")
    assert response.status_code == 200
    body = response.json()
    assert body["user"] == "system:serviceaccount:payments:worker"
    assert (body["workload"]["pod_name"], body["workload"]["audiences"]) == ("worker-1", ["payments-api"])
    assert workload_client(issuer, "payments", "batch").get("/payments").status_code == 403
    # a request's own header wins
    refused = client.get("/whoami", headers={"Authorization": "Bearer not-a-jwt"})
    assert (refused.status_code, refused.json()["reason"]) == (401, "malformed")


def test_mint_options_reach_the_token(configure: Configure, issuer: FakeIssuer) -> None:
    response = workload_client(issuer, "payments", "worker", audiences="elsewhere").get("/whoami")
    assert (response.status_code, response.json()["reason"]) == (401, "bad_audience")
    response = workload_client(issuer, "payments", "worker", lifetime=-600).get("/whoami")
    assert (response.status_code, response.json()["reason"]) == (401, "expired")


def test_the_configured_header_is_used(configure: Configure, issuer: FakeIssuer) -> None:
    configure(HEADER="X-Forwarded-Authorization")
    headers = workload_headers(issuer, "payments", "worker")
    assert list(headers) == ["X-Forwarded-Authorization"]
    assert headers["X-Forwarded-Authorization"].startswith("Bearer ")
    assert workload_client(issuer, "payments", "worker").get("/whoami").status_code == 200
    # the standard header is not read in this project
    assert Client().get("/whoami", headers={"Authorization": headers["X-Forwarded-Authorization"]}).status_code == 401


def test_workload_headers_with_pytest_djangos_client(client: Client, configure: Configure, issuer: FakeIssuer) -> None:
    response = client.get("/any", headers=workload_headers(issuer, "frontend", "web"))
    assert response.json()["user"] == "system:serviceaccount:frontend:web"


def test_invalid_settings_are_reported(settings: object, issuer: FakeIssuer) -> None:
    settings.K8S_JWT_AUTH = {"ISSUER": issuer.issuer}  # type: ignore[attr-defined]
    with pytest.raises(SettingsError, match="AUDIENCES"):
        workload_client(issuer, "payments", "worker")


@pytest.mark.anyio
async def test_async_workload_client_runs_the_asgi_path(configure: Configure, issuer: FakeIssuer) -> None:
    client = async_workload_client(issuer, "payments", "worker", pod="worker-2")
    assert isinstance(client, AsyncClient)
    response = await client.get("/async/whoami")
    assert response.status_code == 200
    body = response.json()
    assert (body["auser"], body["workload"]["pod_name"]) == ("system:serviceaccount:payments:worker", "worker-2")
    denied = await async_workload_client(issuer, "payments", "batch").get("/async/payments")
    assert denied.status_code == 403
    # a request's own header wins, whatever its case
    refused = await client.get("/async/whoami", headers={"authorization": "Bearer not-a-jwt"})
    assert (refused.status_code, refused.json()["reason"]) == (401, "malformed")


def test_workload_api_client_for_drf(configure: Configure, issuer: FakeIssuer) -> None:
    client = workload_api_client(issuer, "payments", "worker", pod="worker-3")
    assert isinstance(client, APIClient)
    response = client.get("/drf/payments")
    assert response.status_code == 200
    assert response.json()["workload"]["pod_name"] == "worker-3"
    assert workload_api_client(issuer, "payments", "batch").get("/drf/payments").status_code == 403
    client.credentials()  # DRF's way to drop the credentials
    response = client.get("/drf/whoami")
    assert (response.status_code, response.json()["reason"]) == (401, "missing_token")
