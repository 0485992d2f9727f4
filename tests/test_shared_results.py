"""How the verifier uses a shared store for verified tokens (namespace "v").

The store here is an in-memory `SharedStore`: these tests are about the verifier's side of the
contract (what it reads, writes and trusts). Sharing verified tokens is off by default (`redis_share_tokens`):
`replica` turns it on unless a test says otherwise. The real store, Redis, is tested against a real
redis-server in test_redis_*.py, including entries tampered with in Redis.
"""

from __future__ import annotations

from typing import Any

import pytest

from k8s_jwt_auth import InvalidToken, TokenVerifier, VerifierConfig
from k8s_jwt_auth._shared import SharedStore
from k8s_jwt_auth.keys import VerificationKey, jwk_thumbprint
from k8s_jwt_auth.testing import FakeClock, SigningKey

from ._stores import MemoryStore
from .conftest import NOW, TEST_ISSUER


class CountingKeys:
    """A static key set whose keys count signature checks (to see which verifications skip them)."""

    def __init__(self, key: SigningKey) -> None:
        from k8s_jwt_auth import KeySet

        self.keys = KeySet.from_jwks({"keys": [key.public_jwk()]})
        self.checks = 0
        self._counted = {k.kid: _Counted(k, self) for k in self.keys}

    def get(self, kid: str | None, alg: str) -> Any:
        key = self.keys.find(kid, alg)
        if key is None:
            raise InvalidToken("unknown", reason="unknown_key")
        return self._counted[key.kid]

    async def get_async(self, kid: str | None, alg: str) -> Any:
        return self.get(kid, alg)


class _Counted:
    """A verification key that counts its signature checks."""

    def __init__(self, key: Any, owner: CountingKeys) -> None:
        self.key, self.owner, self.kid, self.algorithms = key, owner, key.kid, key.algorithms
        self.thumbprint = key.thumbprint

    def verify(self, alg: str, data: bytes, signature: bytes) -> bool:
        self.owner.checks += 1
        return bool(self.key.verify(alg, data, signature))


def thumbprint(key: SigningKey) -> str:
    return jwk_thumbprint(key.private_key.public_key())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


def replica(store: SharedStore, key: SigningKey, clock: FakeClock, **overrides: Any) -> tuple[TokenVerifier, Any]:
    settings: dict[str, Any] = {"issuer": TEST_ISSUER, "audiences": "test", "jwks": {"keys": [key.public_jwk()]},
                                "redis_share_tokens": True}
    settings.update(overrides)
    keys = CountingKeys(key)
    return TokenVerifier(VerifierConfig(**settings), keys=keys, shared=store, clock=clock), keys


def mint(key: SigningKey, lifetime: float = 3600, **claims: Any) -> str:
    from k8s_jwt_auth.testing import build_claims, sign

    payload = build_claims(issuer=TEST_ISSUER, namespace="shop", service_account="cart", audiences=("test",),
                           lifetime=lifetime, now=NOW - 10, pod=None, node=None, warn_after=None,
                           extra=claims or None, drop=())
    return sign(key, payload)


def test_a_token_verified_by_one_replica_skips_the_signature_check_on_another(rsa_key: SigningKey,
                                                                             clock: FakeClock) -> None:
    store = MemoryStore(clock)
    first, first_keys = replica(store, rsa_key, clock)
    second, second_keys = replica(store, rsa_key, clock)
    token = mint(rsa_key)
    a = first.verify(token)
    b = second.verify(token)
    assert a == b and b.namespace == "shop"
    assert (first_keys.checks, second_keys.checks) == (1, 0)
    assert (first.cache_info().shared_misses, second.cache_info().shared_hits) == (1, 1)  # type: ignore[union-attr]
    # only the digest is a key; the token itself is nowhere in the store
    assert all(token.encode() not in value and token.encode() not in key for (_, key), (value, _) in
               store.data.items())


@pytest.mark.anyio
async def test_the_async_path_shares_the_same_way(rsa_key: SigningKey, clock: FakeClock) -> None:
    store = MemoryStore(clock)
    first, _ = replica(store, rsa_key, clock)
    second, second_keys = replica(store, rsa_key, clock)
    token = mint(rsa_key)
    await first.verify_async(token)
    assert (await second.verify_async(token)).service_account == "cart"
    assert second_keys.checks == 0


def test_claims_are_checked_again_by_each_replica_with_its_own_settings(rsa_key: SigningKey,
                                                                       clock: FakeClock) -> None:
    store = MemoryStore(clock)
    first, _ = replica(store, rsa_key, clock)
    strict, _ = replica(store, rsa_key, clock, require_pod_binding=True)
    token = mint(rsa_key)
    first.verify(token)
    with pytest.raises(InvalidToken) as info:
        strict.verify(token)
    assert info.value.reason == "not_pod_bound"


def test_entries_never_outlive_the_token(rsa_key: SigningKey, clock: FakeClock) -> None:
    store = MemoryStore(clock)
    first, _ = replica(store, rsa_key, clock, token_cache_ttl=10_000)
    token = mint(rsa_key, lifetime=120)  # exp = NOW + 110
    first.verify(token)
    (value, until), = store.data.values()
    assert until == pytest.approx(NOW + 110)
    clock.set(NOW + 111 + 60)  # past exp + leeway: a replica refuses it whatever the store says
    second, _ = replica(store, rsa_key, clock)
    with pytest.raises(InvalidToken) as info:
        second.verify(token)
    assert info.value.reason == "expired"


def test_entries_last_at_most_the_token_cache_ttl(rsa_key: SigningKey, clock: FakeClock) -> None:
    store = MemoryStore(clock)
    first, _ = replica(store, rsa_key, clock, token_cache_ttl=30)
    first.verify(mint(rsa_key))
    (_, until), = store.data.values()
    assert until == pytest.approx(NOW + 30)


@pytest.mark.parametrize("entry", [
    b"v2\nES256\n{kid}\n{tp}\n9999999999.0",   # another algorithm than the token's
    b"v2\nRS256\nother-kid\n{tp}\n9999999999.0",  # another kid than the token's
    b"v2\nRS256\n{kid}\n{other}\n9999999999.0",  # other key material under the token's kid
    b"v2\nRS256\n{kid}\n\n9999999999.0",       # no key material
    b"v2\nRS256\n{kid}\n{tp}\n1.0",             # expired by its own time
    b"v2\nRS256\n{kid}\n{tp}\nsoon",            # unreadable time
    b"v1\nRS256\n{kid}\n9999999999.0",          # the old kid-only format
    b"v3\nRS256\n{kid}\n{tp}\n9999999999.0",    # an unknown format
    b"",
])
def test_an_entry_that_does_not_fit_the_token_is_ignored(rsa_key: SigningKey, ec_key: SigningKey,
                                                         clock: FakeClock, entry: bytes) -> None:
    store = MemoryStore(clock)
    verifier, keys = replica(store, rsa_key, clock)
    token = mint(rsa_key)
    import hashlib

    value = entry.replace(b"{kid}", rsa_key.kid.encode()).replace(b"{tp}", thumbprint(rsa_key).encode())
    value = value.replace(b"{other}", thumbprint(ec_key).encode())
    store.set("v", hashlib.sha256(token.encode()).digest(), value, 60)
    verifier.verify(token)
    assert keys.checks == 1  # verified in full
    assert verifier.cache_info().shared_misses == 1  # type: ignore[union-attr]


def test_a_forged_token_is_not_helped_by_an_entry_for_the_real_one(rsa_key: SigningKey, clock: FakeClock) -> None:
    store = MemoryStore(clock)
    first, _ = replica(store, rsa_key, clock)
    token = mint(rsa_key)
    first.verify(token)
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-4]}AAAA"
    second, _ = replica(store, rsa_key, clock)
    with pytest.raises(InvalidToken) as info:
        second.verify(forged)
    assert info.value.reason == "bad_signature"


def test_without_a_local_cache_the_shared_store_still_serves(rsa_key: SigningKey, clock: FakeClock) -> None:
    store = MemoryStore(clock)
    first, _ = replica(store, rsa_key, clock, token_cache_size=0)
    second, second_keys = replica(store, rsa_key, clock, token_cache_size=0)
    token = mint(rsa_key)
    first.verify(token)
    second.verify(token)
    assert second_keys.checks == 0 and store.reads == 2


def test_verified_tokens_are_not_shared_by_default(rsa_key: SigningKey, clock: FakeClock) -> None:
    """#16 item 6: a shared entry costs a round trip that is slower than verifying RS256/ES256 locally."""
    store = MemoryStore(clock)
    config = VerifierConfig(issuer=TEST_ISSUER, audiences="test", jwks={"keys": [rsa_key.public_jwk()]})
    assert config.redis_share_tokens is False
    keys = [CountingKeys(rsa_key), CountingKeys(rsa_key)]
    first, second = (TokenVerifier(config, keys=k, shared=store, clock=clock) for k in keys)
    token = mint(rsa_key)
    first.verify(token)
    second.verify(token)
    assert [k.checks for k in keys] == [1, 1] and (store.reads, store.writes) == (0, 0)
    assert (second.cache_info().shared_hits, second.cache_info().shared_misses) == (0, 0)  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_verified_tokens_are_not_shared_by_default_async(rsa_key: SigningKey, clock: FakeClock) -> None:
    store = MemoryStore(clock)
    config = VerifierConfig(issuer=TEST_ISSUER, audiences="test", jwks={"keys": [rsa_key.public_jwk()]})
    verifier = TokenVerifier(config, keys=CountingKeys(rsa_key), shared=store, clock=clock)
    assert (await verifier.verify_async(mint(rsa_key))).service_account == "cart"
    assert (store.reads, store.writes) == (0, 0)


def test_sharing_verified_tokens_can_be_turned_off(rsa_key: SigningKey, clock: FakeClock) -> None:
    store = MemoryStore(clock)
    first, _ = replica(store, rsa_key, clock, redis_share_tokens=False)
    second, second_keys = replica(store, rsa_key, clock, redis_share_tokens=False)
    token = mint(rsa_key)
    first.verify(token)
    second.verify(token)
    assert second_keys.checks == 1 and (store.reads, store.writes) == (0, 0)


# -- a shared entry names the key material, not only the kid (#14 item 4a) ---------------------------


def test_a_kid_reused_for_other_key_material_is_verified_in_full(rsa_key: SigningKey, clock: FakeClock) -> None:
    store = MemoryStore(clock)
    first, _ = replica(store, rsa_key, clock)
    token = mint(rsa_key)
    first.verify(token)
    impostor = SigningKey.generate("RS256", kid=rsa_key.kid)  # the issuer reused the kid for a new key
    second, second_keys = replica(store, impostor, clock)
    with pytest.raises(InvalidToken) as info:
        second.verify(token)
    assert info.value.reason == "bad_signature" and second_keys.checks == 1
    assert second.cache_info().shared_misses == 1  # type: ignore[union-attr]


def test_the_rfc_7638_example_thumbprint() -> None:
    """RFC 7638 section 3.1."""
    jwk = {"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
           "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRX"
                "jBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaS"
                "qzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksIN"
                "HaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}
    assert VerificationKey.from_jwk(jwk).thumbprint == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512"])
def test_ec_thumbprints_hash_the_required_members_in_order(alg: str) -> None:
    import base64
    import hashlib
    import json

    key = SigningKey.generate(alg)
    jwk = key.public_jwk()
    canonical = json.dumps({m: jwk[m] for m in ("crv", "kty", "x", "y")}, separators=(",", ":")).encode()
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    parsed = VerificationKey.from_jwk(jwk)
    assert parsed.thumbprint == expected == thumbprint(key)
    assert VerificationKey.from_jwk({**jwk, "kid": "another label"}).thumbprint == expected  # the kid is not in it
    assert parsed.thumbprint not in repr(parsed) and parsed == VerificationKey.from_jwk(jwk)

