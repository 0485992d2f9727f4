"""An in-memory `SharedStore` for tests of what the verifier and the reviewer read, write and trust.

It stands in for Redis where the test is about the *caller's* side of the `SharedStore` contract; Redis
itself (authentication of entries, failures) is tested against a real redis-server in test_redis_*.py.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["MemoryStore"]


class MemoryStore:
    """A `SharedStore` in a dict, expiring by the test's clock; counts reads and records writes."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.data: dict[tuple[str, bytes], tuple[bytes, float]] = {}
        self.sets: list[tuple[str, bytes, bytes, float]] = []
        self.reads = 0

    @property
    def writes(self) -> int:
        return len(self.sets)

    def get(self, namespace: str, key: bytes) -> bytes | None:
        self.reads += 1
        entry = self.data.get((namespace, key))
        return entry[0] if entry is not None and self.clock() < entry[1] else None

    async def aget(self, namespace: str, key: bytes) -> bytes | None:
        return self.get(namespace, key)

    def set(self, namespace: str, key: bytes, value: bytes, ttl: float) -> None:
        self.sets.append((namespace, key, value, ttl))
        if ttl > 0:
            self.data[(namespace, key)] = (value, self.clock() + ttl)

    async def aset(self, namespace: str, key: bytes, value: bytes, ttl: float) -> None:
        self.set(namespace, key, value, ttl)

    def try_lock(self, namespace: str, key: bytes, ttl: float) -> bool:
        return True

    async def atry_lock(self, namespace: str, key: bytes, ttl: float) -> bool:
        return True

    def unlock(self, namespace: str, key: bytes) -> None:
        pass

    async def aunlock(self, namespace: str, key: bytes) -> None:
        pass
