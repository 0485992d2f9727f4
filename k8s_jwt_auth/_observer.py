"""The observer hook of `TokenVerifier`, `RemoteKeySource` and `TokenReviewer`, for metrics and traces.

Every observer implements the two methods of `Observer`:

* `on_verify(outcome, reason, seconds, cached)`: a `verify`/`verify_async` call ended;
* `on_fetch(outcome)`: a key fetch ended (`success` or the failure kind).

That is all `k8s_jwt_auth.metrics.Metrics` needs. An observer that wants more (the verified workload, the
URL and duration of a fetch, TokenReview calls) also defines one or more of these optional methods, which
take one event object each:

| optional method                   | called                                       | event         |
|-----------------------------------|----------------------------------------------|---------------|
| `on_verify_event(event)`          | instead of `on_verify`                        | `VerifyEvent` |
| `on_fetch_event(event)`           | instead of `on_fetch`                         | `FetchEvent`  |
| `on_review_event(event)`          | for each `TokenReviewer.review` call          | `ReviewEvent` |

They are looked up once per observer object (the first time it is used; define them on the class), so
an observer written for the two base methods keeps working unchanged and is never handed an event.
`k8s_jwt_auth.otel.Tracing` uses all three. `Observers(a, b, ...)` combines observers: each one is told
about everything in the form it takes.

With no observer (the default) nothing is timed and no event is built. Observers must be thread-safe,
must not block and must not raise: they run inline on the request path (a key fetch may also be
reported from the background thread that refreshes keys ahead of their expiry).
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol

from .errors import AuthError, ServiceUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable

    from .identity import WorkloadIdentity

__all__ = ["FetchEvent", "Observer", "Observers", "ReviewEvent", "VerifyEvent", "VerifyOutcome"]

VerifyOutcome = Literal["valid", "invalid", "unavailable"]


class Observer(Protocol):
    """Receives verification and key-fetch events (`k8s_jwt_auth.metrics.Metrics` is one).

    The optional methods `on_verify_event`, `on_fetch_event` and `on_review_event` are described in the
    module `k8s_jwt_auth._observer` (and in the OpenTelemetry page of the docs).
    """

    def on_verify(self, outcome: VerifyOutcome, reason: str, seconds: float, cached: bool | None) -> None:
        """One `verify`/`verify_async` call ended.

        Args:
            outcome: `valid`, `invalid` (`InvalidToken`) or `unavailable` (`ServiceUnavailable`).
            reason: `ok`, or the error's reason code (`expired`, `unknown_key`, `keys_unavailable`...).
            seconds: how long the call took (key fetches and TokenReview it waited for included).
            cached: `True` when answered from the verified-token cache, `False` on a miss, `None` when the
                cache is disabled.
        """

    def on_fetch(self, outcome: str) -> None:
        """One key fetch of a `RemoteKeySource` ended: `success`, or the failure kind (`timeout`, `tls`...)."""


# -- events ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyEvent:
    """One `verify`/`verify_async` call ended (handed to `on_verify_event`).

    Attributes:
        outcome: `valid`, `invalid` (`InvalidToken`) or `unavailable` (`ServiceUnavailable`).
        reason: `ok`, or the error's reason code.
        seconds: how long the call took (key fetches and TokenReview it waited for included).
        cached: `True` when answered from the verified-token cache, `False` on a miss, `None` when the
            cache is disabled.
        identity: the verified workload when `outcome` is `valid` (after TokenReview, if configured),
            else `None`: nothing read from a token that did not verify is passed on.
    """

    outcome: VerifyOutcome
    reason: str
    seconds: float
    cached: bool | None
    identity: WorkloadIdentity | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchEvent:
    """One key fetch of a `RemoteKeySource` ended (handed to `on_fetch_event`).

    Attributes:
        outcome: `success`, or the failure kind (`timeout`, `tls`, `connect`, `http_status`...).
        seconds: how long the fetch took (discovery and JWKS document together).
        issuer: the issuer whose keys were fetched.
        url: the JWKS URL after a success; the URL that failed otherwise (`None` if none was reached).
        status: the HTTP status of a failed fetch that got an answer, else `None`.
        keys: how many keys the fetched key set holds (`None` after a failure).
        shared: the key set was taken from the shared store (another process fetched it).
    """

    outcome: str
    seconds: float
    issuer: str | None = None
    url: str | None = None
    status: int | None = None
    keys: int | None = None
    shared: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ReviewEvent:
    """One `TokenReviewer.review`/`review_async` call ended (handed to `on_review_event`).

    Attributes:
        outcome: `valid` (the API server confirmed the token), `invalid` (it refused it: `token_revoked`,
            `expired`, `bad_audience`, `claim_mismatch`) or `unavailable` (no usable answer).
        reason: `ok`, or the reason code (`review_unavailable` when unavailable, also with a fallback).
        seconds: how long the call took.
        cached: `True` when answered from the reviewer's cache, the shared store or a concurrent review of
            the same token; `False` otherwise; `None` when answers are not cached (`cache_ttl=0`).
        requested: a TokenReview request was sent to the API server for this call.
        fallback: there was no usable answer and the locally verified identity was returned
            (`fallback_to_local`); `outcome` is then `unavailable`.
        url: the TokenReview URL of the API server.
    """

    outcome: VerifyOutcome
    reason: str
    seconds: float
    cached: bool | None
    requested: bool = False
    fallback: bool = False
    url: str | None = None


# -- the hooks of one observer -----------------------------------------------------------------------


class Hooks:
    """An observer's optional event methods, looked up once (`None` when it lacks one)."""

    __slots__ = ("fetch_event", "observer", "review_event", "verify_event")

    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self.verify_event: Callable[[VerifyEvent], None] | None = getattr(observer, "on_verify_event", None)
        self.fetch_event: Callable[[FetchEvent], None] | None = getattr(observer, "on_fetch_event", None)
        self.review_event: Callable[[ReviewEvent], None] | None = getattr(observer, "on_review_event", None)

    @staticmethod
    def of(observer: Observer, known: Hooks | None) -> Hooks:
        """`known` when it was looked up on this very observer, else the observer's hooks."""
        return known if known is not None and known.observer is observer else Hooks(observer)

    def verify(self, event: VerifyEvent) -> None:
        """Hand a verification to the observer, as an event or as `on_verify`."""
        if self.verify_event is not None:
            self.verify_event(event)
        else:
            self.observer.on_verify(event.outcome, event.reason, event.seconds, event.cached)

    def fetch(self, event: FetchEvent) -> None:
        """Hand a key fetch to the observer, as an event or as `on_fetch`."""
        if self.fetch_event is not None:
            self.fetch_event(event)
        else:
            self.observer.on_fetch(event.outcome)

    def review(self, event: ReviewEvent) -> None:
        """Hand a TokenReview call to the observer if it takes them."""
        if self.review_event is not None:
            self.review_event(event)


class Observers:
    """Several observers as one, e.g. Prometheus metrics and OpenTelemetry traces.

    ```python
    from k8s_jwt_auth.metrics import Metrics
    from k8s_jwt_auth.otel import Observers, Tracing

    verifier = TokenVerifier(config, observer=Observers(Metrics(), Tracing()))
    ```

    Every verification, key fetch and TokenReview call is handed to each observer in the order given, in
    the form it takes: its optional event methods when it has them, else `on_verify`/`on_fetch` (an
    observer without `on_review_event` is not told about TokenReview calls). Nested `Observers` are
    flattened.

    Args:
        *observers: the observers.

    Attributes:
        observers: the observers, in order.
    """

    def __init__(self, *observers: Observer) -> None:
        flat: list[Observer] = []
        for observer in observers:
            flat.extend(observer.observers if isinstance(observer, Observers) else (observer,))
        self.observers: tuple[Observer, ...] = tuple(flat)
        self._hooks = tuple(Hooks(observer) for observer in self.observers)

    def __repr__(self) -> str:
        return f"Observers({', '.join(map(repr, self.observers))})"

    def on_verify(self, outcome: VerifyOutcome, reason: str, seconds: float, cached: bool | None) -> None:
        """Call every observer's `on_verify`."""
        for observer in self.observers:
            observer.on_verify(outcome, reason, seconds, cached)

    def on_fetch(self, outcome: str) -> None:
        """Call every observer's `on_fetch`."""
        for observer in self.observers:
            observer.on_fetch(outcome)

    def on_verify_event(self, event: VerifyEvent) -> None:
        """Hand the verification to every observer (`on_verify_event`, else `on_verify`)."""
        for hooks in self._hooks:
            hooks.verify(event)

    def on_fetch_event(self, event: FetchEvent) -> None:
        """Hand the key fetch to every observer (`on_fetch_event`, else `on_fetch`)."""
        for hooks in self._hooks:
            hooks.fetch(event)

    def on_review_event(self, event: ReviewEvent) -> None:
        """Hand the TokenReview call to every observer that has `on_review_event`."""
        for hooks in self._hooks:
            hooks.review(event)


# -- timing one call ---------------------------------------------------------------------------------


def _outcome(exc: BaseException) -> VerifyOutcome:
    return "unavailable" if isinstance(exc, ServiceUnavailable) else "invalid"


class Observation:
    """Times one verification and reports it to an observer when the `with` block ends.

    The block sets `cached` (answered from the cache) and `identity` (what it returns).
    """

    __slots__ = ("cached", "hooks", "identity", "start")

    def __init__(self, hooks: Hooks, cache_enabled: bool) -> None:
        self.hooks = hooks
        self.cached: bool | None = False if cache_enabled else None
        self.identity: WorkloadIdentity | None = None
        self.start = perf_counter()

    def __enter__(self) -> Observation:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        seconds = perf_counter() - self.start
        if exc is None:
            outcome: VerifyOutcome = "valid"
            reason = "ok"
        elif isinstance(exc, AuthError):  # anything else (a bug, a cancellation) is not a verification outcome
            outcome, reason = _outcome(exc), exc.reason
        else:
            return
        hooks = self.hooks
        if hooks.verify_event is None:  # no event to build for an observer that would not take it
            hooks.observer.on_verify(outcome, reason, seconds, self.cached)
        else:
            hooks.verify_event(VerifyEvent(outcome=outcome, reason=reason, seconds=seconds, cached=self.cached,
                                           identity=self.identity if exc is None else None))


class ReviewObservation:
    """Times one TokenReview call and reports it to `on_review_event` when the `with` block ends.

    The block sets `cached` (answered without asking), `requested` (a request was sent) and `fallback`
    (no usable answer; the local identity was returned).
    """

    __slots__ = ("cached", "fallback", "report", "requested", "start", "url")

    def __init__(self, report: Callable[[ReviewEvent], None], cache_enabled: bool, url: str) -> None:
        self.report = report
        self.url = url
        self.cached: bool | None = False if cache_enabled else None
        self.requested = self.fallback = False
        self.start = perf_counter()

    def __enter__(self) -> ReviewObservation:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        seconds = perf_counter() - self.start
        if exc is None:
            outcome: VerifyOutcome = "unavailable" if self.fallback else "valid"
            reason = "review_unavailable" if self.fallback else "ok"
        elif isinstance(exc, AuthError):
            outcome, reason = _outcome(exc), exc.reason
        else:
            return
        self.report(ReviewEvent(outcome=outcome, reason=reason, seconds=seconds, cached=self.cached,
                                requested=self.requested, fallback=self.fallback, url=self.url))


class Unobserved:
    """The `with` target when there is no observer: does nothing. Its fields are written, never read."""

    __slots__ = ("cached", "fallback", "identity", "requested")
    cached: bool | None
    identity: WorkloadIdentity | None
    requested: bool
    fallback: bool

    def __enter__(self) -> Unobserved:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None


UNOBSERVED = Unobserved()
