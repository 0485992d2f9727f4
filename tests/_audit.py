"""Helpers for audit-log tests: collect records of `k8s_jwt_auth.audit`, build expected records, find token leaks."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from k8s_jwt_auth._jws import fingerprint
from k8s_jwt_auth.audit import AUDIT_LOGGER, JsonFormatter
from k8s_jwt_auth.identity import WorkloadIdentity

__all__ = ["FORGED_PATH", "audit_dicts", "capture", "expected_allowed", "expected_refused", "forged_lines",
           "json_lines", "leaks"]


def audit_dicts(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The `k8s_jwt_auth` extra of every audit record captured so far."""
    return [record.k8s_jwt_auth for record in caplog.records if record.name == AUDIT_LOGGER.name]  # type: ignore[attr-defined]


def json_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every captured audit record rendered by `JsonFormatter`."""
    formatter = JsonFormatter()
    return [formatter.format(record) for record in caplog.records if record.name == AUDIT_LOGGER.name]


def leaks(caplog: pytest.LogCaptureFixture, token: str) -> list[str]:
    """Audit output (record dicts, messages and JSON lines) that contains the token or any of its segments."""
    pieces = [token, *(segment for segment in token.split(".") if len(segment) >= 8)]
    texts = [json.dumps(d) for d in audit_dicts(caplog)] + json_lines(caplog)
    texts += [record.getMessage() for record in caplog.records if record.name == AUDIT_LOGGER.name]
    return [text for text in texts if any(piece in text for piece in pieces)]


def expected_allowed(workload: WorkloadIdentity, token: str, *, path: str | None, method: str | None = "GET",
                     rule: str | None = None, decision: str = "allowed", transport: str = "http") -> dict[str, Any]:
    return {"decision": decision, "reason": "ok" if decision == "allowed" else "policy_denied", "status": None,
            "issuer": workload.issuer, "namespace": workload.namespace,
            "service_account": workload.service_account, "pod": workload.pod_name, "jti": workload.token_id,
            "cluster": workload.cluster, "reviewed": workload.reviewed,
            "stale": workload.stale, "token_fingerprint": fingerprint(token), "rule": rule, "path": path,
            "method": method, "transport": transport}


def expected_refused(decision: str, reason: str, status: int, token: str | None, *, path: str,
                     method: str | None = "GET", workload: WorkloadIdentity | None = None, rule: str | None = None,
                     transport: str = "http") -> dict[str, Any]:
    identity: dict[str, Any] = {"issuer": None, "namespace": None, "service_account": None, "pod": None, "jti": None,
                                "cluster": None, "reviewed": None, "stale": None}
    if workload is not None:
        identity = {"issuer": workload.issuer, "namespace": workload.namespace,
                    "service_account": workload.service_account, "pod": workload.pod_name, "jti": workload.token_id,
                    "cluster": workload.cluster, "reviewed": workload.reviewed, "stale": workload.stale}
    return {"decision": decision, "reason": reason, "status": status, **identity,
            "token_fingerprint": fingerprint(token) if token else None, "rule": rule, "path": path,
            "method": method, "transport": transport}


def capture(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> None:
    caplog.set_level(level, logger=AUDIT_LOGGER.name)


# A path that, written raw into a plain-text log, would start a forged line (#14 item 7).
FORGED_PATH = "/whoami%0d%0aWARNING k8s_jwt_auth.audit allowed 200 ok GET /admin%e2%80%a8x"


def forged_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Messages of `k8s_jwt_auth` loggers that contain a raw line break (CR, LF, U+2028...)."""
    breaks = ("\r", "\n", "\u2028", "\u2029", "\x85", "\x0b", "\x0c")
    return [m for m in (r.getMessage() for r in caplog.records if r.name.startswith("k8s_jwt_auth"))
            if any(b in m for b in breaks)]
