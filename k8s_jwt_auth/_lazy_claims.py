"""`LazyClaims`: a token's raw claims, kept as the payload's JSON bytes and decoded on first use.

A cached identity lives as long as its token, and most services never read `identity.claims`: the decoded payload
(five dicts, their keys, a list) is ~2.5 KB of a cached token's ~3.7 KB, its JSON bytes ~0.6 KB. The bytes are the
ones the signature covered (already decoded from base64url to verify it), so keeping them costs no work; reading
`claims[...]`, iterating, `len`, `==` or `dict(claims)` decodes them once, with the decoder that checked them, and
keeps the dict.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["LazyClaims"]


class LazyClaims(Mapping[str, Any]):
    """A read-only mapping of a verified token's claims, decoded from its payload bytes on first use."""

    __slots__ = ("_dict", "_raw")

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._dict: dict[str, Any] | None = None

    def _claims(self) -> dict[str, Any]:
        decoded = self._dict
        if decoded is None:
            decoded = json.loads(self._raw)  # the bytes decoded to a JSON object once already: no error here
            self._dict = decoded  # a race decodes twice, to equal dicts
        return decoded

    def __getitem__(self, key: str) -> Any:
        return self._claims()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._claims())

    def __len__(self) -> int:
        return len(self._claims())

    def __repr__(self) -> str:
        return f"LazyClaims({self._claims()!r})"
