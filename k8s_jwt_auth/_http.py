"""Framework-free HTTP helpers for adapters: bearer-header parsing and RFC 6750 error responses.

Adapters get the header value, call `bearer_token`, and on `AuthError` render `error_response(exc)`
in their framework's response type. Everything here is plain `str`/`dict`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .errors import AuthError, InvalidToken, KeySetUnavailable

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


UNAVAILABLE_MESSAGE = "the token cannot be verified now: the issuer's keys are unavailable; retry later"


def error_response(exc: AuthError, realm: str | None = None) -> ErrorResponse:
    """401 + `WWW-Authenticate` for invalid tokens, 403 (`insufficient_scope`) for policy denials,
    503 + `Retry-After` when keys are unavailable.

    The body is `exc.to_dict()`; it never holds the token. For 503 the message is a generic sentence:
    the detailed one names internal URLs and upstream answers, which belong in logs, not in answers to
    unauthenticated callers.
    """
    headers: list[tuple[str, str]] = [("Content-Type", "application/json")]
    body = exc.to_dict()
    if isinstance(exc, KeySetUnavailable):
        headers.append(("Retry-After", str(exc.retry_after)))
        body["message"] = UNAVAILABLE_MESSAGE
    elif exc.status_code in (401, 403):
        headers.append(("WWW-Authenticate", challenge(exc, realm)))
    return ErrorResponse(exc.status_code, tuple(headers), body)
