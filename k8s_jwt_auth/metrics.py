"""Optional Prometheus metrics: `Metrics` is an observer for `TokenVerifier` (`pip install "k8s-jwt-auth[prometheus]"`).

```python
from prometheus_client import CollectorRegistry
from k8s_jwt_auth import TokenVerifier, VerifierConfig
from k8s_jwt_auth.metrics import Metrics

verifier = TokenVerifier(VerifierConfig.from_env(), observer=Metrics())   # prometheus_client.REGISTRY
```

| metric                                         | type      | labels              |
|------------------------------------------------|-----------|---------------------|
| `k8s_jwt_auth_verifications_total`             | counter   | `outcome`, `reason` |
| `k8s_jwt_auth_verification_seconds`            | histogram | `cache`             |
| `k8s_jwt_auth_token_cache_requests_total`      | counter   | `result`            |
| `k8s_jwt_auth_jwks_fetches_total`              | counter   | `outcome`           |
| `k8s_jwt_auth_jwks_last_refresh_age_seconds`   | gauge     |                     |

`outcome` is `valid`, `invalid` or `unavailable`; `reason` is `ok` or an error reason code; `cache` is
`hit`, `miss` or `disabled`; `result` is `hit` or `miss`; a fetch `outcome` is `success` or the failure
kind (`timeout`, `tls`, `connect`, `not_found`...). The gauge is the seconds since the last successful
key fetch seen by this `Metrics` (NaN before the first one, and with static keys).

Without `prometheus_client` installed, `Metrics` is a no-op (`enabled` is `False`): code that creates it
runs unchanged. Metrics objects register into the `registry` given (default `prometheus_client.REGISTRY`),
so tests pass a fresh `CollectorRegistry` each. Use one `Metrics` per registry (names would clash).

For metrics and OpenTelemetry traces together, combine the observers:
`TokenVerifier(config, observer=Observers(Metrics(), Tracing()))` (`Observers` is re-exported here and in
`k8s_jwt_auth.otel`, where `Tracing` lives). `Metrics` takes the two base observer methods only: it does
not count TokenReview calls (their outcomes are in `k8s_jwt_auth_verifications_total` as `reason`
`token_revoked`, `review_unavailable`...; `TokenReviewer.cache_info()` counts the requests sent).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._observer import Observer, Observers, VerifyOutcome

try:
    import prometheus_client
except ImportError:  # the [prometheus] extra is not installed: every Metrics is a no-op
    prometheus_client = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["DEFAULT_BUCKETS", "Metrics", "Observer", "Observers", "VerifyOutcome"]

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0,
)
"""Latency buckets in seconds: a cache hit takes microseconds, a signature check ~0.1 ms, a fetch up to 5 s."""

_CACHE = {True: "hit", False: "miss", None: "disabled"}


class Metrics:
    """Prometheus metrics of one or more verifiers: pass it as `TokenVerifier(config, observer=metrics)`.

    Args:
        registry: where the metrics are registered; default `prometheus_client.REGISTRY`.
        namespace: the metric name prefix.
        buckets: the latency histogram buckets, in seconds.

    Attributes:
        enabled: `False` when `prometheus_client` is not installed (every method then does nothing).
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, namespace: str = "k8s_jwt_auth",
                 buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self.enabled = prometheus_client is not None
        self._last_success = math.nan  # time.monotonic() of the last successful fetch
        self._children: dict[tuple[str, str, str], Any] = {}  # (outcome, reason, cache) -> (counter, histogram)
        if prometheus_client is None:
            return
        target = registry if registry is not None else prometheus_client.REGISTRY
        self.verifications = prometheus_client.Counter(
            f"{namespace}_verifications", "Token verifications by outcome and reason.", ["outcome", "reason"],
            registry=target)
        self.latency = prometheus_client.Histogram(
            f"{namespace}_verification_seconds", "Time to verify a token, by cache use.", ["cache"],
            buckets=tuple(buckets), registry=target)
        self.cache_requests = prometheus_client.Counter(
            f"{namespace}_token_cache_requests", "Verified-token cache lookups by result.", ["result"],
            registry=target)
        self.fetches = prometheus_client.Counter(
            f"{namespace}_jwks_fetches", "Key set (JWKS) fetches by outcome.", ["outcome"], registry=target)
        self.refresh_age = prometheus_client.Gauge(
            f"{namespace}_jwks_last_refresh_age_seconds", "Seconds since the last successful key fetch.",
            registry=target)
        self.refresh_age.set_function(self.last_refresh_age)

    def __repr__(self) -> str:
        return f"Metrics(enabled={self.enabled})"

    def on_verify(self, outcome: VerifyOutcome, reason: str, seconds: float, cached: bool | None) -> None:
        """Count the verification and observe its latency."""
        if not self.enabled:
            return
        cache = _CACHE[cached]
        children = self._children.get((outcome, reason, cache))
        if children is None:  # label lookups take a lock: resolve each combination once (a bounded set)
            children = self._children.setdefault((outcome, reason, cache), (
                self.verifications.labels(outcome, reason), self.latency.labels(cache),
                self.cache_requests.labels(cache) if cached is not None else None))
        children[0].inc()
        children[1].observe(seconds)
        if children[2] is not None:
            children[2].inc()

    def on_fetch(self, outcome: str) -> None:
        """Count a key fetch; a success resets the refresh age."""
        if outcome == "success":
            self._last_success = time.monotonic()
        if self.enabled:
            self.fetches.labels(outcome).inc()

    def last_refresh_age(self) -> float:
        """Seconds since the last successful key fetch (NaN before the first)."""
        return time.monotonic() - self._last_success
