"""The verified-token cache: hits skip verification, but never outlive exp, warnafter, the TTL or the key."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import time

import pytest

from k8s_jwt_auth import InvalidToken, RemoteKeySource, TokenVerifier, VerificationKey, VerifierConfig
from k8s_jwt_auth._cache import KEY_RECHECK, TAIL
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


def test_cache_holds_neither_tokens_nor_digests(rsa_key: SigningKey) -> None:
    verifier = make(rsa_key, FakeClock(NOW))
    t = token(rsa_key)
    identity = verifier.verify(t)
    entries = verifier._cache.entries  # type: ignore[union-attr]
    assert list(entries) == [hash(t)]
    entry = next(iter(entries.values()))
    assert entry.tail == t[-TAIL:] and len(entry.tail) == 16 < len(t.rsplit(".", 1)[1])  # part of the signature
    assert identity.token_fingerprint == hashlib.sha256(t.encode()).hexdigest()[:16]
    held = [v for v in gc.get_referents(entry) if isinstance(v, (str, bytes))]
    assert held == [entry.tail]


def test_a_token_sharing_the_hash_but_not_the_end_is_not_a_hit(rsa_key: SigningKey) -> None:
    verifier = make(rsa_key, FakeClock(NOW))
    t, other = token(rsa_key, namespace="payments"), token(rsa_key, namespace="frontend")
    verifier.verify(t)
    entries = verifier._cache.entries  # type: ignore[union-attr]
    entries[hash(other)] = entries[hash(t)]  # as if `other` collided with `t` in the hash
    assert verifier.verify(other).namespace == "frontend"
    assert verifier.cache_info().hits == 0  # type: ignore[union-attr]


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


def test_removed_key_drops_its_cached_tokens_within_a_second(k8s_issuer: FakeIssuer) -> None:
    clock = FakeClock(time.time())
    keys = RemoteKeySource(k8s_issuer.issuer)
    verifier = TokenVerifier(VerifierConfig(issuer=k8s_issuer.issuer, audiences=["test"]), keys=keys, clock=clock)
    t = k8s_issuer.mint("payments", "worker")
    verifier.verify(t)
    assert verifier.verify(t).namespace == "payments"
    k8s_issuer.rotate(drop_old=True)
    keys.refresh()
    assert verifier.verify(t).namespace == "payments"  # the key check of the cache still stands...
    clock.advance(KEY_RECHECK)
    with pytest.raises(InvalidToken) as info:  # ... for at most KEY_RECHECK seconds
        verifier.verify(t)
    assert info.value.reason == "unknown_key"


def test_refetched_key_set_with_the_same_key_keeps_its_tokens(k8s_issuer: FakeIssuer) -> None:
    clock = FakeClock(time.time())
    keys = RemoteKeySource(k8s_issuer.issuer)
    verifier = TokenVerifier(VerifierConfig(issuer=k8s_issuer.issuer, audiences=["test"]), keys=keys, clock=clock)
    t = k8s_issuer.mint()
    verifier.verify(t)
    keys.refresh()  # new key objects, same key material (RFC 7638 thumbprint)
    clock.advance(KEY_RECHECK)
    assert verifier.verify(t).namespace == "default"
    info = verifier.cache_info()
    assert info is not None and (info.hits, info.misses) == (1, 1)


class SwitchingKeys:
    """A key source whose key for one kid changes material: the cache must notice within KEY_RECHECK."""

    def __init__(self, key: VerificationKey) -> None:
        self.key, self.calls = key, 0

    def get(self, kid: str | None, alg: str) -> VerificationKey:
        self.calls += 1
        return self.key

    async def get_async(self, kid: str | None, alg: str) -> VerificationKey:
        return self.get(kid, alg)


def test_the_key_is_asked_once_per_second_per_kid_and_new_material_means_full_verification(
        rsa_key: SigningKey) -> None:
    clock = FakeClock(NOW)
    source = SwitchingKeys(VerificationKey.from_jwk(rsa_key.public_jwk()))
    verifier = TokenVerifier(VerifierConfig(issuer=TEST_ISSUER, audiences=["test"], jwks={"keys": [
        rsa_key.public_jwk()]}), keys=source, clock=clock)
    tokens = [token(rsa_key, namespace=f"ns-{i}") for i in range(3)]
    for t in tokens * 3:
        verifier.verify(t)
    assert source.calls == 3  # the three first sights; the six hits asked nothing
    clock.advance(KEY_RECHECK)
    for t in tokens * 2:
        asyncio.run(verifier.verify_async(t))
    assert source.calls == 4  # one check renewed for every token of that kid
    other = SigningKey.generate("RS256")
    source.key = VerificationKey.from_jwk({**other.public_jwk(), "kid": rsa_key.kid})  # same kid, new material
    clock.advance(KEY_RECHECK)
    with pytest.raises(InvalidToken) as info:
        verifier.verify(tokens[0])
    assert info.value.reason == "bad_signature"


def test_cache_settings_from_env() -> None:
    config = VerifierConfig.from_env({"K8S_JWT_AUTH_ISSUER": TEST_ISSUER, "K8S_JWT_AUTH_AUDIENCES": "a",
                                      "K8S_JWT_AUTH_TOKEN_CACHE_SIZE": "0", "K8S_JWT_AUTH_TOKEN_CACHE_TTL": "5"})
    assert (config.token_cache_size, config.token_cache_ttl) == (0, 5.0)
