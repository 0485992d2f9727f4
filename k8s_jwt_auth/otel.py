"""Optional OpenTelemetry traces: `Tracing` is an observer that records spans (`pip install "k8s-jwt-auth[otel]"`).

```python
from k8s_jwt_auth import TokenVerifier, VerifierConfig
from k8s_jwt_auth.otel import Tracing

verifier = TokenVerifier(VerifierConfig.from_env(), observer=Tracing())   # the global TracerProvider
```

| span                        | for                                                    | status `ERROR` when         |
|-----------------------------|--------------------------------------------------------|-----------------------------|
| `k8s_jwt_auth.verify`       | each `verify`/`verify_async` call (cache hits too)     | outcome `unavailable`       |
| `k8s_jwt_auth.jwks_fetch`   | each key fetch of a `RemoteKeySource`                  | the fetch failed            |
| `k8s_jwt_auth.tokenreview`  | each TokenReview of a token (cached answers too)       | outcome `unavailable`       |

All spans are `INTERNAL`. Their attributes (`k8s_jwt_auth.*` unless OpenTelemetry's semantic conventions
name it): `k8s_jwt_auth.outcome` (`valid`/`invalid`/`unavailable`; `success` or the failure kind for a
fetch), `k8s_jwt_auth.reason`, `k8s_jwt_auth.cache` (`hit`/`miss`/`disabled`), and for a valid token the
workload: `k8s.namespace.name`, `k8s_jwt_auth.service_account`, `k8s.pod.name`, `k8s.pod.uid`,
`k8s.node.name`, `k8s.cluster.name` (those it has), `k8s_jwt_auth.reviewed`, `k8s_jwt_auth.stale`. A
fetch has `k8s_jwt_auth.issuer`, `url.full`, `http.response.status_code`, `k8s_jwt_auth.key_count` and
`k8s_jwt_auth.shared`; a TokenReview `k8s_jwt_auth.requested`, `k8s_jwt_auth.fallback` and `url.full`. A
failure sets `error.type` (the reason code or failure kind). A refused token is not an error of the span
(the caller sent it); keys or TokenReview that cannot be had are. Nothing about a token that did not
verify is recorded, and never the token or its fingerprint.

Each span is recorded when its operation ends, with the operation's real start and end times, in the
current context: under an instrumented framework (Starlette/FastAPI, Flask, Django...) it is a child of
the request's span. A fetch run by the background refresh has no request: its span is a root span.

Without `opentelemetry-api` installed, `Tracing` is a no-op (`enabled` is `False`): code that creates it
runs unchanged. To record metrics and traces, combine observers: `Observers(Metrics(), Tracing())`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit, urlunsplit

from ._observer import FetchEvent, Observer, Observers, ReviewEvent, VerifyEvent, VerifyOutcome

try:
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the [otel] extra is not installed: every Tracing is a no-op
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer, TracerProvider
    from opentelemetry.util.types import AttributeValue

    from .identity import WorkloadIdentity

__all__ = [
    "INSTRUMENTATION_NAME",
    "SPAN_JWKS_FETCH",
    "SPAN_TOKENREVIEW",
    "SPAN_VERIFY",
    "FetchEvent",
    "Observer",
    "Observers",
    "ReviewEvent",
    "Tracing",
    "VerifyEvent",
    "VerifyOutcome",
]

INSTRUMENTATION_NAME: Final = "k8s_jwt_auth"
"""The instrumentation scope (tracer) name of the spans."""
SPAN_VERIFY: Final = "k8s_jwt_auth.verify"
SPAN_JWKS_FETCH: Final = "k8s_jwt_auth.jwks_fetch"
SPAN_TOKENREVIEW: Final = "k8s_jwt_auth.tokenreview"

_CACHE = {True: "hit", False: "miss", None: "disabled"}

_Attributes = dict[str, "AttributeValue"]


class Tracing:
    """OpenTelemetry spans of one or more verifiers: pass it as `TokenVerifier(config, observer=tracing)`.

    Args:
        tracer_provider: where spans go; default the global provider (`opentelemetry.trace`), as set by
            the application or `opentelemetry-instrument` (also when it is set after this is built).

    Attributes:
        enabled: `False` when `opentelemetry-api` is not installed (every method then does nothing).
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self.enabled = trace is not None
        self._tracer: Tracer | None = None
        if trace is not None:
            from . import __version__

            self._tracer = trace.get_tracer(INSTRUMENTATION_NAME, __version__, tracer_provider)

    def __repr__(self) -> str:
        return f"Tracing(enabled={self.enabled})"

    def on_verify(self, outcome: VerifyOutcome, reason: str, seconds: float, cached: bool | None) -> None:
        """A verification without its workload (the verifier calls `on_verify_event` instead)."""
        self.on_verify_event(VerifyEvent(outcome=outcome, reason=reason, seconds=seconds, cached=cached))

    def on_fetch(self, outcome: str) -> None:
        """A key fetch without its duration (the key source calls `on_fetch_event` instead)."""
        self.on_fetch_event(FetchEvent(outcome=outcome, seconds=0.0))

    def on_verify_event(self, event: VerifyEvent) -> None:
        """Record a `k8s_jwt_auth.verify` span."""
        if self._tracer is None:
            return
        attributes: _Attributes = {"k8s_jwt_auth.outcome": event.outcome, "k8s_jwt_auth.reason": event.reason,
                                   "k8s_jwt_auth.cache": _CACHE[event.cached]}
        if event.identity is not None:
            _workload(attributes, event.identity)
        self._span(SPAN_VERIFY, event.seconds, attributes, event.reason if event.outcome == "unavailable" else None)

    def on_fetch_event(self, event: FetchEvent) -> None:
        """Record a `k8s_jwt_auth.jwks_fetch` span."""
        if self._tracer is None:
            return
        attributes: _Attributes = {"k8s_jwt_auth.outcome": event.outcome}
        _put(attributes, "k8s_jwt_auth.issuer", event.issuer)
        _put(attributes, "url.full", _safe_url(event.url))
        _put(attributes, "http.response.status_code", event.status)
        _put(attributes, "k8s_jwt_auth.key_count", event.keys)
        if event.outcome == "success":
            attributes["k8s_jwt_auth.shared"] = event.shared
        self._span(SPAN_JWKS_FETCH, event.seconds, attributes, event.outcome if event.outcome != "success" else None)

    def on_review_event(self, event: ReviewEvent) -> None:
        """Record a `k8s_jwt_auth.tokenreview` span."""
        if self._tracer is None:
            return
        attributes: _Attributes = {
            "k8s_jwt_auth.outcome": event.outcome, "k8s_jwt_auth.reason": event.reason,
            "k8s_jwt_auth.cache": _CACHE[event.cached], "k8s_jwt_auth.requested": event.requested,
            "k8s_jwt_auth.fallback": event.fallback}
        if event.requested:
            _put(attributes, "url.full", _safe_url(event.url))
        self._span(SPAN_TOKENREVIEW, event.seconds, attributes,
                   event.reason if event.outcome == "unavailable" else None)

    def _span(self, name: str, seconds: float, attributes: _Attributes, error: str | None) -> None:
        """A span that ends now and began `seconds` ago, in the current context."""
        assert self._tracer is not None  # every caller checked
        end = time.time_ns()
        if error is not None:
            attributes["error.type"] = error
        span = self._tracer.start_span(name, kind=SpanKind.INTERNAL, attributes=attributes,
                                       start_time=end - max(0, round(seconds * 1e9)))
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end)


def _workload(attributes: _Attributes, identity: WorkloadIdentity) -> None:
    """The verified workload's attributes (OpenTelemetry's `k8s.*` names where they exist)."""
    attributes["k8s.namespace.name"] = identity.namespace
    attributes["k8s_jwt_auth.service_account"] = identity.service_account
    _put(attributes, "k8s.pod.name", identity.pod_name)
    _put(attributes, "k8s.pod.uid", identity.pod_uid)
    _put(attributes, "k8s.node.name", identity.node_name)
    _put(attributes, "k8s.cluster.name", identity.cluster)
    attributes["k8s_jwt_auth.reviewed"] = identity.reviewed
    attributes["k8s_jwt_auth.stale"] = identity.stale


def _put(attributes: _Attributes, name: str, value: str | int | None) -> None:
    if value is not None:
        attributes[name] = value


def _safe_url(url: str | None) -> str | None:
    """The URL with any user name and password replaced by `REDACTED` (OpenTelemetry's rule for `url.full`)."""
    if url is None or "@" not in url:
        return url
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"REDACTED:REDACTED@{host}"))
    except ValueError:
        return None
