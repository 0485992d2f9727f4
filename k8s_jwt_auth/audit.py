"""Audit log: one structured record per authentication decision, on the `k8s_jwt_auth.audit` logger.

Every adapter (Starlette, FastAPI, Flask, Django, DRF) calls `audit_allowed` or `audit_refused` once per
decision. The record rides on the log record as `extra={"k8s_jwt_auth": record.as_dict()}`, so any JSON
formatter can ship it; `JsonFormatter` renders it as one JSON line:

```python
import logging
from k8s_jwt_auth.audit import AUDIT_LOGGER, JsonFormatter

handler = logging.StreamHandler()
handler.setFormatter(JsonFormatter())
AUDIT_LOGGER.addHandler(handler)
AUDIT_LOGGER.setLevel(logging.INFO)
```

Decisions and their default levels (see `configure_audit`):

| decision         | when                                             | status | level   |
|------------------|--------------------------------------------------|--------|---------|
| `allowed`        | the token verified and the policy allows         | `None` | INFO    |
| `dry_run_denied` | a dry-run policy would deny; the request goes on | `None` | WARNING |
| `denied_policy`  | the token verified, the policy denies            | 403    | WARNING |
| `rejected_token` | missing, malformed or invalid token              | 401    | WARNING |
| `unavailable`    | keys (or the TokenReview API) unavailable        | 503    | ERROR   |

A record never holds the token, a token segment, the header or the claims: only the 16-hex-digit SHA-256
fingerprint of the token (`fingerprint(token)`, the one to use in your own logs too), and identity fields
once the token is verified. The record is built only when the audit logger is enabled for the decision's level.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ._jws import fingerprint
from .errors import AuthError, PolicyDenied, ServiceUnavailable
from .identity import WorkloadIdentity
from .policy import Decision

__all__ = [
    "AUDIT_LOGGER",
    "AuditDecision",
    "AuditRecord",
    "JsonFormatter",
    "audit_allowed",
    "audit_refused",
    "configure_audit",
    "emit",
    "fingerprint",
    "printable",
]

AUDIT_LOGGER = logging.getLogger("k8s_jwt_auth.audit")
"""The logger every audit record goes to."""

EXTRA_KEY = "k8s_jwt_auth"
"""The `LogRecord` attribute holding `AuditRecord.as_dict()`."""

AuditDecision = Literal["allowed", "dry_run_denied", "denied_policy", "rejected_token", "unavailable"]

_levels: dict[AuditDecision, int] = {
    "allowed": logging.INFO,
    "dry_run_denied": logging.WARNING,
    "denied_policy": logging.WARNING,
    "rejected_token": logging.WARNING,
    "unavailable": logging.ERROR,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """One authentication decision. Identity fields are `None` until the token is verified.

    Attributes:
        decision: `allowed`, `dry_run_denied`, `denied_policy`, `rejected_token` or `unavailable`.
        reason: `ok` when allowed, else the error's reason code (`expired`, `policy_denied`...).
        status: the HTTP status the request was refused with (`None` when it went on).
        issuer, namespace, service_account, pod, jti: from the verified token.
        cluster: the identity's cluster name (multi-cluster verifiers, or the `CLUSTER` setting).
        reviewed: whether the API server confirmed the token (TokenReview mode); `None` before verification.
        stale: the verified token is past its `kubernetes.io.warnafter` (an old client not re-reading its
            projected token file); `None` before verification.
        token_fingerprint: the first 16 hex digits of the token's SHA-256 (`None` without a token).
        rule: the policy rule that decided, in compact form.
        path, method: the request, when the adapter knows them.
        transport: `http` or `websocket`.
    """

    decision: AuditDecision
    reason: str
    status: int | None = None
    issuer: str | None = None
    namespace: str | None = None
    service_account: str | None = None
    pod: str | None = None
    jti: str | None = None
    cluster: str | None = None
    reviewed: bool | None = None
    stale: bool | None = None
    token_fingerprint: str | None = None
    rule: str | None = None
    path: str | None = None
    method: str | None = None
    transport: str = "http"

    def as_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (every field, `None` included)."""
        return asdict(self)

    @property
    def message(self) -> str:
        """A one-line human summary: `denied_policy 403 policy_denied GET /charge payments/api (token …)`.

        Request-derived fields are passed through `printable`, so a path such as `/whoami%0d%0a...` cannot
        start a forged line in a plain-text log.
        """
        who = f"{self.namespace}/{self.service_account}" if self.namespace is not None else "-"
        where = f"{printable(self.method or '-')} {printable(self.path or '-')}"
        status = self.status if self.status is not None else "-"
        return f"{self.decision} {status} {self.reason} {where} {who} (token {self.token_fingerprint or '-'})"


def printable(text: str, limit: int = 512) -> str:
    """`text` safe for one line of a plain-text log: control characters, line and paragraph separators and other
    non-printable characters are escaped (`\\r`, `\\n`, `\\u2028`), and it is cut to `limit` characters.

    Use it for every request-derived value (path, method, header-derived text) put into a log message.
    """
    if len(text) <= limit and text.isprintable():
        return text
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


def configure_audit(*, allowed: int | None = None, denied: int | None = None,
                    unavailable: int | None = None) -> None:
    """Set the logging levels of audit records (process-wide, like the logging module itself).

    Args:
        allowed: the level of `allowed` records (default INFO; DEBUG keeps them out of INFO logs).
        denied: the level of `dry_run_denied`, `denied_policy` and `rejected_token` records (default WARNING).
        unavailable: the level of `unavailable` records (default ERROR).
    """
    if allowed is not None:
        _levels["allowed"] = allowed
    if denied is not None:
        kind: AuditDecision
        for kind in ("dry_run_denied", "denied_policy", "rejected_token"):
            _levels[kind] = denied
    if unavailable is not None:
        _levels["unavailable"] = unavailable


def emit(record: AuditRecord) -> None:
    """Log `record` on `AUDIT_LOGGER` at its decision's level, as `extra={"k8s_jwt_auth": record.as_dict()}`."""
    AUDIT_LOGGER.log(_levels[record.decision], "%s", record.message, extra={EXTRA_KEY: record.as_dict()})


def audit_allowed(workload: WorkloadIdentity, decision: Decision | None = None, *, path: str | None = None,
                  method: str | None = None, transport: str = "http") -> None:
    """Record that `workload` was let through (`dry_run_denied` when a dry-run policy would have denied it)."""
    kind: AuditDecision = "dry_run_denied" if decision is not None and not decision.allowed else "allowed"
    if not AUDIT_LOGGER.isEnabledFor(_levels[kind]):
        return
    rule = str(decision.rule) if decision is not None and decision.rule is not None else None
    emit(AuditRecord(decision=kind, reason="ok" if kind == "allowed" else "policy_denied",
                     rule=rule, path=path, method=method, transport=transport, **_identity_fields(workload)))


def audit_refused(exc: AuthError, *, token: str | None = None, path: str | None = None, method: str | None = None,
                  transport: str = "http") -> None:
    """Record that a request was refused with `exc`; `token` only feeds the fingerprint."""
    kind = _refusal(exc)
    if not AUDIT_LOGGER.isEnabledFor(_levels[kind]):
        return
    workload = exc.workload if isinstance(exc, PolicyDenied) else None
    fields = _identity_fields(workload) if workload is not None else {
        "token_fingerprint": fingerprint(token) if token else None}
    emit(AuditRecord(decision=kind, reason=exc.reason, status=exc.status_code,
                     rule=exc.rule if isinstance(exc, PolicyDenied) else None,
                     path=path, method=method, transport=transport, **fields))


def _refusal(exc: AuthError) -> AuditDecision:
    if isinstance(exc, PolicyDenied):
        return "denied_policy"
    if isinstance(exc, ServiceUnavailable):
        return "unavailable"
    return "rejected_token"


def _identity_fields(workload: WorkloadIdentity) -> dict[str, Any]:
    return {"issuer": workload.issuer, "namespace": workload.namespace,
            "service_account": workload.service_account, "pod": workload.pod_name, "jti": workload.token_id,
            "cluster": workload.cluster, "reviewed": workload.reviewed, "stale": workload.stale,
            "token_fingerprint": workload.token_fingerprint or None}


class JsonFormatter(logging.Formatter):
    """Render a log record as one JSON line: `time`, `level`, `logger`, `message`, plus the audit fields.

    Records without audit data (other loggers) get the first four keys only, so one handler can serve all
    `k8s_jwt_auth` loggers.
    """

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object, no newlines inside."""
        data: dict[str, Any] = {
            "time": self.formatTime(record, self.datefmt),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        audit = getattr(record, EXTRA_KEY, None)
        if isinstance(audit, dict):
            data.update(audit)
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(data, separators=(",", ":"), default=str)
