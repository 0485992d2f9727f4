"""`FrozenClaims`: a token's raw claims in about a tenth of the memory of the decoded JSON, rebuilt on first use.

A cached identity lives for the token's lifetime, and most services never read `identity.claims`; the decoded
payload (five dicts, their keys, a list) is ~2.5 KB of a cached token's ~3.6 KB. `freeze(payload, share)` keeps
instead:

* the *shape* — keys, nesting, which values are lists — as a nested tuple shared by every token of that shape
  (in the verifier's bounded `shapes` table; Kubernetes tokens come in a handful of shapes), and
* the leaf values, as one flat tuple; strings equal to one the identity already holds (namespace, uids, ...) are
  that very object, and whole-second times (`exp`, `iat`...) are the identity's `datetime` (`share`), so they cost
  nothing more.

`claims[...]`, iteration, `len`, `==`, `dict(claims)` see exactly the payload (order, types, nesting); the dict is
rebuilt on first use and kept. Values other than JSON's (str, int, float, bool, None, list, dict) are never frozen.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

__all__ = ["FrozenClaims", "freeze"]

_LIST = "\0list"  # a shape marker: the value is a list of this many leaves (kept apart from any key: keys are str)
_MAX_SHAPES = 256
_Leaf = (str, int, float, bool, type(None))
_SHARED = (str, int)  # leaf types looked up in `share` (not bool: True == 1)


class FrozenClaims(Mapping[str, Any]):
    """A read-only mapping of a token's claims, stored as a shared shape and a flat tuple of values."""

    __slots__ = ("_dict", "_shape", "_values")

    def __init__(self, shape: tuple[Any, ...], values: tuple[Any, ...]) -> None:
        self._shape, self._values = shape, values
        self._dict: dict[str, Any] | None = None

    def _claims(self) -> dict[str, Any]:
        built = self._dict
        if built is None:
            built, _ = _thaw(self._shape, self._values, 0)
            self._dict = built  # a race builds it twice, with the same result
        return built

    def __getitem__(self, key: str) -> Any:
        return self._claims()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._claims())

    def __len__(self) -> int:
        return len(self._shape)

    def __repr__(self) -> str:
        return f"FrozenClaims({self._claims()!r})"


def freeze(payload: dict[str, Any], share: Mapping[Any, Any],
           shapes: dict[tuple[Any, ...], tuple[Any, ...]]) -> FrozenClaims | None:
    """The frozen form of a decoded payload; `None` when it holds anything but JSON values or too many shapes
    are known (keep the dict then).

    Args:
        payload: the decoded JSON payload.
        share: what the identity already holds, by value: strings, and `datetime`s by their whole second
            (`int`): equal leaves become those objects (a `datetime` leaf stands for its second).
        shapes: the shapes seen so far (one object per shape); at most `_MAX_SHAPES` are added.
    """
    values: list[Any] = []
    shape = _shape(payload, values, share)
    if shape is None:
        return None
    known = shapes.get(shape)
    if known is None:
        if len(shapes) >= _MAX_SHAPES:
            return None
        known = shapes.setdefault(shape, shape)  # atomic: racing threads agree on one object
    return FrozenClaims(known, tuple(values))


def _shape(obj: dict[str, Any], values: list[Any], share: Mapping[Any, Any]) -> tuple[Any, ...] | None:
    shape: list[Any] = []
    for key, value in obj.items():
        if key == _LIST:
            return None
        if type(value) is dict:
            inner = _shape(value, values, share)
            if inner is None:
                return None
            shape.append((key, inner))
        elif type(value) is list:
            if not all(isinstance(item, _Leaf) for item in value):
                return None
            values.extend(share.get(item, item) if type(item) in _SHARED else item for item in value)
            shape.append((key, (_LIST, len(value))))
        elif isinstance(value, _Leaf):
            values.append(share.get(value, value) if type(value) in _SHARED else value)
            shape.append(key)
        else:
            return None
    return tuple(shape)


def _thaw(shape: tuple[Any, ...], values: tuple[Any, ...], at: int) -> tuple[dict[str, Any], int]:
    built: dict[str, Any] = {}
    for entry in shape:
        if type(entry) is str:
            value = values[at]
            built[entry] = int(value.timestamp()) if type(value) is datetime else value
            at += 1
            continue
        key, inner = entry
        if inner and inner[0] == _LIST:
            built[key] = [int(v.timestamp()) if type(v) is datetime else v for v in values[at:at + inner[1]]]
            at += inner[1]
        else:
            built[key], at = _thaw(inner, values, at)
    return built, at
