"""The verified-token cache: a token seen before skips parsing and the signature check.

The hot path of every request, so it is built for a lock-free lookup:

* Entries live in a plain `dict` keyed by `hash(token)` — SipHash-1-3 with the interpreter's per-process random key,
  ~0.4 µs for a 1 KB token where SHA-256 takes ~1.5 µs — and hold the last `TAIL` characters of the token, which
  a hit must match too. A stranger cannot aim at an entry: the hash is keyed by a secret, and the tail is part of
  a signature only the token's holder has. The token itself is never kept.
* An entry stops being usable at the token's `exp`, its `kubernetes.io.warnafter` (so staleness is flagged on
  time), `iat + max_token_age` or the cache TTL, whichever comes first.
* The key that verified the token is re-checked against the key source at most every `KEY_RECHECK` seconds per
  `(kid, alg)` (one `KeyCheck` shared by all the tokens of that key): a rotated, removed or unavailable key takes
  effect within that second, and a refetched key set with the same key material (RFC 7638 thumbprint) keeps its
  tokens cached.
* Reads take no lock (a dict lookup is atomic in CPython); writes and eviction (oldest first) take a
  `threading.Lock`; no event loop is involved. The hit and miss counters are exact for one thread and may
  undercount under contention.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ._keyset import VerificationKey
from .identity import WorkloadIdentity

__all__ = ["KEY_RECHECK", "TAIL", "CacheInfo", "CachedToken", "KeyCheck", "TokenCache"]

TAIL = 16
"""Characters of the token's end (its signature) an entry keeps, and a hit must match."""

KEY_RECHECK = 1.0
"""Seconds a cached token's key is trusted before the key source is asked again (per kid and algorithm)."""


class KeyCheck:
    """The key one `(kid, alg)` resolved to, trusted without asking the key source again until `until`."""

    __slots__ = ("alg", "key", "kid", "thumbprint", "until")

    def __init__(self, kid: str | None, alg: str, key: VerificationKey, until: float) -> None:
        self.kid, self.alg, self.key, self.thumbprint, self.until = kid, alg, key, key.thumbprint, until


class CachedToken:
    """One verified token: its identity, the check of its key, the end of the token, and until when it may be
    reused."""

    __slots__ = ("check", "identity", "tail", "valid_until")

    def __init__(self, identity: WorkloadIdentity, check: KeyCheck, tail: str | bytes, valid_until: float) -> None:
        self.identity, self.check, self.tail, self.valid_until = identity, check, tail, valid_until


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
    """A bounded cache of verified tokens, shared by threads and event loops.

    Args:
        maxsize: the most tokens kept; the oldest go first.
        ttl: the most seconds an entry is kept, whatever the token's lifetime.
        clock: the verifier's clock (Unix seconds).

    Attributes:
        entries: `hash(token)` → entry.
        hits: lookups answered from the cache.
        misses: lookups that went through full verification.
    """

    __slots__ = ("_checks", "_clock", "_lock", "entries", "hits", "maxsize", "misses", "ttl")

    def __init__(self, maxsize: int, ttl: float, clock: Callable[[], float]) -> None:
        self.entries: dict[int, CachedToken] = {}
        self._checks: dict[tuple[str | None, str], KeyCheck] = {}
        self.maxsize, self.ttl, self._clock = maxsize, ttl, clock
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def hit(self, token: str | bytes) -> WorkloadIdentity | None:
        """The hot path: the identity of a cached token that is usable now and whose key check (at most
        `KEY_RECHECK` seconds old) stands, counted as a hit; else `None`, counting nothing (the caller goes on
        with `find`)."""
        entry = self._match(token)
        if entry is not None:
            now = self._clock()
            if now < entry.valid_until and now < entry.check.until:
                self.hits += 1
                return entry.identity
        return None

    def find(self, token: str | bytes, now: float) -> CachedToken | None:
        """The entry for `token` while it is usable at `now`, else `None` (counted as a miss).

        The caller then re-checks the entry's key and calls `reuse` (a hit) or `discard` (a miss).
        """
        entry = self._match(token)
        if entry is not None:
            if now < entry.valid_until:
                return entry
            self.entries.pop(hash(token), None)
        self.misses += 1
        return None

    def _match(self, token: str | bytes) -> CachedToken | None:
        """The entry stored for this token: its hash and its last `TAIL` characters both match."""
        entry = self.entries.get(hash(token))
        return entry if entry is not None and entry.tail == token[-TAIL:] else None

    def reuse(self, entry: CachedToken, key: VerificationKey, now: float) -> bool:
        """Whether `key`, what the key source hands out now for the entry's kid, is the key material that
        verified it; if so the check is renewed for `KEY_RECHECK` seconds and the hit counted."""
        check = entry.check
        if key is check.key or key.thumbprint == check.thumbprint:
            check.key, check.until = key, now + KEY_RECHECK
            self.hits += 1
            return True
        return False

    def put(self, token: str | bytes, identity: WorkloadIdentity, kid: str | None, alg: str, key: VerificationKey,
            reusable_until: float) -> None:
        """Remember a verified token (nothing is stored if it is already unusable)."""
        now = self._clock()
        valid_until = min(reusable_until, now + self.ttl)
        if valid_until <= now:
            return
        with self._lock:
            check = self._checks.get((kid, alg))
            if check is None or check.thumbprint != key.thumbprint:
                check = self._checks[(kid, alg)] = KeyCheck(kid, alg, key, now + KEY_RECHECK)
            entries = self.entries
            while len(entries) >= self.maxsize:
                del entries[next(iter(entries))]  # the oldest
            entries[hash(token)] = CachedToken(identity, check, token[-TAIL:], valid_until)

    def discard(self, token: str | bytes) -> None:
        """Forget a token whose key is gone or changed (a miss)."""
        self.entries.pop(hash(token), None)
        self.misses += 1

    def clear(self) -> None:
        """Forget every token."""
        with self._lock:
            self.entries.clear()
            self._checks.clear()

    def info(self) -> CacheInfo:
        """Hits, misses, maximum and current size."""
        return CacheInfo(self.hits, self.misses, self.maxsize, len(self.entries))
