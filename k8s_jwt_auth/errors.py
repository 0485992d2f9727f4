"""The one exception hierarchy of k8s-jwt-auth.

```
AuthError                      base class; never raised itself
├── InvalidToken               401  the token is missing, malformed, forged, expired or not for us
├── PolicyDenied               403  the token is valid but the policy does not allow this workload
├── ServiceUnavailable         503  the token cannot be checked now; has retry_after (base class)
│   ├── KeySetUnavailable      503  no usable verification keys (issuer down, bad JWKS)
│   └── TokenReviewUnavailable 503  TokenReview mode: the API server could not confirm the token
└── ConfigurationError         raised at construction only; also a ValueError
    └── AlreadyInstalled       an adapter installed twice on one app; also a RuntimeError
```

Every error carries:

* `status_code` — the HTTP status an adapter answers with;
* `error` — the RFC 6750 style error code (`invalid_token`, ...) used in JSON bodies and challenges;
* `reason` — a stable snake_case machine-readable code (see `Reason`), never reworded;
* `message` — a human sentence that never contains the token;
* `claim` — the claim or header field at fault, where there is one.

Adapters catch `AuthError` and nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:
    from .identity import WorkloadIdentity

__all__ = [
    "AuthError",
    "ConfigurationError",
    "InvalidToken",
    "KeySetUnavailable",
    "AlreadyInstalled",
    "PolicyDenied",
    "Reason",
    "ServiceUnavailable",
    "TokenReviewUnavailable",
]

Reason = Literal[
    # InvalidToken (401)
    "missing_token",
    "malformed",
    "too_large",
    "disallowed_algorithm",
    "unsupported_critical_header",
    "unknown_key",
    "bad_signature",
    "bad_issuer",
    "bad_audience",
    "missing_claim",
    "expired",
    "not_yet_valid",
    "issued_in_future",
    "too_old",
    "claim_mismatch",
    "legacy_token",
    "not_pod_bound",
    "token_revoked",
    # PolicyDenied (403)
    "policy_denied",
    # ServiceUnavailable (503): KeySetUnavailable, TokenReviewUnavailable
    "keys_unavailable",
    "review_unavailable",
    # ConfigurationError
    "invalid_config",
]


class AuthError(Exception):
    """Base class of every error k8s-jwt-auth raises on purpose."""

    status_code: ClassVar[int] = 401
    error: ClassVar[str] = "invalid_token"
    default_reason: ClassVar[Reason] = "malformed"

    reason: Reason
    message: str
    claim: str | None

    def __init__(self, message: str, *, reason: Reason | None = None, claim: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason if reason is not None else self.default_reason
        self.claim = claim

    def to_dict(self) -> dict[str, str]:
        """Return the JSON body adapters and the CLI answer with: `{"error", "reason", "message"}`."""
        return {"error": self.error, "reason": self.reason, "message": self.message}

    def __repr__(self) -> str:
        claim = f", claim={self.claim!r}" if self.claim else ""
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r}{claim})"


class InvalidToken(AuthError):
    """The credentials cannot be trusted (HTTP 401). `reason` says why."""

    status_code = 401
    error = "invalid_token"
    default_reason = "malformed"


class PolicyDenied(AuthError):
    """The token is valid, but the policy does not allow this workload (HTTP 403).

    `rule` is the compact form of the rule that decided (`None` when no allow rule matched); `workload`
    is the verified identity that was denied (for audit records; `None` when not given).
    """

    status_code = 403
    error = "insufficient_scope"
    default_reason = "policy_denied"

    def __init__(self, message: str, *, rule: str | None = None, reason: Reason | None = None,
                 workload: WorkloadIdentity | None = None) -> None:
        super().__init__(message, reason=reason)
        self.rule = rule
        self.workload = workload


class ServiceUnavailable(AuthError):
    """The token cannot be checked right now (HTTP 503); retrying later may succeed.

    The base of every 503 outcome: catch it to handle them all. `retry_after` is a hint, in whole seconds, for the
    `Retry-After` header. `public_message` is what an HTTP answer says to the (unauthenticated) caller: one
    sentence per cause, never the detailed `message`, which names internal URLs and upstream answers and belongs
    in logs.
    """

    status_code = 503
    error = "temporarily_unavailable"
    default_reason: ClassVar[Reason] = "keys_unavailable"
    public_message: ClassVar[str] = "the token cannot be verified now; retry later"

    def __init__(self, message: str, *, retry_after: int = 30, reason: Reason | None = None) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = max(1, int(retry_after))


class KeySetUnavailable(ServiceUnavailable):
    """No usable verification key could be obtained from the issuer (HTTP 503, `keys_unavailable`)."""

    default_reason = "keys_unavailable"
    public_message = "the token cannot be verified now: the issuer's keys are unavailable; retry later"


class TokenReviewUnavailable(ServiceUnavailable):
    """The API server could not confirm the token with a TokenReview (HTTP 503, `review_unavailable`).

    Raised only in TokenReview mode when the API server cannot be reached or answers with an error, and the
    verifier is not configured to fall back to local verification (`tokenreview_fallback`). Not a
    `KeySetUnavailable`: the issuer's keys may be fine; catch `ServiceUnavailable` for both.
    """

    default_reason = "review_unavailable"
    public_message = "the token cannot be verified now: the Kubernetes API server could not review it; retry later"


class ConfigurationError(AuthError, ValueError):
    """The configuration is invalid. Raised at construction only, never while verifying.

    `setting` is the setting suffix at fault (`"JWKS_URI"`, `"AUDIENCES"`...) when there is one, so that
    each framework can name its own key (`K8S_JWT_AUTH_JWKS_URI`, `K8S_JWT_AUTH["JWKS_URI"]`).
    """

    status_code = 500
    error = "configuration_error"
    default_reason = "invalid_config"

    def __init__(self, message: str, *, setting: str | None = None, reason: Reason | None = None) -> None:
        super().__init__(message, reason=reason)
        self.setting = setting


class AlreadyInstalled(ConfigurationError, RuntimeError):
    """An adapter was installed twice on the same app (two middlewares, `init_app` or `install` twice).

    The same error in every framework; also a `RuntimeError`. Two gates on one request would verify twice and
    write two audit records per decision, and the second's options would silently shadow the first's.
    """

    def __init__(self, where: str, fix: str) -> None:
        super().__init__(f"k8s_jwt_auth is installed twice on {where}: {fix}")


for _cls in (AuthError, InvalidToken, PolicyDenied, ServiceUnavailable, KeySetUnavailable, TokenReviewUnavailable,
             ConfigurationError, AlreadyInstalled):
    _cls.__module__ = "k8s_jwt_auth"
