"""Bearer-header parsing and RFC 6750 error responses (shared by every integration)."""

from __future__ import annotations

import json

import pytest

from k8s_jwt_auth import InvalidToken, KeySetUnavailable, PolicyDenied
from k8s_jwt_auth.http import UNAVAILABLE_MESSAGE, bearer_token, challenge, error_response, missing_token


@pytest.mark.parametrize(
    ("value", "token"),
    [(None, None), ("Basic dXNlcjpwYXNz", None), ("Bearer abc.def.ghi", "abc.def.ghi"),
     ("bearer abc.def.ghi", "abc.def.ghi"), ("  Bearer   abc.def.ghi  ", "abc.def.ghi"),
     (b"Bearer abc.def.ghi", "abc.def.ghi"), ("", None)],
)
def test_bearer_token(value: str | None, token: str | None) -> None:
    assert bearer_token(value) == token


@pytest.mark.parametrize("value", ["Bearer", "Bearer ", "Bearer a b", "Bearer a\tb"])
def test_malformed_bearer_header(value: str) -> None:
    with pytest.raises(InvalidToken) as info:
        bearer_token(value)
    assert info.value.reason == "malformed"


def test_huge_header() -> None:
    with pytest.raises(InvalidToken) as info:
        bearer_token("Bearer " + "a" * 70_000)
    assert info.value.reason == "too_large"


def test_401_challenge() -> None:
    response = error_response(InvalidToken("the token has expired", reason="expired"), realm="payments")
    assert response.status == 401
    assert dict(response.headers)["WWW-Authenticate"] == (
        'Bearer realm="payments", error="invalid_token", error_description="the token has expired"')
    assert json.loads(response.json_bytes()) == {"error": "invalid_token", "reason": "expired",
                                                 "message": "the token has expired"}


def test_missing_token_challenge_has_no_error_code() -> None:
    assert challenge(missing_token()) == "Bearer"
    assert error_response(missing_token()).body["reason"] == "missing_token"


def test_challenge_never_carries_header_injection() -> None:
    hostile = InvalidToken('no key with kid \'x"\r\nSet-Cookie: a=b\' in the key set', reason="unknown_key")
    value = challenge(hostile)
    assert "\r" not in value and "\n" not in value and value.count('"') == 4


def test_403_and_503() -> None:
    denied = error_response(PolicyDenied("workload a/b is not allowed", rule="!a/*"))
    assert denied.status == 403 and 'error="insufficient_scope"' in dict(denied.headers)["WWW-Authenticate"]
    unavailable = error_response(KeySetUnavailable("https://10.0.0.1:6443/openid/v1/jwks answered 500", retry_after=12))
    assert unavailable.status == 503 and dict(unavailable.headers)["Retry-After"] == "12"
    assert unavailable.body == {"error": "temporarily_unavailable", "reason": "keys_unavailable",
                                "message": UNAVAILABLE_MESSAGE}  # no internal URL in answers to callers
    assert "WWW-Authenticate" not in dict(unavailable.headers)
