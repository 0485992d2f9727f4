"""`RedisCache` against a real redis-server on 127.0.0.1: authenticated entries, hashed names, expiry, outages.

Time is injected (`clock` for entry expiry, `timer` for the circuit breaker): no test sleeps past a TTL or a
back-off. The only real waits are Redis's own timeouts (0.1 s) while it is killed or made slow.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from k8s_jwt_auth import ConfigurationError, VerifierConfig
from k8s_jwt_auth._shared import SharedStore
from k8s_jwt_auth.redis_cache import BACKOFF_MAX, RedisCache
from k8s_jwt_auth.testing import FakeClock

from ._redis import RedisServer, redis_server, redis_session
from ._resp import RespServer, after_handshake, resp_server

__all__ = ["redis_server", "redis_session"]  # fixtures

SECRET = "s" * 32
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDphcHAifQ.c2ln"
DIGEST = hashlib.sha256(TOKEN.encode()).digest()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def timer() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def make_cache(redis_server: RedisServer, clock: FakeClock, timer: FakeClock) -> Iterator[Callable[..., RedisCache]]:
    made: list[RedisCache] = []

    def factory(**overrides: Any) -> RedisCache:
        settings: dict[str, Any] = {"secret": SECRET, "clock": clock, "timer": timer}
        settings.update(overrides)
        made.append(RedisCache(settings.pop("url", redis_server.url), **settings))
        return made[-1]

    yield factory
    for cache in made:
        cache.close()


@pytest.fixture
def cache(make_cache: Callable[..., RedisCache]) -> RedisCache:
    return make_cache()


def names(server: RedisServer) -> list[str]:
    with server.client() as raw:
        return sorted(k.decode() for k in raw.scan_iter("*"))


def redis_warnings(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "k8s_jwt_auth.redis" and r.levelno == level]


# -- the contract --------------------------------------------------------------------------------


def test_is_a_shared_store(cache: RedisCache) -> None:
    assert isinstance(cache, SharedStore)


def test_roundtrip_sync(cache: RedisCache) -> None:
    assert cache.get("v", DIGEST) is None
    cache.set("v", DIGEST, b"payload", 60)
    assert cache.get("v", DIGEST) == b"payload"
    assert cache.get("tr", DIGEST) is None  # namespaces are apart
    status = cache.status()
    assert (status.hits, status.misses, status.errors, status.tampered, status.available) == (1, 2, 0, 0, True)


@pytest.mark.anyio
async def test_roundtrip_async(cache: RedisCache) -> None:
    assert await cache.aget("v", DIGEST) is None
    await cache.aset("v", DIGEST, b"payload", 60)
    assert await cache.aget("v", DIGEST) == b"payload"
    assert cache.get("v", DIGEST) == b"payload"  # the sync and async clients see the same entries
    await cache.aclose()


def test_async_clients_per_event_loop_are_closed_with_their_loop(cache: RedisCache) -> None:
    cache.set("v", DIGEST, b"payload", 60)
    results = []
    for _ in range(3):  # each asyncio.run is a new loop: a client each, closed at its shutdown
        results.append(asyncio.run(cache.aget("v", DIGEST)))
        assert cache._loops == {}
    assert results == [b"payload"] * 3

    def in_thread() -> None:
        results.append(asyncio.run(cache.aget("v", DIGEST)))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(10)
    assert results[-1] == b"payload" and cache._loops == {}


def test_a_closed_loop_that_skipped_shutdown_is_forgotten(cache: RedisCache) -> None:
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(cache.aget("v", DIGEST)) is None
        assert loop.run_until_complete(cache.aclose()) is None  # an app's lifespan shutdown
        assert cache._loops == {}
    finally:
        loop.close()


def test_ttl_is_a_redis_expiry_no_later_than_asked(cache: RedisCache, redis_server: RedisServer) -> None:
    cache.set("v", DIGEST, b"payload", 2.5)
    (name,) = names(redis_server)
    with redis_server.client() as raw:
        assert 0 < raw.pttl(name) <= 2500


@pytest.mark.parametrize("ttl", [0, -1, 0.0004])
def test_no_ttl_stores_nothing(cache: RedisCache, redis_server: RedisServer, ttl: float) -> None:
    cache.set("v", DIGEST, b"payload", ttl)
    assert names(redis_server) == []


def test_an_entry_past_its_embedded_expiry_is_ignored(cache: RedisCache, clock: FakeClock) -> None:
    cache.set("v", DIGEST, b"payload", 10)
    clock.advance(9.9)
    assert cache.get("v", DIGEST) == b"payload"
    clock.advance(0.2)  # Redis still holds it (no real time passed), the entry says it is over
    assert cache.get("v", DIGEST) is None


def test_an_entry_replayed_past_its_expiry_is_ignored(cache: RedisCache, clock: FakeClock,
                                                      redis_server: RedisServer) -> None:
    cache.set("v", DIGEST, b"payload", 10)
    (name,) = names(redis_server)
    with redis_server.client() as raw:
        recorded = raw.get(name)
        raw.delete(name)
        clock.advance(60)
        raw.set(name, recorded)  # written back without a TTL by someone with write access to Redis
    assert cache.get("v", DIGEST) is None
    assert cache.status().tampered == 0  # authentic, just over


# -- what Redis sees ---------------------------------------------------------------------------


def test_key_names_are_hashed_and_prefixed(make_cache: Callable[..., RedisCache], redis_server: RedisServer) -> None:
    cache = make_cache(prefix="k8s-jwt-auth:staging:")
    cache.set("v", DIGEST, b"payload", 60)
    assert cache.try_lock("jwks", b"https://issuer.test\n", 5)
    stored = names(redis_server)
    assert len(stored) == 2 and all(n.startswith("k8s-jwt-auth:staging:") for n in stored)
    assert any(n.startswith("k8s-jwt-auth:staging:v:") for n in stored)
    assert any(n.startswith("k8s-jwt-auth:staging:jwks:lock:") for n in stored)
    for name in stored:
        assert DIGEST.hex() not in name and TOKEN not in name and "issuer.test" not in name
        assert len(name.rsplit(":", 1)[1]) == 64
    with redis_server.client() as raw:
        values = [raw.get(n) for n in stored]
    assert not any(TOKEN.encode() in v or DIGEST in v for v in values if v)


def test_another_prefix_is_another_cache(make_cache: Callable[..., RedisCache]) -> None:
    make_cache(prefix="k8s-jwt-auth:prod:").set("v", DIGEST, b"payload", 60)
    assert make_cache(prefix="k8s-jwt-auth:staging:").get("v", DIGEST) is None


# -- authenticity ------------------------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 35, -1])  # the MAC, the expiry, the payload
def test_a_tampered_entry_is_ignored_and_logged_once(cache: RedisCache, redis_server: RedisServer,
                                                     caplog: pytest.LogCaptureFixture, position: int) -> None:
    cache.set("v", DIGEST, b'{"namespace":"default"}', 60)
    (name,) = names(redis_server)
    with redis_server.client() as raw:
        value = bytearray(raw.get(name))
        value[position] ^= 0x01
        raw.set(name, bytes(value))
    with caplog.at_level(logging.WARNING, logger="k8s_jwt_auth.redis"):
        assert cache.get("v", DIGEST) is None
        assert cache.get("v", DIGEST) is None
    (warning,) = redis_warnings(caplog)  # rate-limited: the second one is counted, not logged
    assert "not authentic" in warning.getMessage() and "default" not in warning.getMessage()
    assert cache.status().tampered == 2


def test_a_truncated_entry_is_ignored(cache: RedisCache, redis_server: RedisServer) -> None:
    cache.set("v", DIGEST, b"payload", 60)
    (name,) = names(redis_server)
    with redis_server.client() as raw:
        raw.set(name, b"short")
    assert cache.get("v", DIGEST) is None and cache.status().tampered == 1


def test_a_forged_entry_without_the_secret_is_ignored(make_cache: Callable[..., RedisCache],
                                                      redis_server: RedisServer) -> None:
    ours, theirs = make_cache(), make_cache(secret="x" * 32)
    theirs.set("v", DIGEST, b'{"namespace":"kube-system"}', 60)
    assert ours.get("v", DIGEST) is None  # another secret: other names, a miss
    (forged,) = names(redis_server)
    ours.set("v", DIGEST, b"payload", 60)
    name = next(n for n in names(redis_server) if n != forged)
    with redis_server.client() as raw:
        raw.set(name, raw.get(forged))  # their entry under our name: the MAC does not check out
    assert ours.get("v", DIGEST) is None and ours.status().tampered == 1


def test_an_entry_moved_to_another_key_is_ignored(cache: RedisCache, redis_server: RedisServer) -> None:
    other = hashlib.sha256(b"another token").digest()
    cache.set("v", DIGEST, b"identity of the first token", 60)
    cache.set("v", other, b"identity of the second token", 60)
    first, second = (cache._name("v", d) for d in (DIGEST, other))
    with redis_server.client() as raw:
        raw.set(second, raw.get(first))
    assert cache.get("v", other) is None and cache.status().tampered == 1


def test_secret_rotation_makes_old_entries_unreadable(make_cache: Callable[..., RedisCache]) -> None:
    make_cache().set("v", DIGEST, b"payload", 60)
    rotated = make_cache(secret="r" * 32)
    assert rotated.get("v", DIGEST) is None
    assert rotated.status().tampered == 0  # nothing looked forged: the names differ


# -- replace: compare and set in one step -------------------------------------------------------


def test_replace_keeps_what_keep_says_and_replaces_the_rest(cache: RedisCache, redis_server: RedisServer) -> None:
    assert cache.replace("jwks", b"issuer", b"first", 60, keep=lambda current: True)  # nothing stored yet
    seen: list[bytes] = []
    assert not cache.replace("jwks", b"issuer", b"second", 60, keep=lambda current: seen.append(current) or True)
    assert seen == [b"first"] and cache.get("jwks", b"issuer") == b"first"
    assert cache.replace("jwks", b"issuer", b"third", 60, keep=lambda current: False)
    assert cache.get("jwks", b"issuer") == b"third"
    (name,) = names(redis_server)
    with redis_server.client() as raw:
        assert 0 < raw.pttl(name) <= 60_000
        raw.set(name, b"forged by someone without the secret")
    assert cache.replace("jwks", b"issuer", b"fourth", 60, keep=lambda current: True)  # inauthentic: never kept
    assert cache.get("jwks", b"issuer") == b"fourth" and cache.status().tampered == 1
    assert not cache.replace("jwks", b"issuer", b"fifth", 0, keep=lambda current: False)  # no ttl: nothing stored


def test_replace_never_overwrites_a_write_made_in_between(cache: RedisCache, redis_server: RedisServer) -> None:
    cache.set("jwks", b"issuer", b"first", 60)
    (name,) = names(redis_server)

    def meanwhile(current: bytes) -> bool:  # runs between WATCH and EXEC
        with redis_server.client() as raw:
            raw.set(name, b"written in between")
        return False

    assert not cache.replace("jwks", b"issuer", b"ours", 60, keep=meanwhile)
    with redis_server.client() as raw:
        assert raw.get(name) == b"written in between"
    assert cache.status().errors == 0 and cache.available  # a lost race is not a failure


@pytest.mark.anyio
async def test_replace_async(cache: RedisCache, redis_server: RedisServer) -> None:
    assert await cache.areplace("jwks", b"issuer", b"first", 60, keep=lambda current: True)
    assert not await cache.areplace("jwks", b"issuer", b"second", 60, keep=lambda current: current == b"first")
    assert await cache.aget("jwks", b"issuer") == b"first"
    (name,) = names(redis_server)

    def meanwhile(current: bytes) -> bool:
        with redis_server.client() as raw:
            raw.set(name, b"written in between")
        return False

    assert not await cache.areplace("jwks", b"issuer", b"ours", 60, keep=meanwhile)
    assert await cache.areplace("jwks", b"issuer", b"third", 60, keep=lambda current: False)
    assert await cache.aget("jwks", b"issuer") == b"third" and cache.status().errors == 0
    await cache.aclose()


def test_replace_with_redis_down_stores_nothing_and_never_raises(cache: RedisCache,
                                                                 redis_server: RedisServer) -> None:
    redis_server.kill()
    assert not cache.replace("jwks", b"issuer", b"value", 60, keep=lambda current: False)
    assert cache.status().errors == 1


# -- leases ------------------------------------------------------------------------------------


def test_a_lease_is_held_by_one_process(make_cache: Callable[..., RedisCache], redis_server: RedisServer) -> None:
    first, second = make_cache(), make_cache()
    assert first.try_lock("jwks", b"issuer", 5)
    assert not second.try_lock("jwks", b"issuer", 5)
    second.unlock("jwks", b"issuer")  # not its lease: left alone
    assert not second.try_lock("jwks", b"issuer", 5)
    first.unlock("jwks", b"issuer")
    assert second.try_lock("jwks", b"issuer", 5)
    (name,) = names(redis_server)
    with redis_server.client() as raw:
        assert 0 < raw.pttl(name) <= 5000


@pytest.mark.anyio
async def test_a_lease_async(make_cache: Callable[..., RedisCache]) -> None:
    first, second = make_cache(), make_cache()
    assert await first.atry_lock("jwks", b"issuer", 5)
    assert not await second.atry_lock("jwks", b"issuer", 5)
    await first.aunlock("jwks", b"issuer")
    assert await second.atry_lock("jwks", b"issuer", 5)
    await second.aunlock("jwks", b"issuer")
    for cache in (first, second):
        await cache.aclose()


# -- Redis down or slow -------------------------------------------------------------------------


def test_redis_killed_mid_test(cache: RedisCache, redis_server: RedisServer, timer: FakeClock,
                               caplog: pytest.LogCaptureFixture) -> None:
    cache.set("v", DIGEST, b"payload", 60)
    redis_server.kill()
    with caplog.at_level(logging.INFO, logger="k8s_jwt_auth.redis"):
        start = time.monotonic()
        for _ in range(50):
            assert cache.get("v", DIGEST) is None
            cache.set("v", DIGEST, b"payload", 60)
            assert not cache.try_lock("jwks", b"issuer", 5)
        assert time.monotonic() - start < 1.0  # one failed connect, then skipped without the network
        status = cache.status()
        assert (status.available, status.errors, status.skipped) == (False, 1, 149)
        timer.advance(1.5)  # past the first back-off: one probe, which fails, and a longer back-off
        assert cache.get("v", DIGEST) is None and cache.status().errors == 2
        timer.advance(1.5)
        assert cache.get("v", DIGEST) is None and cache.status().errors == 2  # still backing off (2 s)
        redis_server.restart()
        timer.advance(1.0)
        assert cache.get("v", DIGEST) is None  # the restarted server is empty
        cache.set("v", DIGEST, b"payload", 60)
        assert cache.get("v", DIGEST) == b"payload" and cache.status().available
    (warning,) = redis_warnings(caplog)
    (info,) = redis_warnings(caplog, logging.INFO)
    assert "unavailable" in warning.getMessage() and "available again" in info.getMessage()


@pytest.mark.anyio
async def test_redis_killed_mid_test_async(cache: RedisCache, redis_server: RedisServer, timer: FakeClock,
                                           caplog: pytest.LogCaptureFixture) -> None:
    await cache.aset("v", DIGEST, b"payload", 60)
    redis_server.kill()
    with caplog.at_level(logging.INFO, logger="k8s_jwt_auth.redis"):
        start = time.monotonic()
        for _ in range(50):
            assert await cache.aget("v", DIGEST) is None
            assert not await cache.atry_lock("jwks", b"issuer", 5)
        assert time.monotonic() - start < 1.0
        redis_server.restart()
        timer.advance(1.5)
        await cache.aset("v", DIGEST, b"payload", 60)
        assert await cache.aget("v", DIGEST) == b"payload"
    assert len(redis_warnings(caplog)) == 1 and len(redis_warnings(caplog, logging.INFO)) == 1
    await cache.aclose()


def test_an_unreachable_redis_at_startup(make_cache: Callable[..., RedisCache], redis_server: RedisServer,
                                         caplog: pytest.LogCaptureFixture) -> None:
    cache = make_cache(url=f"redis://127.0.0.1:{redis_server.port}/0", timeout=0.2)
    redis_server.kill()
    with caplog.at_level(logging.WARNING, logger="k8s_jwt_auth.redis"):
        assert cache.get("v", DIGEST) is None
    assert len(redis_warnings(caplog)) == 1


@pytest.fixture
def slow_redis(redis_server: RedisServer) -> Iterator[Callable[[float], None]]:
    """Makes Redis hold every client's commands (`CLIENT PAUSE`, from a raw connection) for some seconds."""

    def pause(seconds: float) -> None:
        with redis_server.client() as raw:
            raw.execute_command("CLIENT", "PAUSE", int(seconds * 1000))

    yield pause
    with redis_server.client() as raw:
        try:
            raw.execute_command("CLIENT", "UNPAUSE")
        except redis.ResponseError:  # before Redis 6.2: the next command waits for the pause to end
            pass


def test_a_slow_redis_is_given_up_after_the_timeout(cache: RedisCache, slow_redis: Callable[[float], None],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    cache.set("v", DIGEST, b"payload", 60)
    slow_redis(1.0)
    with caplog.at_level(logging.WARNING, logger="k8s_jwt_auth.redis"):
        start = time.monotonic()
        assert cache.get("v", DIGEST) is None
        assert time.monotonic() - start < 0.5
        assert cache.get("v", DIGEST) is None  # skipped now
    assert cache.status().errors == 1 and len(redis_warnings(caplog)) == 1


@pytest.mark.anyio
async def test_a_slow_redis_is_given_up_after_the_timeout_async(cache: RedisCache,
                                                                slow_redis: Callable[[float], None]) -> None:
    await cache.aset("v", DIGEST, b"payload", 60)
    slow_redis(1.0)
    start = time.monotonic()
    assert await cache.aget("v", DIGEST) is None
    assert time.monotonic() - start < 0.5
    assert cache.status().errors == 1
    await cache.aclose()


# -- configuration -----------------------------------------------------------------------------


def test_from_config(redis_server: RedisServer) -> None:
    config = VerifierConfig(issuer="https://issuer.test", audiences=["test"], redis_url=redis_server.url,
                            cache_secret=SECRET, redis_prefix="app:", redis_timeout=0.5)
    cache = RedisCache.from_config(config)
    try:
        assert (cache.prefix, cache.timeout) == ("app:", 0.5)
        cache.set("v", DIGEST, b"payload", 60)
        assert names(redis_server)[0].startswith("app:v:")
        assert SECRET not in repr(cache) and "redis://" not in repr(cache)
    finally:
        cache.close()


def test_from_config_needs_a_url() -> None:
    with pytest.raises(ConfigurationError):
        RedisCache.from_config(VerifierConfig(issuer="https://issuer.test", audiences=["test"]))


@pytest.mark.parametrize("settings", [{"secret": "short"}, {"secret": SECRET, "prefix": ""},
                                      {"secret": SECRET, "timeout": 0}, {"secret": SECRET, "url": None}])
def test_bad_settings(settings: dict[str, Any]) -> None:
    settings.setdefault("url", "redis://127.0.0.1:1/0")
    with pytest.raises(ConfigurationError):
        RedisCache(**settings)


def test_a_given_client(redis_server: RedisServer) -> None:
    with redis_server.client() as client:
        cache = RedisCache(secret=SECRET, client=client)
        cache.set("v", DIGEST, b"payload", 60)
        assert cache.get("v", DIGEST) == b"payload"
        assert asyncio.run(cache.aget("v", DIGEST)) == b"payload"  # run in a worker thread


def test_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.delitem(sys.modules, "k8s_jwt_auth.redis_cache")
    with pytest.raises(ImportError, match=r'pip install "k8s-jwt-auth\[redis\]"'):
        import k8s_jwt_auth.redis_cache  # noqa: F401


def test_the_package_does_not_import_redis() -> None:
    code = "import sys, k8s_jwt_auth, k8s_jwt_auth.verifier; assert 'redis' not in sys.modules, 'redis imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


@pytest.mark.parametrize(("ci", "outcome"), [("", "1 skipped"), ("true", "1 error")])
def test_without_redis_server_the_tests_skip_except_in_ci(ci: str, outcome: str) -> None:
    env = {"PATH": str(Path(sys.executable).parent), "CI": ci, "HOME": str(Path.home())}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"{__file__}::test_roundtrip_sync"], capture_output=True, text=True, timeout=60,
                          env=env, cwd=Path(__file__).resolve().parents[1])
    assert outcome in proc.stdout, proc.stdout[-2000:]


def test_calls_under_way_when_redis_fails_back_off_once(cache: RedisCache, redis_server: RedisServer,
                                                        timer: FakeClock) -> None:
    cache.set("v", DIGEST, b"payload", 60)
    redis_server.kill()
    barrier = threading.Barrier(4)

    def call() -> None:
        barrier.wait(5)
        cache.get("v", DIGEST)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    status = cache.status()
    assert status.errors >= 1 and status.errors + status.skipped == 4
    assert status.retry_in == 1.0  # the first back-off, not doubled by the other failures



def test_two_calls_in_flight_that_fail_back_off_once(cache: RedisCache) -> None:
    first, second = cache._admit(), cache._admit()  # both sent before either failed
    assert first is not None and second is not None
    cache._failed(first, OSError("connection refused"))
    cache._failed(second, OSError("connection refused"))
    status = cache.status()
    assert (status.errors, status.retry_in) == (2, 1.0)


# -- hostile Redis: a reply trickled byte by byte, replies of the wrong type ----------------------

TRICKLE = 0.02  # seconds between the bytes of a reply: every socket read is well under the 0.1 s timeout
SLOW_VALUE = b"$200\r\n" + b"x" * 200 + b"\r\n"  # 4 s of trickle for the value alone

SYNC_CALLS: dict[str, Callable[[RedisCache], object]] = {
    "get": lambda c: c.get("v", DIGEST),
    "set": lambda c: c.set("v", DIGEST, b"payload", 60),
    "try_lock": lambda c: c.try_lock("jwks", b"issuer", 5),
    "replace": lambda c: c.replace("jwks", b"issuer", b"payload", 60, keep=lambda current: False),
}
ASYNC_CALLS: dict[str, Callable[[RedisCache], Any]] = {
    "aget": lambda c: c.aget("v", DIGEST),
    "aset": lambda c: c.aset("v", DIGEST, b"payload", 60),
    "atry_lock": lambda c: c.atry_lock("jwks", b"issuer", 5),
    "areplace": lambda c: c.areplace("jwks", b"issuer", b"payload", 60, keep=lambda current: False),
}
MISSES = (None, False)  # what every call answers when Redis cannot be used


def hostile_cache(server: RespServer, timer: FakeClock, clock: FakeClock) -> RedisCache:
    return RedisCache(server.url, secret=SECRET, timeout=0.1, clock=clock, timer=timer)


@pytest.mark.parametrize("call", sorted(SYNC_CALLS))
@pytest.mark.parametrize("answer", [after_handshake(SLOW_VALUE), lambda command: SLOW_VALUE],
                         ids=["value", "handshake"])
def test_a_trickled_reply_is_given_up_at_the_deadline(call: str, answer: Callable[[list[bytes]], bytes],
                                                      timer: FakeClock, clock: FakeClock,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    with resp_server(answer, trickle=TRICKLE) as server:
        cache = hostile_cache(server, timer, clock)
        with caplog.at_level(logging.WARNING, logger="k8s_jwt_auth.redis"):
            start = time.monotonic()
            assert SYNC_CALLS[call](cache) in MISSES
            elapsed = time.monotonic() - start
        cache.close()
    assert elapsed < 0.3, f"{call} held the caller {elapsed:.2f} s with a 0.1 s timeout"
    assert cache.status().errors == 1 and len(redis_warnings(caplog)) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("call", sorted(ASYNC_CALLS))
async def test_a_trickled_reply_is_given_up_at_the_deadline_async(call: str, timer: FakeClock,
                                                                  clock: FakeClock) -> None:
    with resp_server(after_handshake(SLOW_VALUE), trickle=TRICKLE) as server:
        cache = hostile_cache(server, timer, clock)
        start = time.monotonic()
        assert await ASYNC_CALLS[call](cache) in MISSES
        elapsed = time.monotonic() - start
        await cache.aclose()
    assert elapsed < 0.3 and cache.status().errors == 1


def test_a_deadline_does_not_outlive_its_call(redis_server: RedisServer, timer: FakeClock, clock: FakeClock) -> None:
    """The deadline bounds each call, not the connection: a pooled connection serves later calls normally."""
    cache = RedisCache(redis_server.url, secret=SECRET, timeout=0.1, clock=clock, timer=timer)
    cache.set("v", DIGEST, b"payload", 60)
    time.sleep(0.15)  # longer than the timeout, between two calls on the same pooled connection
    assert cache.get("v", DIGEST) == b"payload" and cache.status().errors == 0
    cache.close()


@pytest.mark.parametrize(("url", "kind"), [("redis://127.0.0.1:1/0", "Connection"),
                                           ("rediss://127.0.0.1:1/0", "SSLConnection"),
                                           ("unix:///tmp/k8s-jwt-auth-none.sock", "UnixDomainSocketConnection")])
def test_every_kind_of_connection_obeys_the_deadline(url: str, kind: str) -> None:
    cache = RedisCache(url, secret=SECRET)
    connection_class = cache._client.connection_pool.connection_class
    assert connection_class.__name__ == f"_Deadline{kind.replace('DomainSocket', '')}"
    assert [c.__name__ for c in connection_class.__mro__[1:4]][1] == kind  # its own kind's behaviour, deadline first
    cache.close()


def _everything_ok(command: list[bytes]) -> bytes:
    return b"+OK\r\n"


WRONG_REPLIES = {
    "integer": b":1\r\n",
    "array": b"*1\r\n$1\r\nx\r\n",
    "map": b"%1\r\n$1\r\nx\r\n:1\r\n",
    "set": b"~1\r\n:1\r\n",
    "boolean": b"#t\r\n",
    "double": b",1.5\r\n",
    "verbatim": b"=7\r\ntxt:abc\r\n",  # redis-py hands it out as bytes: a value that is not authentic
    "error": b"-ERR not today\r\n",
    "not RESP": b"hello\r\n",
}


@pytest.mark.parametrize("answer", [_everything_ok, *(after_handshake(r) for r in WRONG_REPLIES.values())],
                         ids=["+OK to everything", *WRONG_REPLIES])
def test_a_reply_of_the_wrong_type_is_a_miss_never_an_exception(answer: Callable[[list[bytes]], bytes],
                                                                timer: FakeClock, clock: FakeClock,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    with resp_server(answer) as server, caplog.at_level(logging.WARNING, logger="k8s_jwt_auth.redis"):
        cache = hostile_cache(server, timer, clock)
        for _ in range(2):  # the second round probes again after the back-off
            for call in SYNC_CALLS.values():
                assert call(cache) in (*MISSES, True)  # a SET NX answered +OK is a lease
            cache.unlock("jwks", b"issuer")
            assert cache.get("v", DIGEST) is None
            timer.advance(BACKOFF_MAX)
        cache.close()
    warnings = redis_warnings(caplog)
    outages = [w for w in warnings if "unavailable" in w.getMessage()]
    assert len(outages) <= 2  # one per outage: a server that answers some commands well flaps, once per round
    assert len(warnings) - len(outages) <= 1  # "not authentic", rate-limited


@pytest.mark.anyio
@pytest.mark.parametrize("answer", [_everything_ok, *(after_handshake(r) for r in WRONG_REPLIES.values())],
                         ids=["+OK to everything", *WRONG_REPLIES])
async def test_a_reply_of_the_wrong_type_is_a_miss_never_an_exception_async(
        answer: Callable[[list[bytes]], bytes], timer: FakeClock, clock: FakeClock) -> None:
    with resp_server(answer) as server:
        cache = hostile_cache(server, timer, clock)
        for _ in range(2):
            for call in ASYNC_CALLS.values():
                assert await call(cache) in (*MISSES, True)
            await cache.aunlock("jwks", b"issuer")
            assert await cache.aget("v", DIGEST) is None
            timer.advance(BACKOFF_MAX)
        await cache.aclose()


@pytest.mark.parametrize("reply", sorted(set(WRONG_REPLIES) - {"error", "not RESP", "verbatim"}))
def test_a_value_of_the_wrong_type_counts_as_a_failed_call(reply: str, timer: FakeClock, clock: FakeClock,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    with resp_server(after_handshake(WRONG_REPLIES[reply])) as server:
        cache = hostile_cache(server, timer, clock)
        with caplog.at_level(logging.WARNING, logger="k8s_jwt_auth.redis"):
            assert cache.get("v", DIGEST) is None
        cache.close()
    status = cache.status()
    assert (status.errors, status.tampered, status.available) == (1, 0, False)
    (warning,) = redis_warnings(caplog)
    # redis-py >= 8 speaks RESP3 and hands a map, set, boolean or double out as a value, which our type check
    # refuses; older releases speak RESP2, in which those are no reply at all (redis-py's own protocol error)
    resp2_only = redis.connection.DEFAULT_RESP_VERSION == 2 and reply in {"map", "set", "boolean", "double"}
    assert ("InvalidResponse" if resp2_only else "unexpected") in warning.getMessage()

