"""Framework-free HTTP helpers for adapters: bearer-header parsing and RFC 6750 error responses.

The public home of what every adapter renders: `error_response(exc, realm)` gives the status, headers
(`WWW-Authenticate`, `Retry-After`) and JSON body of a refusal as plain `str`/`dict`, which an adapter copies
into its framework's response type. `bearer_token` parses one credentials header value. Adapters normally get
both through `k8s_jwt_auth.gate.Gate`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .errors import AuthError, InvalidToken, KeySetUnavailable, ServiceUnavailable

__all__ = ["UNAVAILABLE_MESSAGE", "ErrorResponse", "bearer_token", "challenge", "error_response", "missing_token"]

_UNSAFE = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')  # RFC 6750 error_description characters
_MAX_HEADER = 64 * 1024


def missing_token() -> InvalidToken:
    """The error for a request without bearer credentials (401, `missing_token`)."""
    return InvalidToken("a bearer token is required (Authorization: Bearer <token>)", reason="missing_token")


def bearer_token(value: str | bytes | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value.

    Returns `None` when there is no header or it uses another scheme (not our credentials).

    Raises:
        InvalidToken: `malformed` for a Bearer header without a single token, `too_large` for huge headers.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if value.startswith("Bearer ") and len(value) <= _MAX_HEADER:  # the usual form: the same answer, sooner
        token = value[7:]
        if token and not token[0].isspace() and not token[-1].isspace() and " " not in token and "\t" not in token:
            return token
    if len(value) > _MAX_HEADER:
        raise InvalidToken("the Authorization header is too large", reason="too_large")
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = rest.strip()
    if not token or " " in token or "\t" in token:
        raise InvalidToken("the Authorization header must be 'Bearer <token>'", reason="malformed")
    return token


def _quoted(text: str) -> str:
    return _UNSAFE.sub("?", text)[:200]


def challenge(exc: AuthError | None, realm: str | None = None) -> str:
    """The `WWW-Authenticate` value: `Bearer realm=..., error="invalid_token", error_description=...`.

    With no error or a `missing_token` error, no error code is given (RFC 6750 section 3.1).
    """
    params = [f'realm="{_quoted(realm)}"'] if realm else []
    if exc is not None and exc.reason != "missing_token":
        params.append(f'error="{exc.error}"')
        params.append(f'error_description="{_quoted(exc.message)}"')
    return "Bearer" + (" " + ", ".join(params) if params else "")


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """What an adapter answers for an `AuthError`: status, headers and a small JSON body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: dict[str, str]

    def json_bytes(self) -> bytes:
        """The body serialised as compact JSON."""
        return json.dumps(self.body, separators=(",", ":")).encode()


UNAVAILABLE_MESSAGE = KeySetUnavailable.public_message
"""The 503 body message when the issuer's keys are unavailable (each `ServiceUnavailable` has its own)."""


def error_response(exc: AuthError, realm: str | None = None) -> ErrorResponse:
    """401 + `WWW-Authenticate` for invalid tokens, 403 (`insufficient_scope`) for policy denials,
    503 + `Retry-After` when the token cannot be checked now (keys or TokenReview unavailable).

    The body is `exc.to_dict()`; it never holds the token. For 503 the message is the error class's
    `public_message`, one sentence per cause: the detailed one names internal URLs and upstream answers, which
    belong in logs, not in answers to unauthenticated callers.
    """
    headers: list[tuple[str, str]] = [("Content-Type", "application/json")]
    body = exc.to_dict()
    if isinstance(exc, ServiceUnavailable):
        headers.append(("Retry-After", str(exc.retry_after)))
        body["message"] = exc.public_message
    elif exc.status_code in (401, 403):
        headers.append(("WWW-Authenticate", challenge(exc, realm)))
    return ErrorResponse(exc.status_code, tuple(headers), body)
