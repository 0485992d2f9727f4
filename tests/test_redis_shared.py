"""Replicas sharing one real redis-server: one JWKS fetch per refresh, verified tokens shared, Redis failures.

Verified tokens are shared only with `redis_share_tokens=True` (off by default: a Redis round trip costs more
than verifying RS256 or ES256 locally); the tests about them turn it on (`SHARE`).

The issuer is the session's `FakeIssuer` (fetch counts come from the server); each "replica" is its own
`RemoteKeySource`/`TokenVerifier` with its own `RedisCache`, in threads, tasks or spawned processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from k8s_jwt_auth import InvalidToken, TokenVerifier, VerifierConfig
from k8s_jwt_auth._cache import KEY_RECHECK
from k8s_jwt_auth._jwks_fetch import FetchResult, JwksFetcher
from k8s_jwt_auth._remote import RemoteKeySource
from k8s_jwt_auth._shared_fetch import SharedJwksFetcher
from k8s_jwt_auth.keys import key_source_from_config
from k8s_jwt_auth.redis_cache import RedisCache
from k8s_jwt_auth.testing import FakeClock, FakeIssuer, SigningKey

from ._redis import RedisServer, redis_server, redis_session
from ._stores import MemoryStore

__all__ = ["redis_server", "redis_session"]  # fixtures

SECRET = "0123456789abcdef" * 4
# These tests are about what replicas share, not about time limits (test_redis_cache.py has those): a generous
# deadline, so that a loaded machine (8 threads, spawned processes) does not trip the breaker mid-test.
TIMEOUT = 2.0
SHARE = {"redis_share_tokens": True}  # verified-token entries ("v"), off by default


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


@pytest.fixture
def caches(redis_server: RedisServer) -> Iterator[Callable[..., RedisCache]]:
    made: list[RedisCache] = []

    def factory(**overrides: Any) -> RedisCache:
        made.append(RedisCache(redis_server.url, secret=SECRET, **{"timeout": TIMEOUT, **overrides}))
        return made[-1]

    yield factory
    for cache in made:
        cache.close()


@pytest.fixture
def sources(issuer: FakeIssuer, caches: Callable[..., RedisCache]) -> Iterator[Callable[..., RemoteKeySource]]:
    """Remote key sources for the fake issuer, each with its own RedisCache (as separate pods would have)."""
    made: list[RemoteKeySource] = []

    def factory(clock: Callable[[], float] | None = None, wall_clock: Callable[[], float] | None = None,
                **settings: Any) -> RemoteKeySource:
        config = VerifierConfig(issuer=issuer.issuer, audiences=["test"], **settings)
        made.append(RemoteKeySource.from_config(config, clock=clock, shared=caches(), wall_clock=wall_clock))
        return made[-1]

    yield factory
    issuer.fail(None)
    for source in made:
        wait_until(lambda s=source: not s.status().reloading)


def in_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    barrier, results = threading.Barrier(count), [None] * count

    def run(i: int) -> None:
        barrier.wait(10)
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not any(thread.is_alive() for thread in threads)
    return results


# -- one JWKS fetch per refresh ------------------------------------------------------------------


def test_a_cold_start_of_many_replicas_fetches_once(issuer: FakeIssuer,
                                                    sources: Callable[..., RemoteKeySource]) -> None:
    replicas = [sources() for _ in range(8)]
    keys = in_threads(8, lambda i: replicas[i].get(issuer.key.kid, "RS256"))
    assert all(k is not None and k.kid == issuer.key.kid for k in keys)
    assert (issuer.discovery_fetches, issuer.jwks_fetches) == (1, 1)


@pytest.mark.anyio
async def test_a_cold_start_of_many_replicas_fetches_once_async(issuer: FakeIssuer,
                                                                sources: Callable[..., RemoteKeySource]) -> None:
    replicas = [sources() for _ in range(6)]
    found: list[Any] = []

    async def get(source: RemoteKeySource) -> None:
        found.append(await source.get_async(issuer.key.kid, "RS256"))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            for source in replicas:
                tasks.start_soon(get, source)
    assert len(found) == 6 and issuer.jwks_fetches == 1
    for source in replicas:
        assert source.shared is not None
        await source.shared.aclose()  # type: ignore[attr-defined]


def _replica_process(issuer: str, redis_url: str, kid: str) -> str | None:
    """A spawned process: a fresh RemoteKeySource + RedisCache asking for one key."""
    source = RemoteKeySource.from_config(VerifierConfig(issuer=issuer, audiences=["test"]),
                                         shared=RedisCache(redis_url, secret=SECRET, timeout=TIMEOUT))
    return source.get(kid, "RS256").kid


def test_separate_processes_fetch_once(issuer: FakeIssuer, redis_server: RedisServer) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        pending = pool.starmap_async(_replica_process, [(issuer.issuer, redis_server.url, issuer.key.kid)] * 3)
        assert pending.get(timeout=45) == [issuer.key.kid] * 3
    assert issuer.jwks_fetches == 1


def test_a_refresh_after_max_age_fetches_once(issuer: FakeIssuer, sources: Callable[..., RemoteKeySource]) -> None:
    clock = FakeClock()
    replicas = [sources(clock) for _ in range(4)]
    for source in replicas:
        source.get(issuer.key.kid, "RS256")
    assert issuer.jwks_fetches == 1
    clock.advance(601)  # past cache_max_age (600 s): every replica must refetch before answering
    in_threads(4, lambda i: replicas[i].get(issuer.key.kid, "RS256"))
    assert issuer.jwks_fetches == 2
    assert all(s.status().fresh for s in replicas)


def test_an_unknown_kid_after_a_rotation_still_reaches_the_issuer(issuer: FakeIssuer,
                                                                  sources: Callable[..., RemoteKeySource]) -> None:
    first, second = sources(), sources()
    first.get(issuer.key.kid, "RS256")
    second.get(issuer.key.kid, "RS256")
    assert issuer.jwks_fetches == 1
    new = issuer.rotate()
    assert first.get(new.kid, "RS256").kid == new.kid  # the shared document is not newer: to the issuer
    assert issuer.jwks_fetches == 2
    assert second.get(new.kid, "RS256").kid == new.kid  # the other replica takes the new shared document
    assert issuer.jwks_fetches == 2


def test_a_replica_started_after_a_rotation_accepts_a_new_key_on_its_first_call(
        issuer: FakeIssuer, sources: Callable[..., RemoteKeySource]) -> None:
    """#14 item 4c: Redis holds the key set from before the rotation; the fresh replica took it, answered
    unknown_key, and only its second call reached the issuer. An unknown kid after a key set taken from the
    shared store reaches the issuer on the same call."""
    sources().get(issuer.key.kid, "RS256")  # Redis now holds the key set from before the rotation
    new = issuer.rotate()
    fresh = sources()
    assert fresh.get(new.kid, "RS256").kid == new.kid
    assert issuer.jwks_fetches == 2
    assert sources().get(new.kid, "RS256").kid == new.kid  # and the next replica takes the new set from Redis
    assert issuer.jwks_fetches == 2


@pytest.mark.anyio
async def test_a_replica_started_after_a_rotation_accepts_a_new_key_on_its_first_call_async(
        issuer: FakeIssuer, sources: Callable[..., RemoteKeySource]) -> None:
    await sources().get_async(issuer.key.kid, "RS256")
    new = issuer.rotate()
    fresh = sources()
    assert (await fresh.get_async(new.kid, "RS256")).kid == new.kid
    assert issuer.jwks_fetches == 2


def test_a_verifier_started_after_a_rotation_accepts_a_new_key_token_on_its_first_call(
        issuer: FakeIssuer, replicas: Callable[..., TokenVerifier]) -> None:
    replicas().verify(issuer.mint())
    issuer.rotate()
    assert replicas().verify(issuer.mint("shop", "cart")).service_account == "cart"


def test_many_callers_of_a_replica_started_after_a_rotation_cause_one_issuer_fetch(
        issuer: FakeIssuer, sources: Callable[..., RemoteKeySource]) -> None:
    sources().get(issuer.key.kid, "RS256")
    new = issuer.rotate()
    fresh = sources()
    found = in_threads(8, lambda i: fresh.get(new.kid, "RS256").kid)
    assert found == [new.kid] * 8 and issuer.jwks_fetches == 2  # single flight: one more fetch, not 8


def test_a_genuinely_unknown_kid_after_a_shared_key_set_asks_the_issuer_once_per_cooldown(
        issuer: FakeIssuer, sources: Callable[..., RemoteKeySource]) -> None:
    sources().get(issuer.key.kid, "RS256")
    fresh = sources(FakeClock())
    for kid in ("no-such-kid", "no-such-kid", "another-kid", "a-third-kid"):
        with pytest.raises(InvalidToken) as info:
            fresh.get(kid, "RS256")
        assert info.value.reason == "unknown_key"
    assert issuer.jwks_fetches == 2  # the shared set, then the issuer once; then the cooldown holds
    assert fresh.get(issuer.key.kid, "RS256").kid == issuer.key.kid and issuer.jwks_fetches == 2


def test_a_shared_document_is_used_for_what_is_left_of_its_max_age(issuer: FakeIssuer,
                                                                   sources: Callable[..., RemoteKeySource]) -> None:
    wall = FakeClock(time.time())
    sources(wall_clock=wall).get(issuer.key.kid, "RS256")
    wall.advance(30)  # this replica starts 30 s after the first one fetched
    later = sources(FakeClock(), wall_clock=wall)
    later.get(issuer.key.kid, "RS256")
    status = later.status()
    assert issuer.jwks_fetches == 1 and status.max_age == 600
    assert status.last_refresh_age is not None and 29 < status.last_refresh_age < 32


# -- a shared key set is never older than one the fleet published (#14 item 4b) -------------------


def shared_key_set(server: RedisServer) -> tuple[bytes, bytes]:
    """The name and raw (authenticated) value of the one key set shared in Redis."""
    with server.client() as raw:
        (name,) = [k for k in raw.scan_iter("k8s-jwt-auth:jwks:*") if b":lock:" not in k]
        return name, raw.get(name)


def test_a_fresh_replica_does_not_take_a_shared_key_set_older_than_the_bound(
        issuer: FakeIssuer, sources: Callable[..., RemoteKeySource]) -> None:
    wall = FakeClock(time.time())
    sources(wall_clock=wall).get(issuer.key.kid, "RS256")
    wall.advance(61)  # older than SHARED_KEYS_MAX_AGE (60 s): this replica asks the issuer itself
    later = sources(wall_clock=wall)
    later.get(issuer.key.kid, "RS256")
    assert issuer.jwks_fetches == 2
    wall.advance(10)  # ... and publishes: the next replica takes its set
    sources(wall_clock=wall).get(issuer.key.kid, "RS256")
    assert issuer.jwks_fetches == 2
    wall.advance(20)
    strict = sources(wall_clock=wall, shared_keys_max_age=15)
    strict.get(issuer.key.kid, "RS256")
    assert issuer.jwks_fetches == 3


def test_a_replayed_key_set_does_not_bring_back_a_removed_key(
        issuer: FakeIssuer, sources: Callable[..., RemoteKeySource], redis_server: RedisServer) -> None:
    """#14 item 4b: an old, still unexpired (and authentic) key set written back into Redis after a rotation
    made a freshly started replica trust the removed key for the rest of that entry's lifetime."""
    wall = FakeClock(time.time())
    old = issuer.key
    sources(wall_clock=wall).get(old.kid, "RS256")
    name, recorded = shared_key_set(redis_server)  # what someone with write access to Redis keeps
    new = issuer.rotate()  # the old key is removed: tokens it signed must stop verifying
    wall.advance(120)
    assert sources(wall_clock=wall).get(new.kid, "RS256").kid == new.kid  # the fleet publishes the new set
    assert issuer.jwks_fetches == 2
    with redis_server.client() as raw:
        raw.set(name, recorded, px=300_000)  # replayed: authentic, its embedded expiry still ahead
    wall.advance(5)
    fresh = sources(wall_clock=wall)
    with pytest.raises(InvalidToken) as info:
        fresh.get(old.kid, "RS256")
    assert info.value.reason == "unknown_key" and fresh.status().kids == (new.kid,)
    assert issuer.jwks_fetches == 3  # the replayed set was too old to take: the issuer was asked


class _HeldFetcher(JwksFetcher):
    """A fetcher that answers what the issuer served before a rotation, once the test lets it."""

    def __init__(self, issuer: str, answer: FetchResult) -> None:
        super().__init__(issuer)
        self.answer, self.started, self.release = answer, threading.Event(), threading.Event()

    def fetch(self) -> FetchResult:
        self.started.set()
        assert self.release.wait(10)
        return self.answer


def test_a_slow_replica_never_replaces_a_newer_shared_key_set(issuer: FakeIssuer,
                                                              caches: Callable[..., RedisCache]) -> None:
    """#14 item 4b: a replica whose fetch started before a rotation and ended after another replica published
    the new set used to overwrite it with the old one (its fetched_at, taken at the end, looked newer)."""
    before = JwksFetcher(issuer.issuer).fetch()
    new = issuer.rotate()
    held = _HeldFetcher(issuer.issuer, before)
    slow = SharedJwksFetcher(held, caches(), max_age=lambda advertised: 600.0)
    thread = threading.Thread(target=slow.fetch)
    thread.start()
    assert held.started.wait(10)  # it holds the lease and the pre-rotation answer
    fast = SharedJwksFetcher(JwksFetcher(issuer.issuer, timeout=0.3), caches(), max_age=lambda advertised: 600.0)
    assert fast.fetch().keys.kids == (new.kid,)  # polled 0.3 s for the lease holder, then fetched and published
    held.release.set()
    thread.join(10)
    reader = SharedJwksFetcher(JwksFetcher(issuer.issuer), caches(), max_age=lambda advertised: 600.0)
    taken = reader.fetch()
    assert taken.shared and taken.keys.kids == (new.kid,)
    assert issuer.jwks_fetches == 2  # the reader took it from Redis


def test_a_slow_replica_never_replaces_a_newer_key_set_in_a_store_without_replace(issuer: FakeIssuer) -> None:
    """The same with a store that cannot compare and set in one step: read, compare, then write."""
    store = MemoryStore(time.time)
    before = JwksFetcher(issuer.issuer).fetch()
    new = issuer.rotate()
    held = _HeldFetcher(issuer.issuer, before)
    slow = SharedJwksFetcher(held, store, max_age=lambda advertised: 600.0)  # MemoryStore always leases
    thread = threading.Thread(target=slow.fetch)
    thread.start()
    assert held.started.wait(10)
    SharedJwksFetcher(JwksFetcher(issuer.issuer), store, max_age=lambda advertised: 600.0).fetch()
    held.release.set()
    thread.join(10)
    assert len(store.sets) == 1  # the slow one read the newer set (seq 1 too, fetched later) and did not write
    taken = SharedJwksFetcher(JwksFetcher(issuer.issuer), store, max_age=lambda advertised: 600.0).fetch()
    assert taken.shared and taken.keys.kids == (new.kid,)


@pytest.mark.parametrize("header", [
    {"fetched_at": 0, "max_age": 600, "jwks_uri": "u", "discovered": True},  # before sequences: never taken
    {"seq": 0, "fetched_at": 0, "max_age": 600, "jwks_uri": "u", "discovered": True},
    {"seq": True, "fetched_at": 0, "max_age": 600, "jwks_uri": "u", "discovered": True},
    {"seq": 1.5, "fetched_at": 0, "max_age": 600, "jwks_uri": "u", "discovered": True},
    {"seq": 1, "fetched_at": "now", "max_age": 600, "jwks_uri": "u", "discovered": True},
    {"seq": 1, "fetched_at": 0, "max_age": 0, "jwks_uri": "u", "discovered": True},
])
def test_a_shared_key_set_without_a_valid_sequence_is_not_taken_and_is_replaced(
        issuer: FakeIssuer, sources: Callable[..., RemoteKeySource], caches: Callable[..., RedisCache],
        header: dict[str, Any]) -> None:
    header = {**header, "fetched_at": time.time()} if header["fetched_at"] == 0 else header
    store, key = caches(), f"{issuer.issuer}\n".encode()
    store.set("jwks", key, json.dumps(header).encode() + b"\n" + json.dumps(issuer.jwks()).encode(), 600)
    sources().get(issuer.key.kid, "RS256")
    assert issuer.jwks_fetches == 1
    stored = store.get("jwks", key)
    assert stored is not None and json.loads(stored.split(b"\n", 1)[0])["seq"] == 1


def test_a_replica_never_takes_a_replayed_set_older_than_one_it_had(
        issuer: FakeIssuer, sources: Callable[..., RemoteKeySource], redis_server: RedisServer) -> None:
    clock = FakeClock()
    sources().get(issuer.key.kid, "RS256")
    name, recorded = shared_key_set(redis_server)
    new = issuer.rotate()
    replica = sources(clock)
    assert replica.get(new.kid, "RS256").kid == new.kid  # took the old set, then asked the issuer (4c)
    with redis_server.client() as raw:
        raw.set(name, recorded, px=300_000)  # replayed within SHARED_KEYS_MAX_AGE: recent, but older
    clock.advance(601)  # the replica's keys expire: it refetches before answering
    assert replica.get(new.kid, "RS256").kid == new.kid and replica.status().kids == (new.kid,)
    assert issuer.jwks_fetches == 3


def test_shared_keys_max_age_is_a_setting(issuer: FakeIssuer, sources: Callable[..., RemoteKeySource],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert VerifierConfig(issuer=issuer.issuer, audiences=["test"]).shared_keys_max_age == 60.0
    assert sources()._via.max_shared_age == 60.0  # type: ignore[union-attr]
    monkeypatch.setenv("K8S_JWT_AUTH_ISSUER", issuer.issuer)
    monkeypatch.setenv("K8S_JWT_AUTH_AUDIENCES", "test")
    monkeypatch.setenv("K8S_JWT_AUTH_SHARED_KEYS_MAX_AGE", "15")
    config = VerifierConfig.from_env()
    assert config.shared_keys_max_age == 15.0
    assert sources(shared_keys_max_age=config.shared_keys_max_age)._via.max_shared_age == 15.0  # type: ignore[union-attr]


def test_the_shared_fetcher_reports_the_document(issuer: FakeIssuer, caches: Callable[..., RedisCache]) -> None:
    source = RemoteKeySource.from_config(VerifierConfig(issuer=issuer.issuer, audiences=["test"]))
    shared = SharedJwksFetcher(source.fetcher, caches(), max_age=lambda advertised: 600.0)
    other = SharedJwksFetcher(source.fetcher, caches(), max_age=lambda advertised: 600.0)
    fetched, read = shared.fetch(), other.fetch()
    assert isinstance(fetched, FetchResult) and fetched.document is not None and fetched.age == 0
    assert read.document == fetched.document and read.keys.kids == fetched.keys.kids
    assert (read.jwks_uri, read.discovered, read.max_age) == (issuer.jwks_uri, True, 600)
    assert issuer.jwks_fetches == 1


def test_a_tampered_key_set_is_not_used(issuer: FakeIssuer, sources: Callable[..., RemoteKeySource],
                                        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    sources().get(issuer.key.kid, "RS256")
    with redis_server.client() as raw:
        (name,) = [k for k in raw.scan_iter("k8s-jwt-auth:jwks:*") if b":lock:" not in k]
        value = bytearray(raw.get(name))
        value[-10] ^= 0x20  # somewhere in the JWKS document
        raw.set(name, bytes(value))
    with caplog.at_level(logging.WARNING, logger="k8s_jwt_auth.redis"):
        assert sources().get(issuer.key.kid, "RS256").kid == issuer.key.kid
    assert issuer.jwks_fetches == 2
    assert any("not authentic" in r.getMessage() for r in caplog.records)


def test_with_redis_down_each_replica_fetches_by_itself_without_waiting(
        issuer: FakeIssuer, sources: Callable[..., RemoteKeySource], redis_server: RedisServer) -> None:
    replicas = [sources() for _ in range(3)]
    redis_server.kill()
    start = time.monotonic()
    for source in replicas:
        assert source.get(issuer.key.kid, "RS256").kid == issuer.key.kid
    assert time.monotonic() - start < 2.0
    assert issuer.jwks_fetches == 3


def test_a_lease_held_by_a_vanished_process_delays_at_most_the_fetch_timeout(
        issuer: FakeIssuer, sources: Callable[..., RemoteKeySource], caches: Callable[..., RedisCache]) -> None:
    source = sources()
    key = f"{issuer.issuer}\n".encode()
    assert caches().try_lock("jwks", key, 60)  # taken and never given back
    source.fetcher.timeout = 0.3  # the poll is bounded by the fetch timeout
    source._via.timeout = 0.3  # type: ignore[union-attr]
    start = time.monotonic()
    assert source.get(issuer.key.kid, "RS256").kid == issuer.key.kid
    assert 0.25 < time.monotonic() - start < 2.0 and issuer.jwks_fetches == 1


def test_key_source_from_config_passes_the_store(issuer: FakeIssuer, caches: Callable[..., RedisCache]) -> None:
    store = caches()
    source = key_source_from_config(VerifierConfig(issuer=issuer.issuer, audiences=["test"]), shared=store)
    assert isinstance(source, RemoteKeySource) and source.shared is store


# -- verified tokens shared by replicas ---------------------------------------------------------


@pytest.fixture
def replicas(issuer: FakeIssuer, redis_server: RedisServer) -> Iterator[Callable[..., TokenVerifier]]:
    made: list[TokenVerifier] = []

    def factory(shared: RedisCache | None = None, clock: FakeClock | None = None, **overrides: Any) -> TokenVerifier:
        settings: dict[str, Any] = {"issuer": issuer.issuer, "audiences": ["test"], "redis_url": redis_server.url,
                                    "cache_secret": SECRET, "redis_timeout": TIMEOUT}
        settings.update(overrides)
        made.append(TokenVerifier(VerifierConfig(**settings), shared=shared, clock=clock))
        return made[-1]

    yield factory
    issuer.fail(None)
    for verifier in made:
        wait_until(lambda v=verifier: not v.keys.status().reloading)  # type: ignore[attr-defined]
        verifier.shared.close()  # type: ignore[union-attr]


class RedisCommands:
    """Counts the commands the redis-server runs (`INFO commandstats`), over one connection of its own that
    connected (HELLO) before counting starts; its own INFO and CONFIG calls are left out."""

    def __init__(self, server: RedisServer) -> None:
        self.raw = server.client()
        self.reset()

    def reset(self) -> None:
        self.raw.config_resetstat()

    def counted(self) -> dict[str, int]:
        stats = self.raw.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()
                if name.split("|")[0] not in ("cmdstat_info", "cmdstat_config")}


def test_by_default_a_first_sight_token_never_waits_for_redis(
        issuer: FakeIssuer, replicas: Callable[..., TokenVerifier], redis_server: RedisServer) -> None:
    """#16 item 6: a verified-token entry costs a round trip (GET, and SET on a miss) that is slower than
    verifying RS256 or ES256 locally, so by default a replica with a Redis URL never asks Redis about a token;
    key sets are still shared (one JWKS fetch for the fleet)."""
    fleet = [replicas() for _ in range(3)]
    assert not fleet[0].config.redis_share_tokens
    for verifier in fleet:
        verifier.verify(issuer.mint("shop", "warm-up"))  # keys: the first replica fetches, the others take them
    assert issuer.jwks_fetches == 1
    commands = RedisCommands(redis_server)
    tokens = [issuer.mint("shop", f"sa-{i}") for i in range(5)]
    for verifier in fleet:
        for token in tokens:  # every replica sees every token for the first time
            assert verifier.verify(token).namespace == "shop"

    async def verify_async() -> None:
        for verifier in fleet:
            assert (await verifier.verify_async(issuer.mint("shop", "async"))).namespace == "shop"

    anyio.run(verify_async)
    assert commands.counted() == {}  # not one GET or SET, not even a connection from the async path
    with redis_server.client() as raw:
        assert not list(raw.scan_iter("k8s-jwt-auth:v:*"))
    for verifier in fleet:
        info = verifier.cache_info()
        assert info is not None and (info.misses, info.shared_hits, info.shared_misses) == (7, 0, 0)
    assert issuer.jwks_fetches == 1
    shared = replicas(**SHARE)  # turned on: one GET per first sight, and one SET per miss
    shared.verify(issuer.mint("shop", "warm-up"))  # connected, keys from Redis
    commands.reset()
    shared.verify(tokens[0])
    shared.verify(tokens[0])  # a local hit: Redis is not asked
    assert commands.counted() == {"get": 1, "set": 1}
    commands.raw.close()


def test_a_token_verified_by_one_replica_is_a_shared_hit_on_another(
        issuer: FakeIssuer, replicas: Callable[..., TokenVerifier], redis_server: RedisServer) -> None:
    first, second = replicas(**SHARE), replicas(**SHARE)
    assert isinstance(first.shared, RedisCache)
    token = issuer.mint("shop", "cart")
    assert first.verify(token).service_account == "cart"
    identity = second.verify(token)
    assert identity.namespace == "shop" and identity == first.verify(token)
    first_info, second_info = first.cache_info(), second.cache_info()
    assert first_info is not None and second_info is not None
    assert (first_info.shared_misses, first_info.shared_hits) == (1, 0)
    assert (second_info.shared_misses, second_info.shared_hits) == (0, 1)
    assert issuer.jwks_fetches == 1  # the second replica also took the key set from Redis
    digest = hashlib.sha256(token.encode()).digest()
    with redis_server.client() as raw:
        for name in raw.scan_iter("*"):
            value = raw.get(name) or b""
            assert token.encode() not in name + value and digest.hex().encode() not in name
            assert digest not in name + value


@pytest.mark.anyio
async def test_a_shared_hit_async(issuer: FakeIssuer, replicas: Callable[..., TokenVerifier]) -> None:
    first, second = replicas(**SHARE), replicas(**SHARE)
    token = issuer.mint("shop", "cart")
    await first.verify_async(token)
    assert (await second.verify_async(token)).service_account == "cart"
    info = second.cache_info()
    assert info is not None and info.shared_hits == 1 and issuer.jwks_fetches == 1
    for verifier in (first, second):
        await verifier.shared.aclose()  # type: ignore[union-attr]


def test_a_tampered_verification_is_verified_again(issuer: FakeIssuer, replicas: Callable[..., TokenVerifier],
                                                   redis_server: RedisServer) -> None:
    first, second = replicas(**SHARE), replicas(**SHARE)
    token = issuer.mint()
    first.verify(token)
    with redis_server.client() as raw:
        (name,) = raw.scan_iter("k8s-jwt-auth:v:*")
        value = bytearray(raw.get(name))
        value[-1] ^= 0x01
        raw.set(name, bytes(value))
    assert second.verify(token).namespace == "default"
    info = second.cache_info()
    assert info is not None and (info.shared_hits, info.shared_misses) == (0, 1)
    assert second.shared is not None and second.shared.status().tampered == 1  # type: ignore[attr-defined]


def reuse_kid(issuer: FakeIssuer) -> SigningKey:
    """The issuer publishes new key material under the kid of its current key, and drops the old key."""
    reused = SigningKey.generate(issuer.key.alg, kid=issuer.key.kid)
    issuer.keys = [reused]
    return reused


def forget_shared_key_sets(server: RedisServer) -> None:
    """Drop the key sets shared in Redis, as if the fleet had refreshed them since (leases stay)."""
    with server.client() as raw:
        for name in raw.scan_iter("k8s-jwt-auth:jwks:*"):
            if b":lock:" not in name:
                raw.delete(name)


def test_a_kid_reused_for_new_key_material_does_not_skip_the_signature_check(
        issuer: FakeIssuer, replicas: Callable[..., TokenVerifier], redis_server: RedisServer) -> None:
    """#14 item 4a: the shared entry named the kid only, so a replica with Redis accepted a token signed by a key
    the issuer had replaced under the same kid, without checking its signature; without Redis it is refused."""
    token = issuer.mint("shop", "cart")  # signed by the key about to be replaced
    clock = FakeClock(time.time())
    first = replicas(**SHARE, clock=clock)
    assert first.verify(token).service_account == "cart"  # Redis now says: verified, RS256, this kid
    reuse_kid(issuer)
    forget_shared_key_sets(redis_server)
    alone = TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences=["test"]))
    with pytest.raises(InvalidToken) as without_redis:
        alone.verify(token)
    assert without_redis.value.reason == "bad_signature"
    with pytest.raises(InvalidToken) as fresh:
        replicas(**SHARE).verify(token)
    assert fresh.value.reason == "bad_signature"
    first.keys.refresh()  # type: ignore[attr-defined]  # the replica that verified it, after a key refresh
    clock.advance(KEY_RECHECK)  # its cached token's key check is due: the new key material is seen
    with pytest.raises(InvalidToken) as refreshed:
        first.verify(token)
    assert refreshed.value.reason == "bad_signature"
    fine = issuer.mint("shop", "cart")  # the new key material still shares verifications
    replicas(**SHARE).verify(fine)
    again = replicas(**SHARE)
    assert again.verify(fine).service_account == "cart"
    info = again.cache_info()
    assert info is not None and info.shared_hits == 1


@pytest.mark.anyio
async def test_a_kid_reused_for_new_key_material_does_not_skip_the_signature_check_async(
        issuer: FakeIssuer, replicas: Callable[..., TokenVerifier], redis_server: RedisServer) -> None:
    token = issuer.mint("shop", "cart")
    first = replicas(**SHARE)
    await first.verify_async(token)
    reuse_kid(issuer)
    forget_shared_key_sets(redis_server)
    second = replicas(**SHARE)
    with pytest.raises(InvalidToken) as info:
        await second.verify_async(token)
    assert info.value.reason == "bad_signature"
    for verifier in (first, second):
        await verifier.shared.aclose()  # type: ignore[union-attr]


def test_redis_killed_mid_test_the_verifier_keeps_verifying_locally(
        issuer: FakeIssuer, replicas: Callable[..., TokenVerifier], redis_server: RedisServer,
        caplog: pytest.LogCaptureFixture) -> None:
    timer = FakeClock()
    store = RedisCache(redis_server.url, secret=SECRET, timer=timer)
    verifier = replicas(shared=store, **SHARE)  # every first sight asks Redis: the outage is noticed
    verifier.verify(issuer.mint("shop", "a"))
    redis_server.kill()
    with caplog.at_level(logging.INFO, logger="k8s_jwt_auth.redis"):
        start = time.monotonic()
        for i in range(20):
            assert verifier.verify(issuer.mint("shop", f"sa-{i}")).service_account == f"sa-{i}"
        assert time.monotonic() - start < 1.5
        redis_server.restart()
        timer.advance(1.5)
        verifier.verify(issuer.mint("shop", "after"))
        assert store.status().available
        assert replicas(shared=RedisCache(redis_server.url, secret=SECRET), **SHARE).verify(
            issuer.mint("shop", "after")).service_account == "after"
    records = [r for r in caplog.records if r.name == "k8s_jwt_auth.redis"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]
    assert "unavailable" in records[0].getMessage() and "available again" in records[1].getMessage()
    assert all("eyJ" not in r.getMessage() for r in caplog.records)


def test_from_env_builds_a_verifier_that_uses_redis(issuer: FakeIssuer, redis_server: RedisServer,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K8S_JWT_AUTH_ISSUER", issuer.issuer)
    monkeypatch.setenv("K8S_JWT_AUTH_AUDIENCES", "test")
    monkeypatch.setenv("K8S_JWT_AUTH_REDIS_URL", redis_server.url)
    monkeypatch.setenv("K8S_JWT_AUTH_CACHE_SECRET", SECRET)
    monkeypatch.setenv("K8S_JWT_AUTH_REDIS_PREFIX", "k8s-jwt-auth:test-env:")
    verifier = TokenVerifier(VerifierConfig.from_env())
    try:
        assert isinstance(verifier.shared, RedisCache) and verifier.shared.prefix == "k8s-jwt-auth:test-env:"
        verifier.verify(issuer.mint())
        with redis_server.client() as raw:
            stored = sorted(k.decode() for k in raw.scan_iter("*"))
        assert [n.split(":")[2] for n in stored] == ["jwks"]  # by default no verified-token entry
        assert all(n.startswith("k8s-jwt-auth:test-env:") for n in stored)
    finally:
        verifier.shared.close()  # type: ignore[union-attr]


def test_the_redis_benchmark_runs(redis_server: RedisServer) -> None:
    bench = Path(__file__).resolve().parents[1] / "bench" / "redis_cache.py"
    proc = subprocess.run([sys.executable, str(bench), "--quick", "--number", "20", "--redis-url", redis_server.url,
                           "--replicas", "4"], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if not k.startswith("K8S_JWT_AUTH_")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["cold_start_jwks_fetches"] == {"without Redis": 4, "with Redis": 1}
    assert set(summary["latency"]) == {"RS256", "ES256", "ES384", "ES512"}
    rs256 = summary["latency"]["RS256"]
    assert set(rs256) == {"local", "given"} and len(rs256["given"]) == 4 and len(rs256["local"]) == 2
    assert set(summary["break_even_replicas"]["ES256"]) == {"given"} and len(summary["tokenreview"]) == 3


def test_tokenreview_answers_are_shared_by_replicas(issuer: FakeIssuer, replicas: Callable[..., TokenVerifier],
                                                    tmp_path: Any) -> None:
    own_token = tmp_path / "token"
    own_token.write_text(issuer.mint("payments", "callee"))
    settings = {"tokenreview": True, "tokenreview_url": issuer.url, "token_file": str(own_token)}  # the default
    first, second = replicas(**settings), replicas(**settings)
    token = issuer.mint("shop", "cart", pod="cart-1")
    assert first.verify(token).reviewed and second.verify(token).reviewed
    assert issuer.tokenreviews == 1  # the second replica took the answer from Redis
    assert second.reviewer is not None and second.reviewer.cache_info().shared_hits == 1
    issuer.review_cache_ttl = 0
    issuer.delete_pod("cart-1")
    other = issuer.mint("shop", "cart", pod="cart-1")  # a new token of the deleted pod: never reviewed before
    with pytest.raises(InvalidToken) as info:
        second.verify(other)
    assert info.value.reason == "token_revoked"
