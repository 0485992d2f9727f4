"""`identity.claims` of a verified token is exactly its payload, kept frozen (a shared shape + a flat tuple)."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k8s_jwt_auth import TokenVerifier, VerifierConfig
from k8s_jwt_auth._frozen_claims import _MAX_SHAPES, FrozenClaims, freeze
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
    expected = payload_of(token)
    assert isinstance(claims, FrozenClaims)
    assert dict(claims) == expected and list(claims) == list(expected) and len(claims) == len(expected)
    assert json.dumps(dict(claims)) == json.dumps(expected)  # types too: ints stay ints, lists stay lists
    assert list(claims["kubernetes.io"]) == list(expected["kubernetes.io"])


@pytest.mark.parametrize("extra", [
    {"aud": "one-audience"},  # a string, not a list
    {"exp": float(int(NOW) + 3600), "iat": NOW + 0.5},  # float times stay floats
    {"custom": {"nested": {"deep": [1, 2.5, True, None, "x"]}, "flag": False}},
    {"kubernetes.io": {"namespace": "payments", "serviceaccount": {"name": "worker", "uid": "u"}, "x": [1]}},
])
def test_any_json_payload_round_trips(rsa_key: SigningKey, extra: dict[str, Any]) -> None:
    verifier = TokenVerifier(VerifierConfig(issuer=TEST_ISSUER, audiences=["test", "one-audience"],
                                            jwks={"keys": [rsa_key.public_jwk()]}), clock=FakeClock(NOW))
    token = sign(rsa_key, build_claims(issuer=TEST_ISSUER, namespace="payments", service_account="worker",
                                       now=NOW, extra=extra))
    claims = verifier.verify(token).claims
    expected = payload_of(token)
    assert json.dumps(dict(claims)) == json.dumps(expected)
    assert verifier.verify(token).claims is claims  # the cached identity keeps its frozen claims


def test_shapes_are_shared_and_strings_are_the_identitys(rsa_key: SigningKey) -> None:
    verifier = TokenVerifier(VerifierConfig(issuer=TEST_ISSUER, audiences=["test"],
                                            jwks={"keys": [rsa_key.public_jwk()]}), clock=FakeClock(NOW))
    one, two = (verifier.verify(sign(rsa_key, build_claims(issuer=TEST_ISSUER, namespace="payments",
                                                            service_account="worker", pod=f"worker-{i}", now=NOW)))
                for i in range(2))
    assert isinstance(one.claims, FrozenClaims) and isinstance(two.claims, FrozenClaims)
    assert one.claims._shape is two.claims._shape
    assert one.namespace is two.namespace and one.service_account_uid is two.service_account_uid
    values = one.claims._values
    assert any(v is one.pod_name for v in values) and any(v is one.expires_at for v in values)
    assert one.claims["exp"] == int(one.expires_at.timestamp()) and type(one.claims["exp"]) is int  # type: ignore[union-attr]


def test_what_cannot_be_frozen_is_left_alone() -> None:
    assert freeze({"a": (1, 2)}, {}, {}) is None  # not a JSON value
    assert freeze({"\0list": 1}, {}, {}) is None  # would read as the list marker
    assert freeze({"a": [{"b": 1}]}, {}, {}) is None  # lists of objects stay dicts


def test_the_shape_table_is_bounded() -> None:
    shapes: dict[Any, Any] = {}
    for i in range(_MAX_SHAPES + 5):
        freeze({f"claim-{i}": 1}, {}, shapes)
    assert len(shapes) == _MAX_SHAPES and freeze({"never-seen-shape": 1}, {}, shapes) is None
    assert freeze({"claim-0": 2}, {}, shapes) is not None  # known shapes still freeze


def test_an_identity_built_by_hand_keeps_its_mapping_read_only() -> None:
    from k8s_jwt_auth import WorkloadIdentity

    identity = WorkloadIdentity(issuer="i", subject="s", namespace="n", service_account="a", claims={"x": 1})
    with pytest.raises(TypeError):
        identity.claims["x"] = 2  # type: ignore[index]


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=5), children, max_size=4), max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_freeze_then_read_is_the_identity_function(payload: dict[str, Any]) -> None:
    moment = datetime.fromtimestamp(1_800_000_000, tz=timezone.utc)
    frozen = freeze(payload, {1_800_000_000: moment}, {})
    if frozen is not None:
        assert json.dumps(dict(frozen)) == json.dumps(payload)
