"""HTTP clients whose every exchange has ONE deadline: connect, TLS, request, status line, headers and body.

httpx's timeouts apply to each socket operation: a server that sends its status line or headers one byte at a
time, just under the read timeout, holds a request for as long as it likes. These clients route every socket
operation through a network backend that gives it `min(its own timeout, time left before the deadline)` and fails
it with a timeout once the deadline has passed, so an exchange never outlives its deadline by more than one
socket operation (the last one is given only what is left).

A deadline is set per exchange with `bounded(seconds)`: it lives in a context variable, so it belongs to the thread
(blocking client) or the task (async client) that runs the exchange. One client, and its pool of kept-alive
connections, can therefore serve many threads at once, each exchange under its own deadline; a connection reused
from the pool obeys the deadline of whichever exchange uses it now. The deadline also counts the connections the
exchange opened (`Deadline.connects`): none means the request went over a kept-alive connection.
The connect phase has its own, shorter limit (`connect_timeout`) so that an unreachable peer fails fast.
"""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

__all__ = ["AsyncSession", "Deadline", "Session", "bounded"]

logger = logging.getLogger("k8s_jwt_auth.keys")
_LAST_CHANCE = 1e-6  # seconds a socket operation gets once the deadline has passed
_DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's own default


class Deadline:
    """A point in `time.monotonic()` time (`math.inf`: none), and the connections opened before it."""

    __slots__ = ("at", "connects")

    def __init__(self, seconds: float | None = None) -> None:
        self.at = math.inf if seconds is None else time.monotonic() + seconds
        self.connects = 0

    def left(self, timeout: float | None) -> float | None:
        """The time a socket operation may take: its own `timeout`, cut to what is left of the deadline.

        Past the deadline it is a microsecond, so the operation fails with the network layer's own timeout
        error (whichever httpcore the transport uses) unless its data is already there.
        """
        if self.at == math.inf:
            return timeout
        left = max(self.at - time.monotonic(), _LAST_CHANCE)
        return left if timeout is None else min(timeout, left)


_NONE = Deadline()  # outside an exchange (a pool closing its connections): each operation's own timeout
_CURRENT: ContextVar[Deadline] = ContextVar("k8s_jwt_auth_http_deadline", default=_NONE)


@contextlib.contextmanager
def bounded(seconds: float) -> Iterator[Deadline]:
    """Run the block's exchange (in this thread or task) under a deadline `seconds` from now."""
    deadline = Deadline(seconds)
    token = _CURRENT.set(deadline)
    try:
        yield deadline
    finally:
        _CURRENT.reset(token)


def _left(timeout: float | None) -> float | None:
    return _CURRENT.get().left(timeout)


def _connected() -> None:
    _CURRENT.get().connects += 1


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        left = _left(timeout)
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        _connected()
        return _Stream(self._inner.connect_tcp(host, port, _left(timeout), local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        _connected()
        return _Stream(self._inner.connect_unix_socket(path, _left(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, _left(timeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, _left(timeout))

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        left = _left(timeout)
        return _AsyncStream(await self._inner.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        _connected()
        return _AsyncStream(await self._inner.connect_tcp(host, port, _left(timeout), local_address, socket_options))

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        _connected()
        return _AsyncStream(await self._inner.connect_unix_socket(path, _left(timeout), socket_options))

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
    """A blocking `httpx.Client` (`.client`) with one deadline per exchange (`bounded`); a context manager.

    `limits` bounds its pool of kept-alive connections (httpx's default without it). The client is thread-safe:
    one session may serve every thread of a process. Requests that go through a proxy from the environment
    (`HTTPS_PROXY`) are bounded per socket operation only.
    """

    def __init__(self, *, verify: ssl.SSLContext, timeout: float, connect_timeout: float | None = None,
                 limits: httpx.Limits | None = None) -> None:
        transport = httpx.HTTPTransport(verify=verify, limits=limits or _DEFAULT_LIMITS)
        _install(transport, _Backend)
        self.client = httpx.Client(transport=transport, verify=verify, timeout=_timeout(timeout, connect_timeout),
                                   follow_redirects=False)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.client.close()


class AsyncSession:
    """Like `Session`, with an `httpx.AsyncClient` (bound to the event loop that first uses it); an async context
    manager."""

    def __init__(self, *, verify: ssl.SSLContext, timeout: float, connect_timeout: float | None = None,
                 limits: httpx.Limits | None = None) -> None:
        transport = httpx.AsyncHTTPTransport(verify=verify, limits=limits or _DEFAULT_LIMITS)
        _install(transport, _AsyncBackend)
        self.client = httpx.AsyncClient(transport=transport, verify=verify,
                                        timeout=_timeout(timeout, connect_timeout), follow_redirects=False)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.aclose()
