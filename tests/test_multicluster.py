"""MultiClusterVerifier: several issuers, routed by `iss`, no cross-issuer key use, per-cluster policy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from k8s_jwt_auth import (
    ClusterPolicy,
    ConfigurationError,
    InvalidToken,
    KeySetUnavailable,
    MultiClusterVerifier,
    Policy,
    PolicyDenied,
    TokenVerifier,
    VerifierConfig,
)
from k8s_jwt_auth.integrations.starlette import K8sJWTAuthMiddleware, WorkloadUser
from k8s_jwt_auth.testing import FakeIssuer, SigningKey, build_claims, sign

from ._asgi import TestClient, bearer

NOW = 1_800_000_000.0
EU, US = "https://oidc.eu.test", "https://oidc.us.test"


@pytest.fixture(scope="module")
def eu_key() -> SigningKey:
    return SigningKey.generate("RS256")


@pytest.fixture(scope="module")
def us_key() -> SigningKey:
    return SigningKey.generate("ES256")


def token(key: SigningKey, issuer: str, namespace: str = "shop", sa: str = "checkout", *,
          audiences: tuple[str, ...] = ("payments",), header: dict[str, Any] | None = None) -> str:
    claims = build_claims(issuer=issuer, namespace=namespace, service_account=sa, audiences=audiences,
                          lifetime=3600, now=NOW - 10, pod="p-1", node=None, warn_after=None, extra=None, drop=())
    return sign(key, claims, header)


@pytest.fixture
def verifier(eu_key: SigningKey, us_key: SigningKey) -> MultiClusterVerifier:
    return MultiClusterVerifier({
        "prod-eu": VerifierConfig(issuer=EU, audiences="payments", jwks={"keys": [eu_key.public_jwk()]},
                                  allow="shop/*"),
        "prod-us": VerifierConfig(issuer=US, audiences="payments", jwks={"keys": [us_key.public_jwk()]},
                                  allow="shop/checkout"),
    }, clock=lambda: NOW)


def test_each_token_is_verified_by_its_own_cluster_and_names_it(verifier: MultiClusterVerifier,
                                                                 eu_key: SigningKey, us_key: SigningKey) -> None:
    eu = verifier.verify(token(eu_key, EU))
    us = verifier.verify(token(us_key, US, sa="cart"))
    assert (eu.cluster, eu.issuer, eu.service_account) == ("prod-eu", EU, "checkout")
    assert (us.cluster, us.issuer, us.service_account) == ("prod-us", US, "cart")
    assert eu.to_dict()["cluster"] == "prod-eu"
    assert verifier.route(token(us_key, US)) is verifier.clusters["prod-us"]


@pytest.mark.anyio
async def test_async_path_routes_the_same_way(verifier: MultiClusterVerifier, us_key: SigningKey) -> None:
    identity = await verifier.verify_async(token(us_key, US))
    assert identity.cluster == "prod-us"


def test_unknown_issuer_is_bad_issuer_without_any_key_lookup(verifier: MultiClusterVerifier,
                                                             eu_key: SigningKey) -> None:
    with pytest.raises(InvalidToken) as info:
        verifier.verify(token(eu_key, "https://attacker.test"))
    assert (info.value.reason, info.value.claim) == ("bad_issuer", "iss")


@pytest.mark.parametrize(("claims", "reason"), [(b"[1]", "malformed"), (b'{"iss": 5}', "bad_issuer"),
                                                (b"{}", "bad_issuer")])
def test_payload_without_a_string_issuer_is_refused(verifier: MultiClusterVerifier, eu_key: SigningKey,
                                                    claims: bytes, reason: str) -> None:
    # a payload that is not a JSON object is `malformed`, as in a single-cluster verifier
    with pytest.raises(InvalidToken) as info:
        verifier.verify(sign(eu_key, claims))
    assert info.value.reason == reason


def test_unreadable_token_is_malformed(verifier: MultiClusterVerifier, eu_key: SigningKey) -> None:
    for bad in ("not-a-token", sign(eu_key, b"\xff not json")):
        with pytest.raises(InvalidToken) as info:
            verifier.verify(bad)
        assert info.value.reason == "malformed"


def test_one_issuers_key_never_verifies_another_issuers_token(verifier: MultiClusterVerifier,
                                                               eu_key: SigningKey, us_key: SigningKey) -> None:
    # names the US issuer, signed by the EU key (whose kid the US key set does not have)
    with pytest.raises(InvalidToken) as info:
        verifier.verify(token(eu_key, US))
    assert info.value.reason == "unknown_key"
    # names the US issuer, claims the US kid, signed by the EU key: the US key does not verify it
    forged = token(eu_key, US, header={"alg": "ES256", "kid": us_key.kid, "typ": "JWT"})
    with pytest.raises(InvalidToken) as info:
        verifier.verify(forged)
    assert info.value.reason == "bad_signature"


def test_each_cluster_keeps_its_own_audiences(eu_key: SigningKey, us_key: SigningKey) -> None:
    verifier = MultiClusterVerifier({
        "a": VerifierConfig(issuer=EU, audiences="billing", jwks={"keys": [eu_key.public_jwk()]}),
        "b": VerifierConfig(issuer=US, audiences="payments", jwks={"keys": [us_key.public_jwk()]}),
    }, clock=lambda: NOW)
    assert verifier.verify(token(us_key, US)).cluster == "b"
    with pytest.raises(InvalidToken) as info:
        verifier.verify(token(eu_key, EU, audiences=("payments",)))
    assert info.value.reason == "bad_audience"


def test_policy_is_the_policy_of_the_tokens_cluster(verifier: MultiClusterVerifier, eu_key: SigningKey,
                                                    us_key: SigningKey) -> None:
    assert isinstance(verifier.policy, ClusterPolicy) and not verifier.policy.is_open
    cart_eu = verifier.verify(token(eu_key, EU, sa="cart"))
    cart_us = verifier.verify(token(us_key, US, sa="cart"))
    assert verifier.policy.enforce(cart_eu).allowed
    with pytest.raises(PolicyDenied):
        verifier.policy.enforce(cart_us)
    # an identity naming no known cluster is denied, whatever the rules say
    assert not verifier.policy.evaluate(cart_eu.__class__(issuer=EU, subject="system:serviceaccount:shop:cart",
                                                          namespace="shop", service_account="cart")).allowed


def test_caches_are_per_cluster_and_summed(verifier: MultiClusterVerifier, eu_key: SigningKey,
                                           us_key: SigningKey) -> None:
    eu, us = token(eu_key, EU), token(us_key, US)
    for _ in range(2):
        verifier.verify(eu)
        verifier.verify(us)
    info = verifier.cache_info()
    assert info is not None and (info.hits, info.misses, info.currsize) == (2, 2, 2)
    verifier.clear_cache()
    assert verifier.cache_info().currsize == 0  # type: ignore[union-attr]


def test_configuration_errors(eu_key: SigningKey) -> None:
    jwks = {"keys": [eu_key.public_jwk()]}
    with pytest.raises(ConfigurationError):
        MultiClusterVerifier({})
    with pytest.raises(ConfigurationError, match="both accept issuer"):
        MultiClusterVerifier({"a": VerifierConfig(issuer=EU, audiences="x", jwks=jwks),
                              "b": VerifierConfig(issuer=EU, audiences="y", jwks=jwks)})
    with pytest.raises(ConfigurationError, match="both accept issuer"):  # legacy issuer in two clusters
        MultiClusterVerifier({"a": VerifierConfig(issuer=EU, audiences="x", jwks=jwks, allow_legacy_tokens=True),
                              "b": VerifierConfig(issuer=US, audiences="y", jwks=jwks, allow_legacy_tokens=True)})
    with pytest.raises(ConfigurationError, match="names cluster"):
        MultiClusterVerifier({"a": VerifierConfig(issuer=EU, audiences="x", jwks=jwks, cluster="b")})
    with pytest.raises(ConfigurationError, match="cluster='a'"):
        MultiClusterVerifier({"a": TokenVerifier(VerifierConfig(issuer=EU, audiences="x", jwks=jwks))})
    with pytest.raises(ConfigurationError, match="expected a VerifierConfig"):
        MultiClusterVerifier({"a": "https://oidc.eu.test"})  # type: ignore[dict-item]


def test_ready_verifiers_keep_their_own_policy(eu_key: SigningKey) -> None:
    config = VerifierConfig(issuer=EU, audiences="payments", jwks={"keys": [eu_key.public_jwk()]}, cluster="eu")
    own = TokenVerifier(config, policy=Policy(["!shop/checkout"]), clock=lambda: NOW)
    verifier = MultiClusterVerifier({"eu": own})
    identity = verifier.verify(token(eu_key, EU))
    assert identity.cluster == "eu" and not verifier.policy.evaluate(identity).allowed


def test_from_env_reads_each_cluster_under_its_prefix(eu_key: SigningKey, us_key: SigningKey,
                                                      tmp_path: Any) -> None:
    (tmp_path / "eu.json").write_text(f'{{"keys": [{_json(eu_key.public_jwk())}]}}')
    (tmp_path / "us.json").write_text(f'{{"keys": [{_json(us_key.public_jwk())}]}}')
    env = {
        "K8S_JWT_AUTH_CLUSTERS": "prod-eu, prod.us",
        "K8S_JWT_AUTH_PROD_EU_ISSUER": EU, "K8S_JWT_AUTH_PROD_EU_AUDIENCES": "payments",
        "K8S_JWT_AUTH_PROD_EU_JWKS_FILE": str(tmp_path / "eu.json"),
        "K8S_JWT_AUTH_PROD_US_ISSUER": US, "K8S_JWT_AUTH_PROD_US_AUDIENCES": "payments",
        "K8S_JWT_AUTH_PROD_US_JWKS_FILE": str(tmp_path / "us.json"), "K8S_JWT_AUTH_PROD_US_ALLOW": "shop/*",
    }
    verifier = MultiClusterVerifier.from_env(env, clock=lambda: NOW)
    assert list(verifier.clusters) == ["prod-eu", "prod.us"]
    assert verifier.verify(token(us_key, US)).cluster == "prod.us"
    assert verifier.clusters["prod.us"].policy == Policy(["shop/*"])
    with pytest.raises(ConfigurationError) as info:
        MultiClusterVerifier.from_env({})
    assert info.value.setting == "CLUSTERS"
    with pytest.raises(ConfigurationError, match="K8S_JWT_AUTH_PROD_EU_ISSUER"):
        MultiClusterVerifier.from_env({"K8S_JWT_AUTH_CLUSTERS": "prod-eu"})


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


# -- remote key sources: two real issuers on loopback -------------------------------------------------


@pytest.fixture(scope="module")
def second_issuer() -> Iterator[FakeIssuer]:
    with FakeIssuer() as issuer:
        yield issuer


def test_remote_clusters_fetch_only_their_own_keys(issuer: FakeIssuer, second_issuer: FakeIssuer) -> None:
    second_issuer.reset()
    verifier = MultiClusterVerifier({"one": VerifierConfig(issuer=issuer.issuer, audiences="test"),
                                     "two": VerifierConfig(issuer=second_issuer.issuer, audiences="test")})
    assert verifier.verify(issuer.mint("a", "b")).cluster == "one"
    assert (issuer.jwks_fetches, second_issuer.jwks_fetches) == (1, 0)
    assert verifier.verify(second_issuer.mint("a", "b")).cluster == "two"
    assert (issuer.jwks_fetches, second_issuer.jwks_fetches) == (1, 1)
    # a token naming issuer two, signed by issuer one's key under issuer two's kid: refused
    forged = second_issuer.mint("a", "b", key=issuer.key, header={"alg": "RS256", "kid": second_issuer.key.kid})
    with pytest.raises(InvalidToken) as info:
        verifier.verify(forged)
    assert info.value.reason == "bad_signature"
    second_issuer.reset()


def test_cluster_unavailable_is_503_only_for_that_cluster(issuer: FakeIssuer, second_issuer: FakeIssuer) -> None:
    second_issuer.reset()
    second_issuer.fail("down")
    verifier = MultiClusterVerifier({"one": VerifierConfig(issuer=issuer.issuer, audiences="test", timeout=1),
                                     "two": VerifierConfig(issuer=second_issuer.issuer, audiences="test",
                                                           timeout=1)})
    with pytest.raises(KeySetUnavailable):
        verifier.verify(second_issuer.mint("a", "b"))
    assert verifier.verify(issuer.mint("a", "b")).cluster == "one"
    second_issuer.reset()


# -- through an adapter ---------------------------------------------------------------------------------


async def whoami(request: Request) -> JSONResponse:
    user = request.user
    assert isinstance(user, WorkloadUser)
    return JSONResponse(user.workload.to_dict())


def test_starlette_middleware_applies_the_cluster_policy(verifier: MultiClusterVerifier, eu_key: SigningKey,
                                                         us_key: SigningKey) -> None:
    app = Starlette(routes=[Route("/whoami", whoami)])
    app.add_middleware(K8sJWTAuthMiddleware, verifier=verifier)
    with TestClient(app) as client:
        ok = client.get("/whoami", headers=bearer(token(eu_key, EU, sa="cart")))
        assert ok.status_code == 200 and ok.json()["cluster"] == "prod-eu"
        denied = client.get("/whoami", headers=bearer(token(us_key, US, sa="cart")))
        assert denied.status_code == 403 and denied.json()["reason"] == "policy_denied"
        unknown = client.get("/whoami", headers=bearer(token(us_key, "https://other.test")))
        assert unknown.status_code == 401 and unknown.json()["reason"] == "bad_issuer"


def test_flask_extension_applies_the_cluster_policy(verifier: MultiClusterVerifier, eu_key: SigningKey,
                                                    us_key: SigningKey) -> None:
    from flask import Flask, jsonify

    from k8s_jwt_auth.integrations.flask import K8sJWTAuth, current_workload, workload_required

    app = Flask(__name__)
    K8sJWTAuth(app, verifier=verifier)

    @app.get("/whoami")
    @workload_required()
    def whoami() -> Any:
        return jsonify(current_workload.to_dict())

    client = app.test_client()
    ok = client.get("/whoami", headers=bearer(token(us_key, US)))
    assert ok.status_code == 200 and ok.json["cluster"] == "prod-us"  # type: ignore[index]
    denied = client.get("/whoami", headers=bearer(token(us_key, US, sa="cart")))
    assert denied.status_code == 403 and denied.json["reason"] == "policy_denied"  # type: ignore[index]
