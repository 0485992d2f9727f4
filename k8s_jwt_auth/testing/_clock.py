"""A manual clock for tests: time moves only when the test moves it, so nothing sleeps."""

from __future__ import annotations

import math
import threading

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that stands still until the test moves it. Thread-safe.

    Calling it returns the current time in seconds, so it fits every `clock=` and `timer=` of the library: the
    `Clock` of `TokenVerifier` and `MultiClusterVerifier`, `TokenReviewer`'s `clock`, `RemoteKeySource`'s
    monotonic `clock` and `wall_clock`, `RedisCache`'s `clock` and `timer`, and `FakeIssuer.clock`. Give the same
    clock to the verifier and the issuer, and tokens are minted and checked at the same moment.

    ```python
    from k8s_jwt_auth.testing import FakeClock, FakeIssuer

    clock = FakeClock()
    with FakeIssuer(clock=clock) as issuer:
        config = VerifierConfig(issuer=issuer.issuer, audiences=["test"], jwks=issuer.jwks())
        verifier = TokenVerifier(config, clock=clock)
        token = issuer.mint(lifetime=600)         # iat is clock(), exp 600 s later
        verifier.verify(token)
        clock.advance(600 + 61)                   # past exp and the 60 s leeway
        verifier.verify(token)                    # raises InvalidToken(reason="expired")
    ```

    Time never goes backwards: `advance()` takes a finite, non-negative number of seconds and `set()` a time not
    before the current one, so a clock standing in for `time.monotonic` behaves like one.

    Args:
        start: the initial time in seconds: Unix seconds for a wall clock (the default is
            2023-11-14T22:13:20Z), or any origin for a monotonic one.

    Raises:
        ValueError: `start` is not a finite number.
    """

    DEFAULT_START = 1_700_000_000.0

    def __init__(self, start: float = DEFAULT_START) -> None:
        self._now = _finite(start, "start")
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """The current time in seconds."""
        with self._lock:
            return self._now

    @property
    def now(self) -> float:
        """The current time in seconds (what calling the clock returns)."""
        return self()

    def advance(self, seconds: float) -> float:
        """Move the clock forward.

        Args:
            seconds: how far, a finite number of seconds, `0` or more.

        Returns:
            The new time.

        Raises:
            ValueError: `seconds` is negative, NaN or infinite.
        """
        step = _finite(seconds, "seconds")
        if step < 0:
            raise ValueError(f"a FakeClock only moves forward: advance({seconds!r})")
        with self._lock:
            self._now += step
            return self._now

    def set(self, t: float) -> float:
        """Move the clock forward to the time `t`.

        Args:
            t: the new time: finite, and not before the current time.

        Returns:
            The new time.

        Raises:
            ValueError: `t` is NaN, infinite, or before the current time.
        """
        target = _finite(t, "t")
        with self._lock:
            if target < self._now:
                raise ValueError(f"a FakeClock only moves forward: set({t!r}) is before {self._now!r}")
            self._now = target
            return self._now

    def __repr__(self) -> str:
        return f"FakeClock({self()!r})"


def _finite(value: float, name: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number of seconds, not {value!r}")
    return number
