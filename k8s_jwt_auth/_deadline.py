"""HTTP clients whose every exchange has ONE deadline: connect, TLS, request, status line, headers and body.

httpx's timeouts apply to each socket operation: a server that sends its status line or headers one byte at a
time, just under the read timeout, holds a request for as long as it likes. These clients route every socket
operation through a network backend that gives it `min(its own timeout, time left before the deadline)` and fails
it with a timeout once the deadline has passed, so an exchange never outlives its deadline by more than one
socket operation (the last one is given only what is left).

A deadline is set per exchange with `Session.start(seconds)`. The clients are made per fetch (key fetches and
TokenReviews are rare), so no deadline outlives its request and nothing is shared between event loops.
The connect phase has its own, shorter limit (`connect_timeout`) so that an unreachable peer fails fast.
"""

from __future__ import annotations

import logging
import math
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpcore
import httpx

__all__ = ["AsyncSession", "Deadline", "Session"]

logger = logging.getLogger("k8s_jwt_auth.keys")
_LAST_CHANCE = 1e-6  # seconds a socket operation gets once the deadline has passed


class Deadline:
    """A point in `time.monotonic()` time; `math.inf` until an exchange starts."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = math.inf

    def start(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self, timeout: float | None) -> float:
        """The time a socket operation may take: its own `timeout`, cut to what is left of the deadline.

        Past the deadline it is a microsecond, so the operation fails with the network layer's own timeout
        error (whichever httpcore the transport uses) unless its data is already there.
        """
        left = max(self.at - time.monotonic(), _LAST_CHANCE)
        return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._inner, self._deadline = inner, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._deadline.left(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        left = self._deadline.left(timeout)
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, left), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend, deadline: Deadline) -> None:
        self._inner, self._deadline = inner, deadline

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, self._deadline.left(timeout),
                                         local_address, socket_options)
        return _Stream(stream, self._deadline)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(path, self._deadline.left(timeout),
                                                 socket_options)
        return _Stream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream, deadline: Deadline) -> None:
        self._inner, self._deadline = inner, deadline

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, self._deadline.left(timeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, self._deadline.left(timeout))

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        left = self._deadline.left(timeout)
        return _AsyncStream(await self._inner.start_tls(ssl_context, server_hostname, left), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend, deadline: Deadline) -> None:
        self._inner, self._deadline = inner, deadline

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        left = self._deadline.left(timeout)
        return _AsyncStream(await self._inner.connect_tcp(host, port, left, local_address, socket_options),
                            self._deadline)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        left = self._deadline.left(timeout)
        return _AsyncStream(await self._inner.connect_unix_socket(path, left, socket_options), self._deadline)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _install(transport: httpx.HTTPTransport | httpx.AsyncHTTPTransport, wrap: Callable[[Any], Any]) -> None:
    """Wrap the network backend under the transport's connection pool (httpx has no public hook for it)."""
    pool = getattr(transport, "_pool", None)
    inner = getattr(pool, "_network_backend", None)
    if pool is None or inner is None:
        logger.warning("this httpx version gives no way to bound whole HTTP exchanges; each socket operation "
                       "is still bounded by the timeout")
        return
    pool._network_backend = wrap(inner)


def _timeout(timeout: float, connect_timeout: float | None) -> httpx.Timeout:
    connect = timeout if connect_timeout is None else min(timeout, connect_timeout)
    return httpx.Timeout(timeout, connect=connect)


class Session:
    """A blocking `httpx.Client` (`.client`) with one deadline per exchange; a context manager.

    Requests that go through a proxy from the environment (`HTTPS_PROXY`) are bounded per socket operation only.
    """

    def __init__(self, *, verify: ssl.SSLContext, timeout: float, connect_timeout: float | None = None) -> None:
        self.deadline = Deadline()
        transport = httpx.HTTPTransport(verify=verify)
        _install(transport, lambda inner: _Backend(inner, self.deadline))
        self.client = httpx.Client(transport=transport, verify=verify, timeout=_timeout(timeout, connect_timeout),
                                   follow_redirects=False)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.client.close()


class AsyncSession:
    """Like `Session`, with an `httpx.AsyncClient`; an async context manager."""

    def __init__(self, *, verify: ssl.SSLContext, timeout: float, connect_timeout: float | None = None) -> None:
        self.deadline = Deadline()
        transport = httpx.AsyncHTTPTransport(verify=verify)
        _install(transport, lambda inner: _AsyncBackend(inner, self.deadline))
        self.client = httpx.AsyncClient(transport=transport, verify=verify,
                                        timeout=_timeout(timeout, connect_timeout), follow_redirects=False)

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.aclose()
