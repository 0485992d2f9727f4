"""`identity.claims` of a verified token is exactly its payload, kept as its JSON bytes until first read."""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import pytest

from k8s_jwt_auth import TokenVerifier, VerifierConfig, WorkloadIdentity
from k8s_jwt_auth._lazy_claims import LazyClaims
from k8s_jwt_auth.testing import FakeClock, SigningKey, build_claims, sign

from .conftest import FIXTURES, NOW, REAL_ISSUER, REAL_NOW, TEST_ISSUER, real_token


def payload_of(token: str) -> dict[str, Any]:
    segment = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return decoded


@pytest.mark.parametrize("name", ["pub-aud-payments-api-1h", "pub-pod-bound-1h", "pub-two-aud-24h"])
def test_real_tokens_claims_are_their_payload_in_order(name: str) -> None:
    verifier = TokenVerifier(VerifierConfig(issuer=REAL_ISSUER, audiences=["payments-api"],
                                            jwks_file=str(FIXTURES / "jwks.json")), clock=lambda: REAL_NOW)
    token = real_token(name)
    claims = verifier.verify(token).claims
    assert isinstance(claims, LazyClaims) and claims._dict is None  # nothing decoded until read
    expected = payload_of(token)
    assert json.dumps(dict(claims)) == json.dumps(expected)  # order, types and nesting
    assert len(claims) == len(expected) and claims["sub"] == expected["sub"] and claims._dict is not None


@pytest.mark.parametrize("extra", [
    {"aud": "one-audience"},
    {"exp": float(int(NOW) + 3600), "iat": NOW + 0.5},
    {"custom": {"nested": {"deep": [1, 2.5, True, None, "x"]}, "flag": False}},
])
def test_any_payload_round_trips_and_the_cached_identity_keeps_it(rsa_key: SigningKey, extra: dict[str, Any]) -> None:
    verifier = TokenVerifier(VerifierConfig(issuer=TEST_ISSUER, audiences=["test", "one-audience"],
                                            jwks={"keys": [rsa_key.public_jwk()]}), clock=FakeClock(NOW))
    token = sign(rsa_key, build_claims(issuer=TEST_ISSUER, namespace="payments", service_account="worker",
                                       now=NOW, extra=extra))
    identity = verifier.verify(token)
    assert json.dumps(dict(identity.claims)) == json.dumps(payload_of(token))
    assert verifier.verify(token).claims is identity.claims


def test_claims_are_read_only_and_decoded_once_under_threads(rsa_key: SigningKey) -> None:
    verifier = TokenVerifier(VerifierConfig(issuer=TEST_ISSUER, audiences=["test"],
                                            jwks={"keys": [rsa_key.public_jwk()]}), clock=FakeClock(NOW))
    claims = verifier.verify(sign(rsa_key, build_claims(issuer=TEST_ISSUER, now=NOW))).claims
    seen: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda: seen.append(dict(claims))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(seen) == 8 and all(s == seen[0] for s in seen)
    with pytest.raises(TypeError):
        claims["iss"] = "forged"  # type: ignore[index]
    assert "LazyClaims({" in repr(claims)


def test_repeated_values_are_one_object_across_identities(rsa_key: SigningKey) -> None:
    verifier = TokenVerifier(VerifierConfig(issuer=TEST_ISSUER, audiences=["test"],
                                            jwks={"keys": [rsa_key.public_jwk()]}), clock=FakeClock(NOW))
    one, two = (verifier.verify(sign(rsa_key, build_claims(issuer=TEST_ISSUER, namespace="payments",
                                                            service_account="worker", pod=f"worker-{i}",
                                                            node="node-1", now=NOW))) for i in range(2))
    assert one.namespace is two.namespace and one.service_account is two.service_account
    assert one.node_name is two.node_name and one.issuer is two.issuer and one.audiences is two.audiences
    assert one.pod_name != two.pod_name


def test_an_identity_built_by_hand_keeps_a_read_only_copy() -> None:
    given = {"x": 1}
    identity = WorkloadIdentity(issuer="i", subject="s", namespace="n", service_account="a", claims=given)
    given["x"] = 2
    assert identity.claims == {"x": 1}
    with pytest.raises(TypeError):
        identity.claims["x"] = 3  # type: ignore[index]
