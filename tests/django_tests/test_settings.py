"""K8S_JWT_AUTH: one verifier per settings value, reloaded by override_settings; system checks name the key."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, override_settings

from k8s_jwt_auth import TokenVerifier, VerifierConfig
from k8s_jwt_auth.integrations.django.checks import check_installed_apps
from k8s_jwt_auth.integrations.django.conf import SettingsError, get_settings, load_settings
from k8s_jwt_auth.integrations.django.middleware import K8sJWTAuthMiddleware
from k8s_jwt_auth.testing import FakeIssuer
from tests._asgi import UnavailableKeys, bearer

from .conftest import Configure

BASE = {"ISSUER": "https://issuer.test", "AUDIENCES": ["test"], "JWKS_URI": "https://issuer.test/keys"}
OURS = "k8s_jwt_auth.integrations.django.middleware.K8sJWTAuthMiddleware"
AUTH_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"


def ids(**settings: Any) -> list[str]:
    with override_settings(**settings):
        return [message.id for message in run_checks() if message.id.startswith("k8s_jwt_auth.")]


def messages(**settings: Any) -> list[str]:
    with override_settings(**settings):
        return [message.msg for message in run_checks() if message.id.startswith("k8s_jwt_auth.")]


def test_one_verifier_until_the_settings_change(configure: Configure) -> None:
    holder = get_settings()
    first = holder.verifier
    assert holder.verifier is first
    with override_settings(K8S_JWT_AUTH={**BASE, "AUDIENCES": ["other"]}):
        assert holder.verifier.config.audiences == ("other",)
    assert holder.verifier is not first
    assert holder.verifier.config.audiences == ("test",)


def test_override_settings_changes_behaviour(client: Client, configure: Configure, issuer: FakeIssuer) -> None:
    token = issuer.mint("payments", "worker")
    assert client.get("/whoami", headers=bearer(token)).status_code == 200
    with override_settings(K8S_JWT_AUTH={**configure(), "ALLOW": ["frontend/*"]}):
        assert client.get("/whoami", headers=bearer(token)).status_code == 403
    with override_settings(K8S_JWT_AUTH={**configure(), "AUDIENCES": ["elsewhere"]}):
        assert client.get("/whoami", headers=bearer(token)).status_code == 401
    assert client.get("/whoami", headers=bearer(token)).status_code == 200


def test_a_ready_verifier_or_config(client: Client, configure: Configure, issuer: FakeIssuer) -> None:
    config = VerifierConfig(issuer=issuer.issuer, audiences=["test"], jwks=issuer.jwks())
    with override_settings(K8S_JWT_AUTH={"VERIFIER": config, "EXEMPT_PATHS": ["/healthz"]}):
        assert client.get("/whoami", headers=bearer(issuer.mint("payments", "worker"))).status_code == 200
        assert get_settings().verifier.config is config
    down = TokenVerifier(config, keys=UnavailableKeys())
    with override_settings(K8S_JWT_AUTH={"VERIFIER": down}):
        response = client.get("/whoami", headers=bearer(issuer.mint("payments", "worker")))
    assert response.status_code == 503
    assert response["Retry-After"] == "7"


def test_the_middleware_fails_fast_on_invalid_settings(configure: Configure) -> None:
    with override_settings(K8S_JWT_AUTH={"AUDIENCES": ["test"]}), \
            pytest.raises(ImproperlyConfigured, match=r'K8S_JWT_AUTH\["ISSUER"\]: is required'):
        K8sJWTAuthMiddleware(lambda request: None)


def test_the_app_must_be_installed(configure: Configure) -> None:
    with override_settings(INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"]), \
            pytest.raises(ImproperlyConfigured, match="INSTALLED_APPS"):
        get_settings()


# -- system checks ---------------------------------------------------------------------------------


def test_valid_settings_pass_the_checks() -> None:
    assert ids(K8S_JWT_AUTH={**BASE, "ALLOW": ["payments/*"]}) == []


@pytest.mark.parametrize(("value", "check_id", "named"), [
    (None, "E001", "K8S_JWT_AUTH: is not set"),
    ("https://issuer.test", "E001", "K8S_JWT_AUTH: must be a dict"),
    ({**BASE, "ISUER": "x"}, "E002", 'K8S_JWT_AUTH["ISUER"]: unknown key'),
    ({"AUDIENCES": ["test"]}, "E003", 'K8S_JWT_AUTH["ISSUER"]: is required'),
    ({"ISSUER": "https://issuer.test"}, "E003", 'K8S_JWT_AUTH["AUDIENCES"]: is required'),
    ({**BASE, "JWKS_URI": "http://example.com/keys"}, "E004", 'K8S_JWT_AUTH["JWKS_URI"]: jwks_uri'),
    ({"ISSUER": "http://issuer.example", "AUDIENCES": "test"}, "E004", 'K8S_JWT_AUTH["ISSUER"]: issuer'),
    ({**BASE, "LEEWAY": -1}, "E004", 'K8S_JWT_AUTH["LEEWAY"]: leeway must be a finite number of seconds >= 0'),
    ({**BASE, "LEEWAY": float("nan")}, "E004", 'K8S_JWT_AUTH["LEEWAY"]: leeway must be a finite number'),
    ({**BASE, "TIMEOUT": "inf"}, "E004", 'K8S_JWT_AUTH["TIMEOUT"]: timeout must be a finite number'),
    ({**BASE, "DRY_RUN": "perhaps"}, "E004", 'K8S_JWT_AUTH["DRY_RUN"]: expected a boolean'),
    ({**BASE, "ALLOW": ["payments"]}, "E004", 'K8S_JWT_AUTH["ALLOW"]: policy rule'),
    ({**BASE, "ALGORITHMS": ["HS256"]}, "E004", 'K8S_JWT_AUTH["ALGORITHMS"]: algorithms'),
    ({**BASE, "CA_FILE": "/no/such/ca.pem"}, "E004", 'K8S_JWT_AUTH["CA_FILE"]: ca_file'),
    ({**BASE, "JWKS_FILE": "/no/such/jwks.json"}, "E004", "K8S_JWT_AUTH: "),
    ({**BASE, "EXEMPT_PATHS": 5}, "E005", 'K8S_JWT_AUTH["EXEMPT_PATHS"]: expected a list of paths'),
    ({**BASE, "EXEMPT_PATHS": ["healthz"]}, "E005", 'K8S_JWT_AUTH["EXEMPT_PATHS"]: exempt path'),
    ({**BASE, "OPTIONAL": "maybe"}, "E005", 'K8S_JWT_AUTH["OPTIONAL"]: expected True or False'),
    ({**BASE, "MAP_TO_USERS": 1}, "E005", 'K8S_JWT_AUTH["MAP_TO_USERS"]: expected True or False'),
    ({**BASE, "HEADER": "Bad Header"}, "E005", 'K8S_JWT_AUTH["HEADER"]: header'),
    ({**BASE, "HEADER": "x_token"}, "E005", 'K8S_JWT_AUTH["HEADER"]: '),
    ({**BASE, "REALM": ""}, "E005", 'K8S_JWT_AUTH["REALM"]: \'\' must be 1 to 200 printable ASCII characters'),
    ({**BASE, "VERIFIER": "yes"}, "E005", 'K8S_JWT_AUTH["VERIFIER"]: give either VERIFIER'),
    ({"VERIFIER": "yes"}, "E005", 'K8S_JWT_AUTH["VERIFIER"]: must be a TokenVerifier'),
])
def test_invalid_settings_are_reported_by_id_and_key(settings: Any, value: Any, check_id: str, named: str) -> None:
    if value is None:
        del settings.K8S_JWT_AUTH
    else:
        settings.K8S_JWT_AUTH = value
    found = [m for m in run_checks() if m.id.startswith("k8s_jwt_auth.")]
    assert [m.id for m in found] == [f"k8s_jwt_auth.{check_id}"]
    assert found[0].msg.startswith(named)
    with pytest.raises(SettingsError) as excinfo:
        load_settings(value)
    assert excinfo.value.check_id == f"k8s_jwt_auth.{check_id}"


def test_policy_warnings() -> None:
    assert ids(K8S_JWT_AUTH=BASE) == ["k8s_jwt_auth.W002"]
    assert ids(K8S_JWT_AUTH={**BASE, "ALLOW": ["*/*"], "DRY_RUN": True}) == ["k8s_jwt_auth.W001"]
    assert messages(K8S_JWT_AUTH=BASE)[0].startswith('K8S_JWT_AUTH["ALLOW"] is empty')


def test_middleware_order_and_required_apps() -> None:
    allow = {"K8S_JWT_AUTH": {**BASE, "ALLOW": ["*/*"]}}
    assert ids(MIDDLEWARE=[OURS, AUTH_MIDDLEWARE], **allow) == ["k8s_jwt_auth.E007"]
    assert ids(MIDDLEWARE=[AUTH_MIDDLEWARE, OURS], **allow) == []
    # Django's own auth checks break without django.contrib.auth, so call ours directly
    with override_settings(INSTALLED_APPS=["django.contrib.contenttypes", "k8s_jwt_auth.integrations.django"]):
        found = check_installed_apps()
    assert [m.id for m in found] == ["k8s_jwt_auth.E006"]
    assert "django.contrib.auth" in found[0].msg
