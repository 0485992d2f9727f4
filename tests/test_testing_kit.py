"""The testing kit's `FakeClock`: it moves only forward, only when told, from any thread, and drives real expiry."""

from __future__ import annotations

import math
import threading

import pytest

from k8s_jwt_auth import InvalidToken, TokenVerifier, VerifierConfig
from k8s_jwt_auth.testing import FakeClock, FakeIssuer
from k8s_jwt_auth.verifier import Clock

from .conftest import NOW


def test_it_stands_still_until_advanced() -> None:
    clock = FakeClock(NOW)
    assert clock() == clock() == clock.now == NOW
    assert clock.advance(1.5) == NOW + 1.5
    assert clock() == clock.now == NOW + 1.5
    assert clock.advance(0) == NOW + 1.5
    assert clock.advance(2) == NOW + 3.5  # an int is a number of seconds too
    assert isinstance(clock(), float)


def test_the_default_start_is_a_fixed_epoch() -> None:
    assert FakeClock()() == FakeClock()() == FakeClock.DEFAULT_START == 1_700_000_000.0


def test_set_moves_to_a_time_not_before_now() -> None:
    clock = FakeClock(100.0)
    assert clock.set(250) == 250.0
    assert clock.set(250.0) == clock() == 250.0  # standing still is allowed
    with pytest.raises(ValueError, match="only moves forward"):
        clock.set(249.9)
    assert clock() == 250.0


@pytest.mark.parametrize("seconds", [-1.0, -1e-9, math.nan, math.inf, -math.inf])
def test_advance_refuses_going_back_nan_and_infinity(seconds: float) -> None:
    clock = FakeClock(NOW)
    with pytest.raises(ValueError):
        clock.advance(seconds)
    assert clock() == NOW


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_set_and_start_refuse_nan_and_infinity(bad: float) -> None:
    clock = FakeClock(NOW)
    with pytest.raises(ValueError, match="finite"):
        clock.set(bad)
    assert clock() == NOW
    with pytest.raises(ValueError, match="finite"):
        FakeClock(bad)


def test_repr_shows_the_time_and_evaluates_back() -> None:
    clock = FakeClock(NOW)
    clock.advance(0.25)
    assert repr(clock) == "FakeClock(1800000000.25)"
    assert eval(repr(clock), {"FakeClock": FakeClock})() == clock()  # noqa: S307


def test_now_is_read_only() -> None:
    clock = FakeClock(NOW)
    with pytest.raises(AttributeError):
        clock.now = NOW + 1  # type: ignore[misc]


def test_concurrent_advances_are_never_lost() -> None:
    clock = FakeClock(0.0)
    threads, steps = 8, 2_000
    seen: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def work(index: int) -> None:
        start.wait(timeout=10)
        for _ in range(steps):
            seen[index].append(clock.advance(1.0))
            clock()

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert not any(worker.is_alive() for worker in workers)
    assert clock() == threads * steps  # whole seconds: exact in floating point
    returned = sorted(t for values in seen for t in values)
    assert returned == [float(n) for n in range(1, threads * steps + 1)]  # every advance saw its own new time
    assert all(values == sorted(values) for values in seen)  # each thread only ever saw time move forward


def test_it_is_a_clock_for_the_verifier() -> None:
    clock: Clock = FakeClock(NOW)  # the library's Clock protocol (mypy checks this line's annotation)
    assert clock() == NOW


def test_it_drives_a_real_verifier_past_expiry(k8s_issuer: FakeIssuer) -> None:
    clock = FakeClock(NOW)
    k8s_issuer.clock = clock  # mint() takes iat/nbf/exp from it; the fixture's reset() removes it
    config = VerifierConfig(issuer=k8s_issuer.issuer, audiences=["test"], jwks=k8s_issuer.jwks(), token_cache_size=0)
    verifier = TokenVerifier(config, clock=clock)
    token = k8s_issuer.mint("payments", "worker", lifetime=600)
    assert verifier.verify(token).namespace == "payments"
    clock.advance(600 + 60)  # at exp + the 60 s leeway: still valid
    assert verifier.verify(token).service_account == "worker"
    clock.advance(1)
    with pytest.raises(InvalidToken) as info:
        verifier.verify(token)
    assert info.value.reason == "expired"


def test_the_verified_token_cache_follows_it_too(k8s_issuer: FakeIssuer) -> None:
    clock = FakeClock(NOW)
    k8s_issuer.clock = clock
    config = VerifierConfig(issuer=k8s_issuer.issuer, audiences=["test"], jwks=k8s_issuer.jwks())
    verifier = TokenVerifier(config, clock=clock)
    token = k8s_issuer.mint(lifetime=600)
    assert verifier.verify(token) is verifier.verify(token)  # a cache hit
    clock.advance(600 + 61)
    with pytest.raises(InvalidToken) as info:
        verifier.verify(token)
    assert info.value.reason == "expired"
