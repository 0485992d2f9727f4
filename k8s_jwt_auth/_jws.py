"""Parsing of compact JWS tokens: shape and size first, then the header. Pure, no I/O."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from typing import Any

from .errors import InvalidToken

__all__ = ["ParsedToken", "b64url_decode", "fingerprint", "parse", "decode_payload", "unverified_claims"]

_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
_SEGMENT_BYTES = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_B64URL = bytes.maketrans(b"-_", b"+/")  # base64url -> base64; "+", "/" and "=" in a token are refused first

if sys.version_info >= (3, 11):

    def _a2b_strict(data: bytes) -> bytes:
        """Padded base64 to bytes; any byte outside the alphabet is an error."""
        return binascii.a2b_base64(data, strict_mode=True)

else:  # pragma: no cover - Python 3.10 has no strict_mode

    def _a2b_strict(data: bytes) -> bytes:
        """Padded base64 to bytes; any byte outside the alphabet is an error."""
        if _SEGMENT_BYTES.fullmatch(data) is None:
            raise binascii.Error("non-alphabet character")
        return binascii.a2b_base64(data)


@dataclass(frozen=True, slots=True)
class ParsedToken:
    """A compact JWS split into its parts. The payload JSON is *not* parsed until the signature is checked."""

    header: dict[str, Any]
    signing_input: bytes
    payload: bytes  # base64-decoded; parsed as JSON only after the signature check
    signature: bytes


def fingerprint(token: str | bytes) -> str:
    """The first 16 hex digits of the token's SHA-256: safe to log, useless to replay."""
    data = token.encode("utf-8", "surrogatepass") if isinstance(token, str) else bytes(token)
    return hashlib.sha256(data).hexdigest()[:16]


def b64url_decode(segment: str, part: str) -> bytes:
    """Decode one unpadded base64url segment strictly.

    Raises:
        InvalidToken: `malformed` for characters outside the alphabet or an impossible length.
    """
    if _SEGMENT.fullmatch(segment) is None or len(segment) % 4 == 1:
        raise InvalidToken(f"the {part} is not valid base64url", reason="malformed", claim=None)
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the regex rules these out
        raise InvalidToken(f"the {part} is not valid base64url", reason="malformed") from exc


def _json_object(data: bytes, part: str, decoder: json.JSONDecoder | None = None) -> dict[str, Any]:
    # The decoding errors carry the token's text (`.object`, `.doc`): raise outside the handler so that no
    # `__context__`/`__cause__` of the error we raise holds any part of the token.
    try:
        text = data.decode("utf-8")
        value = json.loads(text) if decoder is None else decoder.decode(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        value = _NOT_JSON
    if value is _NOT_JSON:
        raise InvalidToken(f"the {part} is not valid UTF-8 JSON", reason="malformed")
    if not isinstance(value, dict):
        raise InvalidToken(f"the {part} is not a JSON object", reason="malformed")
    return value


_NOT_JSON: Any = object()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member names")
    return result


_HEADER_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)  # headers: duplicate names are refused


def _decode(segment: bytes, part: str) -> bytes:
    """Decode a segment whose `-_` were already translated to `+/`, strictly.

    Raises:
        InvalidToken: `malformed` for characters outside the alphabet or an impossible length.
    """
    if len(segment) % 4 == 1:
        raise InvalidToken(f"the {part} is not valid base64url", reason="malformed")
    try:
        return _a2b_strict(segment + b"=" * (-len(segment) % 4))
    except binascii.Error as exc:
        raise InvalidToken(f"the {part} is not valid base64url", reason="malformed") from exc


def _as_bytes(token: object, max_size: int) -> bytes:
    if isinstance(token, str):
        if len(token) > max_size:
            raise InvalidToken(f"the token is larger than {max_size} bytes", reason="too_large")
        if not token.isascii():  # checked, not caught: a UnicodeEncodeError would carry the whole token
            raise InvalidToken("the token contains non-ASCII characters", reason="malformed")
        return token.encode("ascii")
    if not isinstance(token, (bytes, bytearray, memoryview)):
        raise InvalidToken("the token must be a string", reason="malformed")
    data = bytes(token)
    if len(data) > max_size:
        raise InvalidToken(f"the token is larger than {max_size} bytes", reason="too_large")
    if not data.isascii():
        raise InvalidToken("the token contains non-ASCII bytes", reason="malformed")
    return data


def parse(token: object, max_size: int) -> ParsedToken:
    """Check the compact-JWS shape and size, then decode the header.

    Raises:
        InvalidToken: `too_large`, `malformed` (wrong shape, bad base64url, header not a JSON object,
            encrypted token, empty token).
    """
    raw = _as_bytes(token, max_size)
    parts = raw.translate(_B64URL).split(b".")
    if len(parts) != 3 or not parts[0] or not parts[1] or b"+" in raw or b"/" in raw or b"=" in raw:
        raise _shape_error(raw)
    header_segment, payload_segment, signature_segment = parts
    header = _json_object(_decode(header_segment, "header"), "header", _HEADER_DECODER)
    payload = _decode(payload_segment, "payload")
    signature = _decode(signature_segment, "signature")
    return ParsedToken(header, raw[: len(header_segment) + 1 + len(payload_segment)], payload, signature)


def _shape_error(raw: bytes) -> InvalidToken:
    """Why `raw` is not a compact JWS, in words."""
    if not raw:
        return InvalidToken("the token is empty", reason="malformed")
    parts = raw.split(b".")
    if len(parts) != 3:
        hint = " (encrypted JWE tokens are not supported)" if len(parts) == 5 else ""
        return InvalidToken(f"the token is not a compact JWS of three dot-separated parts{hint}", reason="malformed")
    if not parts[0] or not parts[1]:
        return InvalidToken("the token has an empty header or payload", reason="malformed")
    return InvalidToken("the token is not valid base64url", reason="malformed")


def decode_payload(parsed: ParsedToken) -> dict[str, Any]:
    """Decode the payload of a token whose signature has been checked.

    Raises:
        InvalidToken: `malformed` when the payload is not a JSON object.
    """
    return _json_object(parsed.payload, "payload")


def unverified_claims(token: str) -> dict[str, Any]:
    """Decode a token's payload WITHOUT verifying anything. Only for diagnostics and finding the issuer."""
    return decode_payload(parse(token, max_size=64 * 1024))

