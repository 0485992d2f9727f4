"""The verified-token cache: hits skip verification, but never outlive exp, warnafter, the TTL or the key."""

from __future__ import annotations

import pytest

from k8s_jwt_auth import InvalidToken, RemoteKeySource, TokenVerifier, VerifierConfig
from k8s_jwt_auth.testing import FakeClock, FakeIssuer, SigningKey, build_claims, sign

from .conftest import NOW, TEST_ISSUER


def make(key: SigningKey, clock: FakeClock, **overrides: object) -> TokenVerifier:
    settings: dict[str, object] = {"issuer": TEST_ISSUER, "audiences": ["test"], "jwks": {"keys": [key.public_jwk()]}}
    settings.update(overrides)
    return TokenVerifier(VerifierConfig(**settings), clock=clock)  # type: ignore[arg-type]


def token(key: SigningKey, **kwargs: object) -> str:
    kwargs.setdefault("now", NOW)
    return sign(key, build_claims(issuer=TEST_ISSUER, **kwargs))  # type: ignore[arg-type]


def test_second_verification_is_a_hit(rsa_key: SigningKey) -> None:
    verifier = make(rsa_key, FakeClock(NOW))
    t = token(rsa_key, namespace="payments")
    first = verifier.verify(t)
    assert verifier.verify(t) is first
    info = verifier.cache_info()
    assert info is not None and (info.hits, info.misses, info.currsize) == (1, 1, 1)


@pytest.mark.anyio
async def test_sync_and_async_share_the_cache(rsa_key: SigningKey) -> None:
    verifier = make(rsa_key, FakeClock(NOW))
    t = token(rsa_key)
    assert await verifier.verify_async(t) is verifier.verify(t)
    assert verifier.cache_info().hits == 1  # type: ignore[union-attr]


def test_entry_never_outlives_exp(rsa_key: SigningKey) -> None:
    clock = FakeClock(NOW)
    verifier = make(rsa_key, clock, token_cache_ttl=86400)
    t = token(rsa_key, lifetime=600)
    verifier.verify(t)
    clock.set(NOW + 600 + 1)  # past exp, inside the leeway: verified again in full, still valid
    assert verifier.verify(t)
    assert verifier.cache_info().misses == 2  # type: ignore[union-attr]
    clock.set(NOW + 600 + 61)
    with pytest.raises(InvalidToken) as info:
        verifier.verify(t)
    assert info.value.reason == "expired"


def test_entry_never_outlives_the_ttl(rsa_key: SigningKey) -> None:
    clock = FakeClock(NOW)
    verifier = make(rsa_key, clock, token_cache_ttl=30)
    t = token(rsa_key)
    verifier.verify(t)
    clock.advance(31)
    verifier.verify(t)
    assert verifier.cache_info().hits == 0  # type: ignore[union-attr]


def test_staleness_is_flagged_when_warnafter_passes(rsa_key: SigningKey) -> None:
    clock = FakeClock(NOW)
    verifier = make(rsa_key, clock)
    t = token(rsa_key, lifetime=86400, warn_after=NOW + 100)
    assert verifier.verify(t).stale is False
    clock.set(NOW + 101)
    assert verifier.verify(t).stale is True


def test_max_token_age_is_enforced_on_cached_tokens(rsa_key: SigningKey) -> None:
    clock = FakeClock(NOW)
    verifier = make(rsa_key, clock, max_token_age=100, leeway=0)
    t = token(rsa_key)
    verifier.verify(t)
    clock.set(NOW + 101)
    with pytest.raises(InvalidToken) as info:
        verifier.verify(t)
    assert info.value.reason == "too_old"


def test_rejected_tokens_are_not_cached(rsa_key: SigningKey) -> None:
    verifier = make(rsa_key, FakeClock(NOW))
    bad = token(rsa_key, audiences=["other"])
    for _ in range(2):
        with pytest.raises(InvalidToken):
            verifier.verify(bad)
    assert verifier.cache_info().currsize == 0  # type: ignore[union-attr]


def test_cache_holds_digests_not_tokens(rsa_key: SigningKey) -> None:
    verifier = make(rsa_key, FakeClock(NOW))
    t = token(rsa_key)
    identity = verifier.verify(t)
    stored = list(verifier._cache._cache.keys())  # type: ignore[union-attr]
    assert stored and all(isinstance(k, bytes) and len(k) == 32 for k in stored)
    assert t.encode() not in stored and identity.token_fingerprint == stored[0].hex()[:16]


def test_cache_can_be_turned_off(rsa_key: SigningKey) -> None:
    verifier = make(rsa_key, FakeClock(NOW), token_cache_size=0)
    t = token(rsa_key)
    assert verifier.verify(t) == verifier.verify(t)
    assert verifier.verify(t) is not verifier.verify(t)
    assert verifier.cache_info() is None


def test_cache_is_bounded(rsa_key: SigningKey) -> None:
    verifier = make(rsa_key, FakeClock(NOW), token_cache_size=3)
    for i in range(5):
        verifier.verify(token(rsa_key, namespace=f"ns-{i}"))
    assert verifier.cache_info().currsize == 3  # type: ignore[union-attr]


def test_removed_key_drops_its_cached_tokens(k8s_issuer: FakeIssuer) -> None:
    keys = RemoteKeySource(k8s_issuer.issuer)
    verifier = TokenVerifier(VerifierConfig(issuer=k8s_issuer.issuer, audiences=["test"]), keys=keys)
    t = k8s_issuer.mint("payments", "worker")
    verifier.verify(t)
    assert verifier.verify(t).namespace == "payments"
    k8s_issuer.rotate(drop_old=True)
    keys.refresh()
    with pytest.raises(InvalidToken) as info:
        verifier.verify(t)
    assert info.value.reason == "unknown_key"


def test_refetched_key_set_verifies_again_in_full(k8s_issuer: FakeIssuer) -> None:
    keys = RemoteKeySource(k8s_issuer.issuer)
    verifier = TokenVerifier(VerifierConfig(issuer=k8s_issuer.issuer, audiences=["test"]), keys=keys)
    t = k8s_issuer.mint()
    verifier.verify(t)
    keys.refresh()  # same key, new key objects: the cached entry no longer stands
    assert verifier.verify(t).namespace == "default"
    info = verifier.cache_info()
    assert info is not None and info.hits == 0 and info.misses == 2


def test_cache_settings_from_env() -> None:
    config = VerifierConfig.from_env({"K8S_JWT_AUTH_ISSUER": TEST_ISSUER, "K8S_JWT_AUTH_AUDIENCES": "a",
                                      "K8S_JWT_AUTH_TOKEN_CACHE_SIZE": "0", "K8S_JWT_AUTH_TOKEN_CACHE_TTL": "5"})
    assert (config.token_cache_size, config.token_cache_ttl) == (0, 5.0)
