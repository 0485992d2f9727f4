"""`SharedStore`: the contract of a cache shared by processes and pods (e.g. `k8s_jwt_auth.redis_cache.RedisCache`).

A shared store holds small, *authenticated* byte values under (namespace, key) pairs:

* `get`/`aget` return a value only if its authenticator checks out and it has not expired; a missing,
  expired, tampered or unreadable entry is `None`. They never raise and never stall: a store that is down
  or slow answers `None` within its timeout, and callers then do the work themselves.
* `set`/`aset` store a value for at most `ttl` seconds (nothing is stored for `ttl <= 0`); failures are
  swallowed (and logged once by the store).
* `try_lock`/`atry_lock` take a short lease so that one process in a fleet does a fetch the others then
  read; `False` when another process holds it *or* the store cannot be reached (the caller then decides
  whether to wait or to fetch itself). `unlock`/`aunlock` give the lease back.

A store may also expose `available: bool` (`False` while it skips a backend that failed): the key-set
sharing then fetches at once instead of waiting for another process to publish a key set. And it may offer
`replace(namespace, key, value, ttl, *, keep)` / `areplace(...)` (`RedisCache` does): store `value` unless the
authentic value stored now is one `keep(current)` says must stay, read and written in one step; a newer
shared key set is then never replaced by an older one, even by a process that publishes late (without it,
the key-set sharing reads, compares and writes in two steps).

Keys are bytes such as a token's SHA-256 digest; the store derives its own key names from them (never
the raw key), so a token never reaches the store. Namespaces used by k8s-jwt-auth: `"v"` (verified
tokens), `"tr"` (TokenReview results), `"jwks"` (key-set documents).

Sync methods never need an event loop; async methods never block the loop.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["SharedStore"]


@runtime_checkable
class SharedStore(Protocol):
    """A cache shared across processes: authenticated values, expiring, never raising (see the module docstring)."""

    def get(self, namespace: str, key: bytes) -> bytes | None:
        """The value stored under (namespace, key), if present, authentic and not expired."""
        ...

    async def aget(self, namespace: str, key: bytes) -> bytes | None:
        """Like `get`, without blocking the event loop."""
        ...

    def set(self, namespace: str, key: bytes, value: bytes, ttl: float) -> None:
        """Store `value` for at most `ttl` seconds (best effort)."""
        ...

    async def aset(self, namespace: str, key: bytes, value: bytes, ttl: float) -> None:
        """Like `set`, without blocking the event loop."""
        ...

    def try_lock(self, namespace: str, key: bytes, ttl: float) -> bool:
        """Take a lease for `ttl` seconds; `False` if someone else holds it or the store is unreachable."""
        ...

    async def atry_lock(self, namespace: str, key: bytes, ttl: float) -> bool:
        """Like `try_lock`, without blocking the event loop."""
        ...

    def unlock(self, namespace: str, key: bytes) -> None:
        """Give back a lease taken with `try_lock` (best effort)."""
        ...

    async def aunlock(self, namespace: str, key: bytes) -> None:
        """Like `unlock`, without blocking the event loop."""
        ...
