"""K8sJWTAuthBackend through django.contrib.auth, WorkloadUser, and the opt-in mapping to user-model rows."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import pytest
from django.contrib import auth
from django.contrib.auth import get_user_model
from django.test import AsyncClient, Client, RequestFactory, override_settings

from k8s_jwt_auth.integrations.django.backends import K8sJWTAuthBackend, WorkloadUser
from k8s_jwt_auth.testing import FakeIssuer
from tests._asgi import bad_tokens, bearer, static_verifier

from .conftest import Configure
from .test_middleware import error_body

BACKEND = "k8s_jwt_auth.integrations.django.backends.K8sJWTAuthBackend"
SPY = f"{__name__}.SpyBackend"
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"


class SpyBackend(K8sJWTAuthBackend):
    """Records its calls; maps workloads to users named `ns.sa`, configured with the workload's namespace."""

    calls: ClassVar[list[str]] = []
    configured: ClassVar[list[tuple[str, bool]]] = []

    def authenticate(self, request: Any, k8s_token: str | None = None) -> Any:
        self.calls.append("authenticate")
        return super().authenticate(request, k8s_token=k8s_token)

    def clean_username(self, username: str) -> str:
        _, _, namespace, name = username.split(":")
        return f"{namespace}.{name}"

    def configure_user(self, request: Any, user: Any, created: bool = True) -> Any:
        self.configured.append((user.username, created))
        if created:
            user.first_name = user.workload.namespace
            user.save(update_fields=["first_name"])
        return user


class KnownUsersOnly(SpyBackend):
    create_unknown_user = False


@pytest.fixture(autouse=True)
def _reset_spy() -> None:
    SpyBackend.calls.clear()
    SpyBackend.configured.clear()


def test_authenticate_returns_a_workload_user(configure: Configure, issuer: FakeIssuer) -> None:
    token = issuer.mint("payments", "worker", pod="worker-1")
    user = auth.authenticate(RequestFactory().get("/"), k8s_token=token)
    assert isinstance(user, WorkloadUser)
    assert user.workload == static_verifier(issuer).verify(token)
    assert user.backend == BACKEND
    assert user.get_username() == str(user) == "system:serviceaccount:payments:worker"


@pytest.mark.anyio
async def test_aauthenticate_returns_a_workload_user(configure: Configure, issuer: FakeIssuer) -> None:
    user = await auth.aauthenticate(RequestFactory().get("/"), k8s_token=issuer.mint("payments", "worker"))
    assert isinstance(user, WorkloadUser)
    assert user.workload.service_account == "worker"


@pytest.mark.parametrize("case", ["expired", "tampered", "foreign_key", "garbage"])
def test_authenticate_flattens_failures_to_none(configure: Configure, issuer: FakeIssuer, case: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    token, reason = bad_tokens(issuer)[case]
    with caplog.at_level(logging.INFO, logger="k8s_jwt_auth.integrations.django"):
        assert auth.authenticate(None, k8s_token=token) is None
    assert f"rejected http -: 401 {reason}" in caplog.text
    assert token not in caplog.text


@pytest.mark.anyio
async def test_aauthenticate_flattens_failures_to_none(configure: Configure, issuer: FakeIssuer) -> None:
    configure(JWKS_FILE=None)
    issuer.fail("error")
    assert await auth.aauthenticate(None, k8s_token=issuer.mint("payments", "worker")) is None


def test_authenticate_applies_the_global_policy(configure: Configure, issuer: FakeIssuer) -> None:
    configure(ALLOW=["payments/*"])
    assert auth.authenticate(None, k8s_token=issuer.mint("kube-system", "admin")) is None
    assert auth.authenticate(None, k8s_token=issuer.mint("payments", "worker")) is not None


@pytest.mark.django_db
def test_password_logins_never_reach_the_backend(configure: Configure) -> None:
    get_user_model().objects.create_user("alice", password="s3cret!pass")
    with override_settings(AUTHENTICATION_BACKENDS=[SPY, MODEL_BACKEND]):
        user = auth.authenticate(None, username="alice", password="s3cret!pass")
        assert auth.authenticate(None, username="alice", password="wrong") is None
    assert user is not None and user.backend == MODEL_BACKEND
    assert SpyBackend.calls == []


def test_no_token_means_not_our_credentials(configure: Configure) -> None:
    assert K8sJWTAuthBackend().authenticate(None) is None
    assert K8sJWTAuthBackend().get_user(1) is None


def test_workload_user_is_a_user_without_a_database(configure: Configure, issuer: FakeIssuer) -> None:
    workload = static_verifier(issuer).verify(issuer.mint("payments", "worker"))
    user = WorkloadUser(workload)
    assert (user.is_authenticated, user.is_anonymous, user.is_active) == (True, False, True)
    assert (user.pk, user.id, user.is_staff, user.is_superuser) == (None, None, False, False)
    assert user.has_perm("auth.add_user") is False
    assert user.has_perms([]) is True
    assert user.has_perms(["auth.add_user"]) is False
    assert user.has_module_perms("auth") is False
    assert user.get_all_permissions() == set()
    assert list(user.groups.all()) == [] and list(user.user_permissions.all()) == []
    assert user == WorkloadUser(workload) and len({user, WorkloadUser(workload)}) == 1
    assert repr(user) == "WorkloadUser('system:serviceaccount:payments:worker')"
    with pytest.raises(NotImplementedError):
        user.save()
    with pytest.raises(ValueError, match="iterable"):
        user.has_perms("auth.add_user")


@pytest.mark.anyio
async def test_workload_user_async_permissions(configure: Configure, issuer: FakeIssuer) -> None:
    user = WorkloadUser(static_verifier(issuer).verify(issuer.mint("payments", "worker")))
    assert await user.ahas_perm("auth.add_user") is False
    assert await user.ahas_perms([]) is True
    assert await user.ahas_module_perms("auth") is False
    assert await user.aget_all_permissions() == set()


# -- MAP_TO_USERS ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_map_to_users_creates_one_user_per_workload(client: Client, configure: Configure, issuer: FakeIssuer) -> None:
    configure(MAP_TO_USERS=True)
    with override_settings(AUTHENTICATION_BACKENDS=[MODEL_BACKEND, SPY]):
        first = client.get("/whoami", headers=bearer(issuer.mint("payments", "worker")))
        second = client.get("/whoami", headers=bearer(issuer.mint("payments", "worker", pod="worker-2")))
    assert [first.status_code, second.status_code] == [200, 200]
    assert first.json()["user_class"] == "User"
    assert first.json()["user"] == "payments.worker"
    user = get_user_model().objects.get()
    assert (user.username, user.first_name) == ("payments.worker", "payments")
    assert SpyBackend.configured == [("payments.worker", True), ("payments.worker", False)]
    assert SpyBackend().get_user(user.pk) == user


@pytest.mark.django_db
def test_map_to_users_with_the_default_backend(configure: Configure, issuer: FakeIssuer) -> None:
    configure(MAP_TO_USERS=True)
    user = auth.authenticate(None, k8s_token=issuer.mint("payments", "worker"))
    assert user is not None and user.pk is not None
    assert user.username == "system:serviceaccount:payments:worker"
    assert user.workload.namespace == "payments"
    assert K8sJWTAuthBackend().get_user(user.pk) == user


@pytest.mark.django_db
def test_unknown_or_inactive_users_are_refused(client: Client, configure: Configure, issuer: FakeIssuer) -> None:
    configure(MAP_TO_USERS=True)
    get_user_model().objects.create_user("payments.worker", is_active=False)
    with override_settings(AUTHENTICATION_BACKENDS=[f"{__name__}.KnownUsersOnly"]):
        unknown = client.get("/whoami", headers=bearer(issuer.mint("payments", "other")))
        inactive = client.get("/whoami", headers=bearer(issuer.mint("payments", "worker")))
    assert [unknown.status_code, inactive.status_code] == [403, 403]
    assert error_body(unknown)["reason"] == "policy_denied"
    assert get_user_model().objects.count() == 1


@pytest.mark.anyio
@pytest.mark.django_db(transaction=True)
async def test_map_to_users_under_asgi(configure: Configure, issuer: FakeIssuer) -> None:
    configure(MAP_TO_USERS=True)
    response = await AsyncClient().get("/async/whoami", headers=bearer(issuer.mint("payments", "worker")))
    assert response.status_code == 200
    assert response.json()["user_class"] == "User"
    assert response.json()["auser"] == "system:serviceaccount:payments:worker"
    assert await get_user_model().objects.acount() == 1
