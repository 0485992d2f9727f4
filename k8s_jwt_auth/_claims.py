"""Claim checks, one function per check, and the mapping of verified claims to a `WorkloadIdentity`.

Every function is pure: it gets the payload (and the time) and raises `InvalidToken` with a stable
reason, or returns a normalised value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from .errors import InvalidToken

__all__ = [
    "LEGACY_ISSUER",
    "check_audience",
    "check_expiry",
    "check_issued_at",
    "check_issuer",
    "check_not_before",
    "is_legacy",
    "service_account_claims",
    "to_datetime",
]

LEGACY_ISSUER = "kubernetes/serviceaccount"
_LEGACY_PREFIX = "kubernetes.io/serviceaccount/"
_LEGACY_NAMESPACE = f"{_LEGACY_PREFIX}namespace"
_LEGACY_SA_NAME = f"{_LEGACY_PREFIX}service-account.name"
_LEGACY_SA_UID = f"{_LEGACY_PREFIX}service-account.uid"
_BINDING_CLAIMS = {"pod": "kubernetes.io.pod", "node": "kubernetes.io.node"}
_SA_SUBJECT = "system:serviceaccount:"
# namespace: DNS-1123 label; service account: DNS-1123 subdomain (kube-apiserver validation)
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SA_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def _missing(claim: str) -> InvalidToken:
    return InvalidToken(f"the token has no {claim!r} claim", reason="missing_claim", claim=claim)


def _malformed(claim: str, expected: str) -> InvalidToken:
    return InvalidToken(f"the {claim!r} claim is not {expected}", reason="malformed", claim=claim)


def numeric_date(payload: Mapping[str, Any], claim: str) -> float | None:
    """A NumericDate claim as a finite number, `None` when absent.

    Raises:
        InvalidToken: `malformed` when it is not a finite number.
    """
    value = payload.get(claim)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _malformed(claim, "a number of seconds")
    try:
        seconds = float(value)  # an int beyond a double (10**400) overflows here, not later
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise _malformed(claim, "a number of seconds")
    return seconds


def to_datetime(seconds: float | None, claim: str) -> datetime | None:
    """A NumericDate as an aware UTC `datetime`.

    Raises:
        InvalidToken: `malformed` when it is outside the range of dates.
    """
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, timezone.utc)
    except (OverflowError, OSError, ValueError) as exc:
        raise _malformed(claim, "a representable date") from exc


def is_legacy(payload: Mapping[str, Any]) -> bool:
    """Whether this is a legacy secret-based token (`iss: kubernetes/serviceaccount`, flat claims)."""
    return payload.get("iss") == LEGACY_ISSUER or _LEGACY_NAMESPACE in payload


def check_issuer(payload: Mapping[str, Any], accepted: frozenset[str]) -> str:
    """`iss` must equal a configured issuer exactly. Raises `InvalidToken` (`missing_claim`, `bad_issuer`)."""
    iss = payload.get("iss")
    if iss is None:
        raise _missing("iss")
    if not isinstance(iss, str) or iss not in accepted:
        raise InvalidToken("the token was issued by another issuer", reason="bad_issuer", claim="iss")
    return iss


def check_audience(payload: Mapping[str, Any], audiences: frozenset[str]) -> tuple[str, ...]:
    """`aud` (string or list) must contain a configured audience.

    Raises:
        InvalidToken: `missing_claim`, `malformed`, `bad_audience`.
    """
    aud = payload.get("aud")
    if aud is None:
        raise _missing("aud")
    values = (aud,) if isinstance(aud, str) else aud
    if not isinstance(values, (list, tuple)) or not all(isinstance(a, str) for a in values):
        raise _malformed("aud", "a string or a list of strings")
    if audiences.isdisjoint(values):
        raise InvalidToken("the token is not meant for this audience", reason="bad_audience", claim="aud")
    return tuple(values)


def check_expiry(payload: Mapping[str, Any], now: float, leeway: float, required: bool = True) -> float | None:
    """`exp` must be present and `now <= exp + leeway`. Raises `InvalidToken` (`missing_claim`, `expired`)."""
    exp = numeric_date(payload, "exp")
    if exp is None:
        if required:
            raise _missing("exp")
        return None
    if now > exp + leeway:
        raise InvalidToken("the token has expired", reason="expired", claim="exp")
    return exp


def check_not_before(payload: Mapping[str, Any], now: float, leeway: float) -> float | None:
    """`nbf`, when present, must be `<= now + leeway`. Raises `InvalidToken` (`not_yet_valid`)."""
    nbf = numeric_date(payload, "nbf")
    if nbf is not None and nbf > now + leeway:
        raise InvalidToken("the token is not valid yet", reason="not_yet_valid", claim="nbf")
    return nbf


def check_issued_at(
    payload: Mapping[str, Any], now: float, leeway: float, max_age: float | None
) -> float | None:
    """`iat`, when present, must not be in the future; with `max_age`, it is required and not too old.

    Raises:
        InvalidToken: `issued_in_future`, `missing_claim`, `too_old`.
    """
    iat = numeric_date(payload, "iat")
    if iat is None:
        if max_age is not None:
            raise _missing("iat")
        return None
    if iat > now + leeway:
        raise InvalidToken("the token was issued in the future", reason="issued_in_future", claim="iat")
    if max_age is not None and now - iat > max_age + leeway:
        raise InvalidToken("the token is older than the maximum token age", reason="too_old", claim="iat")
    return iat


def _subject(payload: Mapping[str, Any]) -> tuple[str, str, str]:
    sub = payload.get("sub")
    if sub is None:
        raise _missing("sub")
    if not isinstance(sub, str) or not sub.startswith(_SA_SUBJECT):
        raise InvalidToken("sub is not a service account (system:serviceaccount:NS:NAME)",
                           reason="claim_mismatch", claim="sub")
    parts = sub[len(_SA_SUBJECT):].split(":")
    if len(parts) != 2 or not _NAMESPACE.fullmatch(parts[0]) or not _SA_NAME.fullmatch(parts[1]):
        raise InvalidToken("sub is not system:serviceaccount:NS:NAME with valid names",
                           reason="claim_mismatch", claim="sub")
    return sub, parts[0], parts[1]


def _object(value: object, claim: str, *, required: bool) -> Mapping[str, Any] | None:
    if value is None:
        if required:
            raise _missing(claim)
        return None
    if not isinstance(value, dict):  # decoded JSON: objects are dicts
        raise _malformed(claim, "an object")
    return value


def _text(obj: Mapping[str, Any], name: str, claim: str, *, required: bool = True) -> str | None:
    value = obj.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise _malformed(f"{claim}.{name}", "a non-empty string")
    return value


def service_account_claims(payload: Mapping[str, Any], legacy: bool) -> dict[str, Any]:
    """Map `sub` and the `kubernetes.io` claims to identity fields, checking that they agree.

    Raises:
        InvalidToken: `missing_claim`, `malformed`, `claim_mismatch`.
    """
    sub, namespace, name = _subject(payload)
    if legacy:
        claimed_ns = payload.get(_LEGACY_NAMESPACE)
        claimed_sa = payload.get(_LEGACY_SA_NAME)
        uid = payload.get(_LEGACY_SA_UID)
        fields: dict[str, Any] = {"service_account_uid": uid if isinstance(uid, str) else None}
    else:
        k8s = _object(payload.get("kubernetes.io"), "kubernetes.io", required=True)
        assert k8s is not None
        sa = _object(k8s.get("serviceaccount"), "kubernetes.io.serviceaccount", required=True)
        assert sa is not None
        claimed_ns = _text(k8s, "namespace", "kubernetes.io")
        claimed_sa = _text(sa, "name", "kubernetes.io.serviceaccount")
        pod_name, pod_uid = _binding(k8s, "pod")
        node_name, node_uid = _binding(k8s, "node")
        fields = {"service_account_uid": _text(sa, "uid", "kubernetes.io.serviceaccount", required=False),
                  "pod_name": pod_name, "pod_uid": pod_uid, "node_name": node_name, "node_uid": node_uid,
                  "warn_after": numeric_date(k8s, "warnafter")}
    if claimed_ns != namespace or claimed_sa != name:
        raise InvalidToken("sub disagrees with the kubernetes.io namespace/serviceaccount claims",
                           reason="claim_mismatch", claim="sub")
    fields["subject"], fields["namespace"], fields["service_account"] = sub, namespace, name
    return fields


def _binding(k8s: Mapping[str, Any], kind: str) -> tuple[str | None, str | None]:
    """The (name, uid) of the pod or node the token is bound to; (None, None) when it is not."""
    value = k8s.get(kind)
    if value is None:
        return None, None
    claim = _BINDING_CLAIMS[kind]
    obj = _object(value, claim, required=False)
    assert obj is not None
    return _text(obj, "name", claim), _text(obj, "uid", claim, required=False)
