"""The verified-token cache: a token seen before skips parsing and the signature check.

Entries are keyed by the SHA-256 digest of the token (never the token itself) and hold the identity,
the key that verified it and the moment the entry stops being usable: the token's `exp`, its
`kubernetes.io.warnafter` (so staleness is flagged on time), `iat + max_token_age`, and the cache TTL,
whichever comes first. A hit is only returned while the key source still hands out the *same* key
object for that `kid`: a refetched or rotated key set, or a removed key, sends the token through full
verification again. Thread-safe (a `threading.Lock` around the `cachetools.TTLCache`); no event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TTLCache

from ._keyset import VerificationKey
from .identity import WorkloadIdentity

__all__ = ["CacheInfo", "CachedToken", "TokenCache"]


@dataclass(frozen=True, slots=True)
class CachedToken:
    """One verified token: its identity, the key that verified it, and until when it may be reused."""

    identity: WorkloadIdentity
    key: VerificationKey
    kid: str | None
    alg: str
    valid_until: float


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """Counters of a `TokenCache` (as `functools.lru_cache().cache_info()`)."""

    hits: int
    misses: int
    maxsize: int
    currsize: int
    shared_hits: int = 0
    shared_misses: int = 0


class TokenCache:
    """A bounded TTL cache of verified tokens, shared by threads and event loops.

    Args:
        maxsize: the most tokens kept; the least recently used go first.
        ttl: the most seconds an entry is kept, whatever the token's lifetime.
        clock: the verifier's clock (Unix seconds).
    """

    __slots__ = ("_cache", "_clock", "_hits", "_lock", "_misses")

    def __init__(self, maxsize: int, ttl: float, clock: Callable[[], float]) -> None:
        self._cache: TTLCache[bytes, CachedToken] = TTLCache(maxsize=maxsize, ttl=ttl, timer=clock)
        self._clock = clock
        self._lock = threading.Lock()
        self._hits = self._misses = 0

    def get(self, digest: bytes, now: float) -> CachedToken | None:
        """The entry for a token digest while it is usable at `now`, else `None` (a miss).

        The caller then checks the entry's key and calls `confirm` (a hit) or `discard` (a miss).
        """
        with self._lock:
            entry = self._cache.get(digest)
            if entry is not None and now < entry.valid_until:
                return entry
            if entry is not None:
                del self._cache[digest]
            self._misses += 1
            return None

    def confirm(self, entry: CachedToken) -> None:
        """Count a hit: the caller reuses `entry.identity`."""
        with self._lock:
            self._hits += 1

    def put(self, digest: bytes, entry: CachedToken) -> None:
        """Remember a verified token (nothing is stored if it is already unusable)."""
        if entry.valid_until <= self._clock():
            return
        with self._lock:
            self._cache[digest] = entry

    def discard(self, digest: bytes) -> None:
        """Forget a token whose key is gone or changed (a miss)."""
        with self._lock:
            self._cache.pop(digest, None)
            self._misses += 1

    def clear(self) -> None:
        """Forget every token."""
        with self._lock:
            self._cache.clear()

    def info(self) -> CacheInfo:
        """Hits, misses, maximum and current size."""
        with self._lock:
            return CacheInfo(self._hits, self._misses, int(self._cache.maxsize), len(self._cache))
