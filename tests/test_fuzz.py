"""Property-based fuzzing: whatever the input, the verifier raises AuthError and nothing else."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k8s_jwt_auth import AuthError, InvalidToken, MultiClusterVerifier, TokenVerifier, VerifierConfig
from k8s_jwt_auth.testing import SigningKey, b64url, sign

from .conftest import NOW, TEST_ISSUER


@pytest.fixture(scope="module", params=["single", "multi-cluster"])
def verifier(request: pytest.FixtureRequest, rsa_key: SigningKey, ec_key: SigningKey) -> TokenVerifier:
    """Every public verifier entry point: a single-cluster verifier, and a multi-cluster one routing by `iss`."""
    jwks = {"keys": [rsa_key.public_jwk(), ec_key.public_jwk()]}
    config = VerifierConfig(issuer=TEST_ISSUER, audiences=["test"], jwks=jwks)
    if request.param == "single":
        return TokenVerifier(config, clock=lambda: NOW)
    other = VerifierConfig(issuer="https://other.test", audiences=["test"], jwks={"keys": [ec_key.public_jwk()]})
    return MultiClusterVerifier({"main": config, "other": other}, clock=lambda: NOW)


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


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) not in seen:
            seen.add(id(current))
            yield current
            todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def assert_holds_no_token(exc: BaseException, token: object) -> None:
    """Neither the error nor anything in its chain (`__cause__`, `__context__`) carries the token."""
    if isinstance(token, (bytes, bytearray)):
        token = bytes(token).decode("latin-1")
    if not isinstance(token, str) or len(token) < 20:
        return  # too short to tell a token from the words of a message ("malforme" is in "malformed")
    for link in _chain(exc):
        for text in (repr(link), str(link), repr(link.args), repr(vars(link) if hasattr(link, "__dict__") else "")):
            assert token not in text, f"{type(link).__name__} in the chain of {type(exc).__name__} holds the token"


def _raises_only_auth_error(verifier: TokenVerifier, token: object) -> None:
    try:
        verifier.verify(token)  # type: ignore[arg-type]
    except AuthError as exc:
        assert_holds_no_token(exc, token)
    try:
        asyncio.run(verifier.verify_async(token))  # type: ignore[arg-type]
    except AuthError as exc:
        assert_holds_no_token(exc, token)


@pytest.mark.parametrize("payload", [b"[" * 5000, b"{\"a\":" * 3000, b"[" * 12_000])
def test_deeply_nested_payload_is_malformed_not_a_crash(verifier: TokenVerifier, payload: bytes) -> None:
    # A few thousand `[` fit in 16 KiB and overflow the recursion limit of a naive json.loads.
    header = b64url(json.dumps({"alg": "RS256", "kid": "k"}).encode())
    token = f"{header}.{b64url(payload)}.c2ln"
    for call in (verifier.verify, lambda t: asyncio.run(verifier.verify_async(t))):
        with pytest.raises(InvalidToken) as caught:
            call(token)
        # a single verifier looks the kid up before reading the payload; a multi-cluster one reads `iss` first
        expected = {"malformed"} if isinstance(verifier, MultiClusterVerifier) else {"unknown_key"}
        assert caught.value.reason in expected | {"too_large"}


@pytest.mark.parametrize("token", ["eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiLDqSJ9.c2lnbmF0dXJl\u00e9",
                                   "ey\u2028J.abc.def-secret-token-material-\u00ff"])
def test_non_ascii_token_leaves_no_trace_of_itself_in_the_error_chain(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(InvalidToken) as caught:
        verifier.verify(token)
    assert caught.value.reason == "malformed"
    assert_holds_no_token(caught.value, token)


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


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", [10**400, -(10**400), 10**309])
def test_a_signed_time_claim_beyond_a_double_is_malformed_not_a_crash(
    verifier: TokenVerifier, rsa_key: SigningKey, claim: str, value: int,
) -> None:
    claims = {"iss": TEST_ISSUER, "aud": "test", "sub": "system:serviceaccount:a:b", "exp": NOW + 60, "iat": NOW - 1,
              "kubernetes.io": {"namespace": "a", "serviceaccount": {"name": "b", "uid": "u"}}, claim: value}
    with pytest.raises(InvalidToken) as caught:
        verifier.verify(sign(rsa_key, claims))
    assert (caught.value.reason, caught.value.claim) == ("malformed", claim)
