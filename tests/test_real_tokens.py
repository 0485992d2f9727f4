"""Tokens minted by a real kube-apiserver v1.36.2 (tests/fixtures/k8s) verify to the exact identity."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from k8s_jwt_auth import InvalidToken, TokenVerifier, VerifierConfig, WorkloadIdentity

from .conftest import FIXTURES, REAL_ISSUER, REAL_NOW, real_detail, real_token

NAMES = ["pub-aud-payments-api-1h", "pub-pod-bound-1h", "pub-two-aud-24h"]


def verifier(now: float, **overrides: object) -> TokenVerifier:
    config = VerifierConfig(issuer=REAL_ISSUER, audiences=["payments-api"],
                            jwks_file=str(FIXTURES / "jwks.json"), **overrides)  # type: ignore[arg-type]
    return TokenVerifier(config, clock=lambda: now)


def utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


@pytest.mark.parametrize("name", NAMES)
def test_real_token_verifies_to_exact_identity(name: str) -> None:
    detail = real_detail(name)
    payload, k8s = detail["payload"], detail["payload"]["kubernetes.io"]
    identity = verifier(REAL_NOW).verify(real_token(name))
    pod, node = k8s.get("pod"), k8s.get("node")
    assert identity == WorkloadIdentity(
        issuer=REAL_ISSUER,
        subject=payload["sub"],
        namespace=k8s["namespace"],
        service_account=k8s["serviceaccount"]["name"],
        service_account_uid=k8s["serviceaccount"]["uid"],
        pod_name=pod and pod["name"],
        pod_uid=pod and pod["uid"],
        node_name=node and node["name"],
        node_uid=node and node["uid"],
        audiences=tuple(payload["aud"]),
        issued_at=utc(payload["iat"]),
        not_before=utc(payload["nbf"]),
        expires_at=utc(payload["exp"]),
        token_id=payload["jti"],
    )
    assert dict(identity.claims) == payload
    assert identity.stale is False


def test_pod_bound_fixture_fields() -> None:
    identity = verifier(REAL_NOW).verify(real_token("pub-pod-bound-1h"))
    assert (identity.namespace, identity.service_account) == ("frontend", "web")
    assert (identity.pod_name, identity.pod_uid) == ("web-5c6b", "79c7fbb2-2102-486a-9322-f155fb636387")
    assert (identity.node_name, identity.node_uid) == ("node-1", "932f1bd4-632b-4097-bde3-f4c9d3a01645")
    assert identity.is_pod_bound
    assert identity.username == "system:serviceaccount:frontend:web"
    assert identity.istio_principal() == "cluster.local/ns/frontend/sa/web"
    assert identity.spiffe_id("prod.example") == "spiffe://prod.example/ns/frontend/sa/web"


def test_unbound_fixture_has_no_pod_or_node() -> None:
    identity = verifier(REAL_NOW).verify(real_token("pub-aud-payments-api-1h"))
    assert identity.pod_name is identity.pod_uid is identity.node_name is identity.node_uid is None
    assert not identity.is_pod_bound


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.anyio
async def test_real_token_verifies_async(name: str) -> None:
    v = verifier(REAL_NOW)
    assert await v.verify_async(real_token(name)) == v.verify(real_token(name))


@pytest.mark.parametrize("name", NAMES)
def test_real_token_expired_after_exp_plus_leeway(name: str) -> None:
    exp = real_detail(name)["payload"]["exp"]
    assert verifier(exp + 60).verify(real_token(name)).expires_at == utc(exp)  # inside the leeway
    with pytest.raises(InvalidToken) as info:
        verifier(exp + 61).verify(real_token(name))
    assert (info.value.reason, info.value.claim) == ("expired", "exp")


def test_real_token_not_yet_valid_before_nbf_minus_leeway() -> None:
    nbf = real_detail("pub-pod-bound-1h")["payload"]["nbf"]
    with pytest.raises(InvalidToken) as info:
        verifier(nbf - 61).verify(real_token("pub-pod-bound-1h"))
    assert info.value.reason == "not_yet_valid"


def test_real_token_for_other_audience_is_rejected() -> None:
    config = VerifierConfig(issuer=REAL_ISSUER, audiences=["orders-api"], jwks_file=str(FIXTURES / "jwks.json"))
    with pytest.raises(InvalidToken) as info:
        TokenVerifier(config, clock=lambda: REAL_NOW).verify(real_token("pub-pod-bound-1h"))
    assert info.value.reason == "bad_audience"


def test_second_audience_of_two_aud_token_is_accepted() -> None:
    config = VerifierConfig(issuer=REAL_ISSUER, audiences=[REAL_ISSUER], jwks_file=str(FIXTURES / "jwks.json"))
    identity = TokenVerifier(config, clock=lambda: REAL_NOW).verify(real_token("pub-two-aud-24h"))
    assert identity.audiences == ("payments-api", REAL_ISSUER)


def test_real_token_under_another_issuer_is_rejected() -> None:
    config = VerifierConfig(issuer="https://other.cluster", audiences=["payments-api"],
                            jwks_file=str(FIXTURES / "jwks.json"))
    with pytest.raises(InvalidToken) as info:
        TokenVerifier(config, clock=lambda: REAL_NOW).verify(real_token("pub-pod-bound-1h"))
    assert info.value.reason == "bad_issuer"


def test_require_pod_binding() -> None:
    v = verifier(REAL_NOW, require_pod_binding=True)
    assert v.verify(real_token("pub-pod-bound-1h")).pod_name == "web-5c6b"
    with pytest.raises(InvalidToken) as info:
        v.verify(real_token("pub-aud-payments-api-1h"))
    assert info.value.reason == "not_pod_bound"


def test_max_token_age() -> None:
    iat = real_detail("pub-two-aud-24h")["payload"]["iat"]
    v = verifier(iat + 600, max_token_age=300)
    with pytest.raises(InvalidToken) as info:
        v.verify(real_token("pub-two-aud-24h"))
    assert info.value.reason == "too_old"
    assert verifier(iat + 300, max_token_age=300).verify(real_token("pub-two-aud-24h"))


def test_identity_is_immutable_and_hashable() -> None:
    identity = verifier(REAL_NOW).verify(real_token("pub-pod-bound-1h"))
    with pytest.raises(AttributeError):
        identity.namespace = "kube-system"  # type: ignore[misc]
    with pytest.raises(TypeError):
        identity.claims["sub"] = "x"  # type: ignore[index]
    assert len({identity, verifier(REAL_NOW).verify(real_token("pub-pod-bound-1h"))}) == 1


def test_configured_trust_domain_is_used_by_principals() -> None:
    identity = verifier(REAL_NOW, trust_domain="prod.example").verify(real_token("pub-pod-bound-1h"))
    assert identity.spiffe_id() == "spiffe://prod.example/ns/frontend/sa/web"
    assert identity.istio_principal() == "prod.example/ns/frontend/sa/web"
