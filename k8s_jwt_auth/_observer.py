"""The observer hook of `TokenVerifier` and `RemoteKeySource`, for metrics (see `k8s_jwt_auth.metrics`).

An observer is told about every verification (`on_verify`) and every key fetch (`on_fetch`). With no
observer (the default) the verifier skips the timing entirely. Observers must be thread-safe, must not
block and must not raise: they run inline on the request path.
"""

from __future__ import annotations

from time import perf_counter
from types import TracebackType
from typing import Literal, Protocol

from .errors import AuthError, ServiceUnavailable

__all__ = ["Observer", "VerifyOutcome"]

VerifyOutcome = Literal["valid", "invalid", "unavailable"]


class Observer(Protocol):
    """Receives verification and key-fetch events (`k8s_jwt_auth.metrics.Metrics` is one)."""

    def on_verify(self, outcome: VerifyOutcome, reason: str, seconds: float, cached: bool | None) -> None:
        """One `verify`/`verify_async` call ended.

        Args:
            outcome: `valid`, `invalid` (`InvalidToken`) or `unavailable` (`ServiceUnavailable`).
            reason: `ok`, or the error's reason code (`expired`, `unknown_key`, `keys_unavailable`...).
            seconds: how long the call took (key fetches it waited for included).
            cached: `True` when answered from the verified-token cache, `False` on a miss, `None` when the
                cache is disabled.
        """

    def on_fetch(self, outcome: str) -> None:
        """One key fetch of a `RemoteKeySource` ended: `success`, or the failure kind (`timeout`, `tls`...)."""


class Observation:
    """Times one verification and reports it to an observer when the `with` block ends."""

    __slots__ = ("cached", "observer", "start")

    def __init__(self, observer: Observer, cache_enabled: bool) -> None:
        self.observer = observer
        self.cached: bool | None = False if cache_enabled else None
        self.start = perf_counter()

    def __enter__(self) -> Observation:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        seconds = perf_counter() - self.start
        if exc is None:
            self.observer.on_verify("valid", "ok", seconds, self.cached)
        elif isinstance(exc, AuthError):  # anything else (a bug, a cancellation) is not a verification outcome
            outcome: VerifyOutcome = "unavailable" if isinstance(exc, ServiceUnavailable) else "invalid"
            self.observer.on_verify(outcome, exc.reason, seconds, self.cached)


class Unobserved:
    """The `with` target when there is no observer: does nothing. `cached` is written, never read."""

    __slots__ = ("cached",)
    cached: bool | None

    def __enter__(self) -> Unobserved:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None


UNOBSERVED = Unobserved()
