"""`RemoteKeySource` against a real HTTP issuer on loopback: fetch counts come from the server.

Time is an injected clock: no test sleeps past a max age, cooldown or backoff. The only real waits are
bounded polls for background fetches and the `slow` failure mode (always woken by `fail(None)`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from k8s_jwt_auth import ConfigurationError, InvalidToken, KeySetUnavailable, TokenVerifier, VerifierConfig
from k8s_jwt_auth._cache import KEY_RECHECK
from k8s_jwt_auth._jwks_fetch import ACCEPT_DISCOVERY, ACCEPT_JWKS
from k8s_jwt_auth._remote import RemoteKeySource
from k8s_jwt_auth.keys import VerificationKey, key_source_from_config
from k8s_jwt_auth.testing import FakeClock, FakeIssuer

RBAC_ROLE = "system:service-account-issuer-discovery"


@pytest.fixture
def clock() -> FakeClock:
    """Monotonic seconds that move only when a test says so."""
    return FakeClock()


@pytest.fixture
def make_source(k8s_issuer: FakeIssuer, clock: FakeClock) -> Iterator[Callable[..., RemoteKeySource]]:
    """Sources for the fake issuer; the test waits for their background fetches before the issuer resets."""
    made: list[RemoteKeySource] = []

    def factory(**overrides: Any) -> RemoteKeySource:
        config = VerifierConfig(issuer=k8s_issuer.issuer, audiences=["test"], **overrides)
        made.append(RemoteKeySource.from_config(config, clock=clock))
        return made[-1]

    yield factory
    k8s_issuer.fail(None)  # wake any slow answer still pending
    for source in made:
        wait_until(lambda s=source: not s.status().reloading)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def unknown(source: RemoteKeySource, kid: str) -> InvalidToken:
    with pytest.raises(InvalidToken) as info:
        source.get(kid, "RS256")
    assert info.value.reason == "unknown_key" and info.value.claim == "kid"
    return info.value


def unavailable(source: RemoteKeySource, kid: str = "any") -> KeySetUnavailable:
    with pytest.raises(KeySetUnavailable) as info:
        source.get(kid, "RS256")
    assert info.value.status_code == 503 and info.value.retry_after >= 1
    return info.value


def in_thread(func: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run `func` in a thread; its result or exception lands in the returned list."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(func())
        except Exception as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


# -- single flight ----------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("first", ["thread", "task"])
async def test_cold_start_100_threads_and_100_tasks_cause_one_fetch(
    k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource], first: str,
) -> None:
    source, kid = make_source(), k8s_issuer.key.kid
    k8s_issuer.fail("slow", endpoint="jwks", delay=0.5)  # everyone arrives while the one fetch is in flight
    results: list[Any] = []

    def call() -> None:
        try:
            results.append(source.get(kid, "RS256"))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=call, daemon=True) for _ in range(100)]
    tasks = [asyncio.create_task(source.get_async(kid, "RS256")) for _ in range(100)]
    if first == "task":
        await asyncio.sleep(0)  # the tasks start (one of them leads with an AsyncClient) before the threads
    for thread in threads:
        thread.start()
    with anyio.fail_after(10):
        keys = await asyncio.gather(*tasks)
    await anyio.to_thread.run_sync(lambda: [t.join(10) for t in threads])
    assert (k8s_issuer.discovery_fetches, k8s_issuer.jwks_fetches) == (1, 1)
    assert len(results) == 100 and all(isinstance(k, VerificationKey) and k.kid == kid for k in [*results, *keys])
    assert source.status().fetch_count == 1


def test_unknown_kid_flood_one_fetch_per_cooldown(
    k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource], clock: FakeClock,
) -> None:
    source = make_source()
    source.get(k8s_issuer.key.kid, "RS256")
    assert k8s_issuer.jwks_fetches == 1
    for _ in range(200):
        unknown(source, uuid.uuid4().hex)
    assert k8s_issuer.jwks_fetches == 2  # the first random kid refetched; the other 199 were cooling down
    assert source.status().cooling_down
    clock.advance(29.9)
    unknown(source, uuid.uuid4().hex)
    assert k8s_issuer.jwks_fetches == 2
    clock.advance(0.2)  # the cooldown (30 s) is over: one more refetch, then cooling down again
    assert not source.status().cooling_down
    for _ in range(50):
        unknown(source, uuid.uuid4().hex)
    assert k8s_issuer.jwks_fetches == 3
    assert source.get(k8s_issuer.key.kid, "RS256").kid == k8s_issuer.key.kid  # known kids never limited


@pytest.mark.anyio
async def test_concurrent_unknown_kid_flood_from_threads_and_tasks(
    k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource],
) -> None:
    source = make_source()
    await source.get_async(k8s_issuer.key.kid, "RS256")

    async def one() -> None:
        with pytest.raises(InvalidToken) as info:
            await source.get_async(uuid.uuid4().hex, "RS256")
        assert info.value.reason == "unknown_key"

    threads = [in_thread(lambda: source.get(uuid.uuid4().hex, "RS256")) for _ in range(50)]
    with anyio.fail_after(10):
        await asyncio.gather(*(one() for _ in range(50)))
    await anyio.to_thread.run_sync(lambda: [t.join(10) for t, _ in threads])
    assert all(isinstance(box[0], InvalidToken) and box[0].reason == "unknown_key" for _, box in threads)
    assert k8s_issuer.jwks_fetches == 2


def test_cooldown_counts_from_the_last_unknown_kid_refetch(
    k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource], clock: FakeClock,
) -> None:
    source = make_source()
    source.get(k8s_issuer.key.kid, "RS256")
    clock.advance(1)
    second = k8s_issuer.add_key()  # rotated a second after start-up: picked up at once
    assert source.get(second.kid, "RS256").kid == second.kid
    assert k8s_issuer.jwks_fetches == 2
    clock.advance(2)
    third = k8s_issuer.add_key()  # within the cooldown of the refetch above
    unknown(source, third.kid)
    assert k8s_issuer.jwks_fetches == 2
    clock.advance(28)  # 30 s after the unknown-kid refetch
    assert source.get(third.kid, "RS256").kid == third.kid
    assert k8s_issuer.jwks_fetches == 3


def test_known_kids_do_not_wait_for_an_unknown_kid_refetch(
    k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource],
) -> None:
    source, kid = make_source(), k8s_issuer.key.kid
    source.get(kid, "RS256")
    k8s_issuer.fail("slow", endpoint="jwks", delay=2)
    thread, box = in_thread(lambda: source.get("not-a-key", "RS256"))
    wait_until(lambda: k8s_issuer.jwks_fetches == 2)  # the refetch is in flight, held by the server
    assert source.status().reloading
    started = time.monotonic()
    assert source.get(kid, "RS256").kid == kid
    assert asyncio.run(source.get_async(kid, "RS256")).kid == kid
    assert time.monotonic() - started < 0.5  # the refetch takes 2 s
    assert source.status().reloading and not box
    k8s_issuer.fail(None)
    thread.join(10)
    assert isinstance(box[0], InvalidToken) and box[0].reason == "unknown_key"


@pytest.mark.anyio
async def test_a_cancelled_leader_does_not_strand_its_waiters(
    k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource],
) -> None:
    source, kid = make_source(), k8s_issuer.key.kid
    k8s_issuer.fail("slow", endpoint="jwks", delay=5)
    leader = asyncio.create_task(source.get_async(kid, "RS256"))
    with anyio.fail_after(5):
        while k8s_issuer.jwks_fetches == 0:
            await asyncio.sleep(0.01)
    waiter = asyncio.create_task(source.get_async(kid, "RS256"))
    await asyncio.sleep(0.05)
    leader.cancel()
    with anyio.fail_after(2), pytest.raises(KeySetUnavailable):
        await waiter
    assert leader.cancelled() and not source.status().reloading
    k8s_issuer.fail(None)
    assert (await source.get_async(kid, "RS256")).kid == kid


# -- freshness and rotation -------------------------------------------------------------------------


def test_rotation_new_key_at_once_removed_key_after_the_next_refresh(
    k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource], clock: FakeClock,
) -> None:
    wall = FakeClock(time.time())  # the verifier's clock: its cached tokens' key checks are due after KEY_RECHECK
    verifier = TokenVerifier(VerifierConfig(issuer=k8s_issuer.issuer, audiences=["test"]), keys=make_source(),
                             clock=wall)
    old = k8s_issuer.key
    assert verifier.verify(k8s_issuer.mint()).namespace == "default"
    new = k8s_issuer.add_key()
    assert verifier.verify(k8s_issuer.mint(key=new)).namespace == "default"
    k8s_issuer.remove_key(old.kid)
    old_token = k8s_issuer.mint(key=old)
    assert verifier.verify(old_token).namespace == "default"  # still cached
    clock.advance(601)
    wall.advance(KEY_RECHECK)
    with pytest.raises(InvalidToken) as info:
        verifier.verify(old_token)
    assert info.value.reason == "unknown_key"
    assert k8s_issuer.jwks_fetches == 3


def test_background_refresh_before_expiry(
    k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource], clock: FakeClock,
) -> None:
    source, kid = make_source(), k8s_issuer.key.kid
    source.get(kid, "RS256")
    clock.advance(0.7 * 600)
    source.get(kid, "RS256")
    assert source.status().fetch_count == 1 and not source.status().reloading
    clock.advance(0.15 * 600)  # 85 % of the max age
    k8s_issuer.fail("slow", endpoint="jwks", delay=2)
    started = time.monotonic()
    assert source.get(kid, "RS256").kid == kid  # answered from the current keys at once
    assert time.monotonic() - started < 0.5
    assert source.status().reloading
    k8s_issuer.fail(None)
    wait_until(lambda: not source.status().reloading)
    status = source.status()
    assert (status.fetch_count, status.last_refresh_age, status.fresh) == (2, 0.0, True)
    assert k8s_issuer.jwks_fetches == 2
    clock.advance(0.5 * 600)  # past the first set's max age, but the refreshed set is fresh
    source.get(kid, "RS256")
    assert k8s_issuer.jwks_fetches == 2


def test_expired_keys_are_refetched_before_answering(
    k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource], clock: FakeClock,
) -> None:
    source, kid = make_source(), k8s_issuer.key.kid
    source.get(kid, "RS256")
    clock.advance(600)
    assert not source.status().fresh
    source.get(kid, "RS256")
    assert k8s_issuer.jwks_fetches == 2 and source.status().fresh


@pytest.mark.parametrize(("served", "applied"), [(120, 120.0), (5, 60.0), (3600, 600.0), (0, 60.0)])
def test_cache_control_max_age_honoured_within_bounds(
    k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource], clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch, served: int, applied: float,
) -> None:
    monkeypatch.setattr(k8s_issuer, "max_age", served)
    source, kid = make_source(), k8s_issuer.key.kid
    source.get(kid, "RS256")
    assert source.status().max_age == applied
    clock.advance(applied * 0.5)
    source.get(kid, "RS256")
    assert k8s_issuer.jwks_fetches == 1
    clock.advance(applied * 0.5)
    source.get(kid, "RS256")
    assert k8s_issuer.jwks_fetches == 2


def test_refresh_forces_a_fetch(k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource]) -> None:
    source = make_source()
    assert source.refresh().kids == (k8s_issuer.key.kid,)
    new = k8s_issuer.rotate()
    assert asyncio.run(source.refresh_async()).kids == (new.kid,)
    assert k8s_issuer.jwks_fetches == 2


def test_an_older_response_never_overwrites_a_newer_one(
    k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource],
) -> None:
    source = make_source()
    older = source.fetcher.fetch()
    newer_key = k8s_issuer.rotate()
    newer = source.fetcher.fetch()
    with source._lock:  # two fetches in flight: the second answers first
        first, first_future = source._begin()
        second, second_future = source._begin()
    source._succeeded(second, newer)
    source._succeeded(first, older)
    source._settle(first_future)
    source._settle(second_future)
    assert source.status().kids == (newer_key.kid,)


# -- failures ---------------------------------------------------------------------------------------


def test_outage_serves_stale_keys_and_warns(
    k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource], clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source, kid = make_source(), k8s_issuer.key.kid
    source.get(kid, "RS256")
    k8s_issuer.fail("error")
    clock.advance(601)
    with caplog.at_level(logging.WARNING, logger="k8s_jwt_auth.keys"):
        assert source.get(kid, "RS256").kid == kid
    assert k8s_issuer.discovery_fetches == 2
    assert any("still serving the last good keys" in r.getMessage() and r.levelno == logging.WARNING
               and r.name == "k8s_jwt_auth.keys" for r in caplog.records)
    status = source.status()
    assert status.stale and not status.fresh and status.failures == 1 and "HTTP 500" in (status.last_error or "")
    assert source.get(kid, "RS256").kid == kid  # within the retry interval: no fetch, no wait
    assert k8s_issuer.discovery_fetches == 2
    clock.advance(1)  # the retry interval has passed: a retry runs in the background
    assert source.get(kid, "RS256").kid == kid
    wait_until(lambda: not source.status().reloading)
    assert k8s_issuer.discovery_fetches == 3 and source.status().failures == 2
    k8s_issuer.fail(None)
    clock.advance(2)
    source.get(kid, "RS256")
    wait_until(lambda: not source.status().reloading)
    assert source.status().fresh and source.status().failures == 0


def test_outage_beyond_max_stale_is_unavailable(
    k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource], clock: FakeClock,
) -> None:
    source, kid = make_source(max_stale=100), k8s_issuer.key.kid
    source.get(kid, "RS256")
    k8s_issuer.fail("error")
    clock.advance(600 + 99)
    assert source.get(kid, "RS256").kid == kid
    clock.advance(2)
    error = unavailable(source, kid)
    assert "HTTP 500" in error.message and source.status().kids == (kid,)  # kept, just no longer served


def test_outage_without_keys_is_503_fast_with_retry_after_and_backoff(
    k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource], clock: FakeClock,
) -> None:
    source = make_source()
    k8s_issuer.fail("error")
    assert unavailable(source).retry_after == 1
    started = time.monotonic()
    for _ in range(20):
        assert unavailable(source).retry_after == 1
    assert time.monotonic() - started < 0.5 and k8s_issuer.discovery_fetches == 1  # no hammering
    clock.advance(1)
    assert unavailable(source).retry_after == 2  # the retry interval grows: 1, 2, 4 ... 30 s
    assert k8s_issuer.discovery_fetches == 2
    with pytest.raises(KeySetUnavailable):
        asyncio.run(source.get_async("any", "RS256"))
    assert k8s_issuer.discovery_fetches == 2
    k8s_issuer.fail(None)
    clock.advance(2)
    assert source.get(k8s_issuer.key.kid, "RS256").kid == k8s_issuer.key.kid


@pytest.mark.anyio
async def test_slow_server_timeout_is_honoured(
    k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource],
) -> None:
    sync_source, async_source = make_source(timeout=0.5), make_source(timeout=0.5)
    k8s_issuer.fail("slow", delay=3)
    started = time.monotonic()
    threads = [in_thread(lambda: sync_source.get("k", "RS256")) for _ in range(10)]
    with anyio.fail_after(2.5):
        results = await asyncio.gather(*(async_source.get_async("k", "RS256") for _ in range(10)),
                                       return_exceptions=True)
    await anyio.to_thread.run_sync(lambda: [t.join(3) for t, _ in threads])
    assert time.monotonic() - started < 2.5  # the server would have answered after 3 s
    errors = [*results, *(box[0] for _, box in threads)]
    assert len(errors) == 20 and all(isinstance(e, KeySetUnavailable) for e in errors)
    assert "timeout" in (sync_source.status().last_error or "")
    assert k8s_issuer.discovery_fetches == 2  # one fetch per source


@pytest.mark.parametrize(("mode", "words"), [("garbage", "not JSON"), ("oversized", "larger than"),
                                             ("empty", "no usable key"), ("error", "HTTP 500")])
def test_bad_jwks_answers_fail_but_keep_good_keys(
    k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource], mode: Any, words: str,
) -> None:
    k8s_issuer.fail(mode, endpoint="jwks")
    cold = make_source()
    assert words in unavailable(cold).message
    k8s_issuer.fail(None)
    warm, kid = make_source(), k8s_issuer.key.kid
    warm.get(kid, "RS256")
    k8s_issuer.fail(mode, endpoint="jwks")
    with pytest.raises(KeySetUnavailable) as info:
        warm.refresh()
    assert words in info.value.message
    assert warm.get(kid, "RS256").kid == kid and warm.status().kids == (kid,)  # never dropped


def test_unusable_keys_are_skipped_not_fatal(
    k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource], monkeypatch: pytest.MonkeyPatch,
) -> None:
    good = k8s_issuer.key.public_jwk()
    weird = [{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}, {"kty": "RSA", "kid": "broken", "n": "", "e": "AQAB"}]
    monkeypatch.setattr(k8s_issuer, "jwks", lambda: {"keys": [*weird, good]})
    source = make_source()
    assert source.get(good["kid"], "RS256").kid == good["kid"]
    assert source.status().kids == (good["kid"],)


def test_issuer_mismatch_in_discovery(k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource]) -> None:
    k8s_issuer.fail("issuer_mismatch", endpoint="discovery")
    error = unavailable(make_source())
    assert "issuer mismatch" in error.message
    assert "https://attacker.example" in error.message and repr(k8s_issuer.issuer) in error.message
    assert k8s_issuer.jwks_fetches == 0


def test_trailing_slash_is_stripped_for_discovery_but_issuer_compared_exactly(k8s_issuer: FakeIssuer) -> None:
    source = RemoteKeySource(k8s_issuer.issuer + "/")
    with pytest.raises(KeySetUnavailable) as info:
        source.get("k", "RS256")
    assert "issuer mismatch" in info.value.message
    assert k8s_issuer.requests[0]["path"] == "/.well-known/openid-configuration"


def test_jwks_uri_override_skips_discovery(k8s_issuer: FakeIssuer, clock: FakeClock) -> None:
    config = VerifierConfig(issuer="https://kubernetes.default.svc.cluster.local", audiences=["test"],
                            jwks_uri=k8s_issuer.jwks_uri)
    source = key_source_from_config(config)
    assert isinstance(source, RemoteKeySource)
    assert source.get(k8s_issuer.key.kid, "RS256").kid == k8s_issuer.key.kid
    assert (k8s_issuer.discovery_fetches, k8s_issuer.jwks_fetches) == (0, 1)
    assert source.status().jwks_uri == k8s_issuer.jwks_uri


def test_accept_headers(k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource]) -> None:
    make_source().get(k8s_issuer.key.kid, "RS256")
    accept = {r["path"]: r["accept"] for r in k8s_issuer.requests}
    assert accept == {"/.well-known/openid-configuration": ACCEPT_DISCOVERY, "/openid/v1/jwks": ACCEPT_JWKS}
    assert ACCEPT_JWKS == "application/jwk-set+json, application/json"
    assert all("authorization" not in r for r in k8s_issuer.requests)


def test_406_is_explained(k8s_issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("k8s_jwt_auth._jwks_fetch.ACCEPT_JWKS", "application/json")  # what naive clients send
    error = unavailable(RemoteKeySource(k8s_issuer.issuer))
    assert "HTTP 406" in error.message and "application/json" in error.message


# -- credentials, TLS, URLs -------------------------------------------------------------------------


def test_bearer_token_from_token_file_reread_on_each_fetch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    caplog.set_level(logging.DEBUG)
    with FakeIssuer(require_token="first-token") as issuer:
        source = RemoteKeySource(issuer.issuer, token_file=str(token_file))
        assert source.get(issuer.key.kid, "RS256").kid == issuer.key.kid
        token_file.write_text("second-token")  # kubelet rotated it
        issuer.require_token = "second-token"
        source.refresh()
        seen = [r["authorization"] for r in issuer.requests]
    assert seen == ["Bearer first-token"] * 2 + ["Bearer second-token"] * 2
    assert "first-token" not in caplog.text and "second-token" not in caplog.text


@pytest.mark.parametrize(("token", "status"), [(None, "401"), ("wrong", "403")])
def test_401_and_403_point_at_rbac(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                   token: str | None, status: str) -> None:
    token_file = None
    if token is not None:
        token_file = tmp_path / "token"
        token_file.write_text(token)
    with FakeIssuer(require_token="right") as issuer:
        error = unavailable(RemoteKeySource(issuer.issuer, token_file=token_file and str(token_file)))
    assert f"HTTP {status}" in error.message and RBAC_ROLE in error.message
    assert "right" not in caplog.text and (token is None or token not in caplog.text)


def test_unreadable_token_file_is_unavailable_not_a_crash(tmp_path: Path, k8s_issuer: FakeIssuer) -> None:
    error = unavailable(RemoteKeySource(k8s_issuer.issuer, token_file=str(tmp_path / "missing")))
    assert "bearer token file" in error.message and k8s_issuer.discovery_fetches == 0


class _InsecureJwksUri(FakeIssuer):
    def discovery(self) -> dict[str, Any]:
        return {**super().discovery(), "jwks_uri": "http://keys.example.com/openid/v1/jwks"}


def test_plain_http_jwks_uri_from_discovery_is_refused() -> None:
    with _InsecureJwksUri() as issuer:
        error = unavailable(RemoteKeySource(issuer.issuer))
        assert issuer.jwks_fetches == 0
    assert "must be an https:// URL" in error.message and "keys.example.com" in error.message


def test_plain_http_issuer_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        RemoteKeySource("http://kubernetes.example.com")
    with pytest.raises(ConfigurationError):
        RemoteKeySource("https://kubernetes.example.com", jwks_uri="http://10.0.0.1/openid/v1/jwks")
    assert RemoteKeySource("http://kubernetes.example.com", allow_insecure_http=True)


class _Redirecting(FakeIssuer):
    def _answer(self, endpoint: str, failure: str | None, headers: Any) -> tuple[int, dict[str, str], bytes]:
        if endpoint == "jwks":
            return 302, {"Location": "https://elsewhere.example/jwks"}, b""
        return super()._answer(endpoint, failure, headers)


def test_redirects_are_not_followed() -> None:
    with _Redirecting() as issuer:
        error = unavailable(RemoteKeySource(issuer.issuer))
        assert issuer.jwks_fetches == 1 and len(issuer.requests) == 2
    assert "HTTP 302" in error.message and "not followed" in error.message


def test_tls_needs_the_cluster_ca(tmp_path: Path) -> None:
    with FakeIssuer(tls=True) as issuer:
        assert issuer.issuer.startswith("https://") and issuer.ca_pem is not None
        error = unavailable(RemoteKeySource(issuer.issuer))
        assert "TLS" in error.message and "ca_file" in error.message
        ca_file = tmp_path / "ca.crt"
        ca_file.write_text(issuer.ca_pem)
        source = RemoteKeySource(issuer.issuer, ca_file=str(ca_file))
        assert source.get(issuer.key.kid, "RS256").kid == issuer.key.kid


def test_bad_ca_file_is_a_configuration_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigurationError, match="CA bundle"):
        RemoteKeySource("https://kubernetes.default.svc", ca_file=str(bad))


# -- end to end -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_token_verifier_end_to_end(k8s_issuer: FakeIssuer) -> None:
    verifier = TokenVerifier(VerifierConfig(issuer=k8s_issuer.issuer, audiences=["test"]))
    assert isinstance(verifier.keys, RemoteKeySource)
    token = k8s_issuer.mint("payments", "worker", pod="worker-1")
    assert (await verifier.verify_async(token)).namespace == "payments"
    identity = await anyio.to_thread.run_sync(verifier.verify, token)
    assert (identity.namespace, identity.service_account, identity.pod_name) == ("payments", "worker", "worker-1")
    assert (k8s_issuer.discovery_fetches, k8s_issuer.jwks_fetches) == (1, 1)


def _mount(path: Path, issuer: FakeIssuer) -> str:
    path.mkdir()
    token = issuer.mint("payments", "api", audiences=[issuer.issuer])
    (path / "token").write_text(token)
    if issuer.ca_pem is not None:
        (path / "ca.crt").write_text(issuer.ca_pem)
    return token


@pytest.mark.anyio
async def test_in_cluster_config_over_tls_with_the_pods_token(tmp_path: Path) -> None:
    with FakeIssuer(tls=True) as issuer:
        pod_token = _mount(tmp_path / "sa", issuer)
        issuer.require_token = pod_token  # anonymous discovery is off, as on most clusters
        config = VerifierConfig.in_cluster(audiences=["test"], mount=str(tmp_path / "sa"))
        assert config.issuer == issuer.issuer
        assert (config.ca_file, config.token_file) == (str(tmp_path / "sa/ca.crt"), str(tmp_path / "sa/token"))
        verifier = TokenVerifier(config)
        token = issuer.mint("payments", "worker")
        assert (await verifier.verify_async(token)).service_account == "worker"
        assert (await anyio.to_thread.run_sync(verifier.verify, token)).namespace == "payments"
        assert {r["authorization"] for r in issuer.requests} == {f"Bearer {pod_token}"}
        assert issuer.jwks_fetches == 1


def test_in_cluster_config_without_a_ca_file(tmp_path: Path, k8s_issuer: FakeIssuer) -> None:
    _mount(tmp_path / "sa", k8s_issuer)
    config = VerifierConfig.in_cluster(audiences="test", mount=str(tmp_path / "sa"))
    assert (config.issuer, config.ca_file, config.audiences) == (k8s_issuer.issuer, None, ("test",))
    assert config.token_file == str(tmp_path / "sa/token")


# -- hostile key sets (#14 items 6, 11) ------------------------------------------------------------------


def test_a_jwks_of_many_unusable_keys_is_refused_whole_before_parsing_any(
    k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = k8s_issuer.key.public_jwk()
    monkeypatch.setattr(k8s_issuer, "jwks", lambda: {"keys": [{}] * 300_000 + [good]})  # ~0.9 MiB of `{}`
    caplog.set_level(logging.WARNING, logger="k8s_jwt_auth")
    error = unavailable(make_source(), good["kid"])
    assert "300001 keys, more than the 100 accepted" in error.message
    assert len([r for r in caplog.records if "unusable key" in r.getMessage()]) == 0  # nothing parsed, nothing logged
    assert make_source(max_keys=300_001).get(good["kid"], "RS256").kid == good["kid"]  # a setting, when needed


def test_unusable_keys_are_reported_in_one_warning_per_document(
    k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = k8s_issuer.key.public_jwk()
    monkeypatch.setattr(k8s_issuer, "jwks", lambda: {"keys": [{"kid": f"k{i}"} for i in range(90)] + [good]})
    caplog.set_level(logging.WARNING, logger="k8s_jwt_auth")
    source = make_source()
    assert source.get(good["kid"], "RS256").kid == good["kid"]
    source.refresh()
    summaries = [r.getMessage() for r in caplog.records if "unusable key" in r.getMessage()]
    assert len(summaries) == 2  # one per fetched document, not one per key
    assert summaries[0].startswith("skipped 90 unusable key(s) of 91 in the JWKS: 'k0': ") and "; ..." in summaries[0]


@pytest.mark.anyio
async def test_a_large_document_is_parsed_off_the_event_loop(
    k8s_issuer: FakeIssuer, make_source: Callable[..., RemoteKeySource], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = k8s_issuer.key.public_jwk()
    padded = [{"kid": "pad", "kty": "oct", "k": "A" * 200_000}, good]  # ~200 KB: parsed in a worker thread
    monkeypatch.setattr(k8s_issuer, "jwks", lambda: {"keys": padded})
    caplog.set_level(logging.WARNING, logger="k8s_jwt_auth.keys")
    key = await make_source().get_async(good["kid"], "RS256")
    assert key.kid == good["kid"]
    parsed_in = {r.thread for r in caplog.records if "unusable key" in r.getMessage()}
    assert parsed_in and threading.get_ident() not in parsed_in


def _rsa_jwk_with_exponent(e: int, kid: str) -> dict[str, str]:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from k8s_jwt_auth.testing import b64url

    n = rsa.generate_private_key(65537, 4096).public_key().public_numbers().n
    as_b64 = [b64url(v.to_bytes((v.bit_length() + 7) // 8, "big")) for v in (n, e)]
    return {"kty": "RSA", "kid": kid, "n": as_b64[0], "e": as_b64[1]}


@pytest.mark.parametrize("exponent", [2**3071 + 1, 2**32 + 1, 2**32 + 15])
def test_rsa_keys_with_hostile_exponents_are_skipped(exponent: int) -> None:
    from k8s_jwt_auth.keys import KeySet

    # A 3072-bit exponent makes each signature check of a forged token cost ~16 ms of CPU.
    keys = KeySet.from_jwks({"keys": [_rsa_jwk_with_exponent(exponent, "huge"),
                                      _rsa_jwk_with_exponent(65537, "normal")]})
    assert keys.kids == ("normal",) and keys.skipped == 1
    with pytest.raises(ValueError, match="exponent"):
        VerificationKey.from_jwk(_rsa_jwk_with_exponent(exponent, "huge"))
