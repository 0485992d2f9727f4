"""Property-based fuzzing: whatever the input, the verifier raises AuthError and nothing else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k8s_jwt_auth import AuthError, TokenVerifier, VerifierConfig
from k8s_jwt_auth.testing import SigningKey, b64url, sign

from .conftest import NOW, TEST_ISSUER


@pytest.fixture(scope="module")
def verifier(rsa_key: SigningKey, ec_key: SigningKey) -> TokenVerifier:
    jwks = {"keys": [rsa_key.public_jwk(), ec_key.public_jwk()]}
    return TokenVerifier(VerifierConfig(issuer=TEST_ISSUER, audiences=["test"], jwks=jwks), clock=lambda: NOW)


segment = st.one_of(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=60),
    st.binary(max_size=60).map(b64url),
    st.text(max_size=20),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
claim_names = st.sampled_from(["iss", "aud", "exp", "nbf", "iat", "sub", "kubernetes.io", "jti", "x"])


def _raises_only_auth_error(verifier: TokenVerifier, token: object) -> None:
    try:
        verifier.verify(token)  # type: ignore[arg-type]
    except AuthError:
        pass


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_any_bytes(verifier: TokenVerifier, data: bytes) -> None:
    _raises_only_auth_error(verifier, data)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_any_text(verifier: TokenVerifier, text: str) -> None:
    _raises_only_auth_error(verifier, text)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(segment, min_size=1, max_size=6))
def test_dotted_segments(verifier: TokenVerifier, parts: list[str]) -> None:
    _raises_only_auth_error(verifier, ".".join(parts))


@settings(max_examples=200, deadline=None)
@given(header=st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "jku", "x"]), json_values, max_size=4),
       payload=json_values)
def test_arbitrary_json_header_and_payload(verifier: TokenVerifier, header: dict[str, object],
                                           payload: object) -> None:
    token = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}.c2ln"
    _raises_only_auth_error(verifier, token)


@settings(max_examples=200, deadline=None)
@given(claims=st.dictionaries(claim_names, json_values, max_size=8))
def test_validly_signed_arbitrary_claims(verifier: TokenVerifier, rsa_key: SigningKey,
                                         claims: dict[str, object]) -> None:
    """The signature is good, so every claim check runs against hostile values."""
    _raises_only_auth_error(verifier, sign(rsa_key, claims))
