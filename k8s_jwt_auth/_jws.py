"""Parsing of compact JWS tokens: shape and size first, then the header. Pure, no I/O."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from .errors import InvalidToken

__all__ = ["ParsedToken", "b64url_decode", "fingerprint", "parse", "decode_payload", "unverified_claims"]

_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
# header.payload.signature, each unpadded base64url; one match checks the whole token's alphabet
_COMPACT = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)")
_B64URL = bytes.maketrans(b"-_", b"+/")


@dataclass(frozen=True, slots=True)
class ParsedToken:
    """A compact JWS split into its parts. The payload is *not* decoded until the signature is checked."""

    header: dict[str, Any]
    signing_input: bytes
    payload_segment: str
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
    try:
        text = data.decode("utf-8")
        value = json.loads(text) if decoder is None else decoder.decode(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidToken(f"the {part} is not valid UTF-8 JSON", reason="malformed") from exc
    if not isinstance(value, dict):
        raise InvalidToken(f"the {part} is not a JSON object", reason="malformed")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member names")
    return result


_HEADER_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)  # headers: duplicate names are refused


def _decode(segment: str, part: str) -> bytes:
    """Decode a segment already known to be in the base64url alphabet."""
    if len(segment) % 4 == 1:
        raise InvalidToken(f"the {part} is not valid base64url", reason="malformed")
    return binascii.a2b_base64(segment.encode("ascii").translate(_B64URL) + b"=" * (-len(segment) % 4))


def _as_text(token: object, max_size: int) -> str:
    if isinstance(token, (bytes, bytearray, memoryview)):
        token = bytes(token)
        if len(token) > max_size:
            raise InvalidToken(f"the token is larger than {max_size} bytes", reason="too_large")
        try:
            return token.decode("ascii")
        except UnicodeDecodeError as exc:
            raise InvalidToken("the token contains non-ASCII bytes", reason="malformed") from exc
    if not isinstance(token, str):
        raise InvalidToken("the token must be a string", reason="malformed")
    if len(token) > max_size:
        raise InvalidToken(f"the token is larger than {max_size} bytes", reason="too_large")
    return token


def parse(token: object, max_size: int) -> ParsedToken:
    """Check the compact-JWS shape and size, then decode the header.

    Raises:
        InvalidToken: `too_large`, `malformed` (wrong shape, bad base64url, header not a JSON object,
            encrypted token, empty token).
    """
    text = _as_text(token, max_size)
    match = _COMPACT.fullmatch(text)
    if match is None:
        raise _shape_error(text)
    header_segment, payload_segment, signature_segment = match.groups()
    header = _json_object(_decode(header_segment, "header"), "header", _HEADER_DECODER)
    if len(payload_segment) % 4 == 1:
        raise InvalidToken("the payload is not valid base64url", reason="malformed")
    signature = _decode(signature_segment, "signature")
    signing_input = text[: len(header_segment) + 1 + len(payload_segment)].encode("ascii")
    return ParsedToken(header, signing_input, payload_segment, signature)


def _shape_error(text: str) -> InvalidToken:
    """Why `text` is not a compact JWS, in words."""
    if not text:
        return InvalidToken("the token is empty", reason="malformed")
    parts = text.split(".")
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
    return _json_object(_decode(parsed.payload_segment, "payload"), "payload")


def unverified_claims(token: str) -> dict[str, Any]:
    """Decode a token's payload WITHOUT verifying anything. Only for diagnostics and finding the issuer."""
    return decode_payload(parse(token, max_size=64 * 1024))

