"""TokenVerifier behaviour beyond the attack suite: staleness, kid-less tokens, sync/async parity."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from k8s_jwt_auth import InvalidToken, TokenVerifier
from k8s_jwt_auth.testing import SigningKey, build_claims, sign

from .conftest import NOW, TEST_ISSUER

Factory = Callable[..., TokenVerifier]


def test_token_used_after_warnafter_is_accepted_but_stale(make_verifier: Factory, rsa_key: SigningKey) -> None:
    token = sign(rsa_key, build_claims(issuer=TEST_ISSUER, now=NOW - 7200, lifetime=365 * 86400,
                                       warn_after=NOW - 3600))
    identity = make_verifier().verify(token)
    assert identity.stale is True
    assert identity.warn_after is not None and identity.warn_after.timestamp() == NOW - 3600
    fresh = sign(rsa_key, build_claims(issuer=TEST_ISSUER, now=NOW - 60, warn_after=NOW + 3600))
    assert make_verifier().verify(fresh).stale is False


def test_token_without_kid_uses_the_only_fitting_key(make_verifier: Factory, rsa_key: SigningKey,
                                                     ec_key: SigningKey) -> None:
    claims = build_claims(issuer=TEST_ISSUER, now=NOW)
    assert make_verifier().verify(sign(rsa_key, claims, {"alg": "RS256"})).namespace == "default"
    assert make_verifier().verify(sign(ec_key, claims, {"alg": "ES256"})).namespace == "default"
    two_rsa = {"keys": [rsa_key.public_jwk(), SigningKey.generate("RS256").public_jwk()]}
    with pytest.raises(InvalidToken) as info:
        make_verifier(jwks=two_rsa).verify(sign(rsa_key, claims, {"alg": "RS256"}))
    assert info.value.reason == "unknown_key"


def test_leeway_is_configurable(make_verifier: Factory, rsa_key: SigningKey) -> None:
    token = sign(rsa_key, build_claims(issuer=TEST_ISSUER, now=NOW - 3610, lifetime=3600))  # expired 10 s ago
    assert make_verifier().verify(token)
    with pytest.raises(InvalidToken) as info:
        make_verifier(leeway=5).verify(token)
    assert info.value.reason == "expired"


def test_fingerprint_is_short_and_stable(make_verifier: Factory, rsa_key: SigningKey) -> None:
    token = sign(rsa_key, build_claims(issuer=TEST_ISSUER, now=NOW))
    identity = make_verifier().verify(token)
    assert len(identity.token_fingerprint) == 16
    assert identity.token_fingerprint == make_verifier().verify(token.encode()).token_fingerprint
    assert identity.token_fingerprint not in token


@pytest.mark.anyio
async def test_sync_and_async_agree_on_errors(make_verifier: Factory, rsa_key: SigningKey) -> None:
    verifier = make_verifier()
    expired = sign(rsa_key, build_claims(issuer=TEST_ISSUER, now=NOW - 9000, lifetime=3600))
    for token in (expired, "x.y.z", sign(SigningKey.generate("RS256"), build_claims(issuer=TEST_ISSUER, now=NOW))):
        with pytest.raises(InvalidToken) as sync_info:
            verifier.verify(token)
        with pytest.raises(InvalidToken) as async_info:
            await verifier.verify_async(token)
        assert sync_info.value.reason == async_info.value.reason


def test_one_verifier_shared_by_threads(make_verifier: Factory, rsa_key: SigningKey) -> None:
    verifier = make_verifier()
    tokens = [sign(rsa_key, build_claims(issuer=TEST_ISSUER, now=NOW, namespace=f"ns-{i}")) for i in range(8)]
    results: dict[int, str] = {}

    def work(i: int) -> None:
        for _ in range(25):
            results[i] = verifier.verify(tokens[i]).namespace

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == {i: f"ns-{i}" for i in range(8)}
