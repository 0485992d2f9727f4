"""Helpers for the gRPC tests: real servers on 127.0.0.1 (sync, and aio in a thread of its own), a JSON echo
service with the four call types (no protobuf code generation), and one client call of any type."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from k8s_jwt_auth.integrations.grpc import NoWorkloadError, current_workload, get_current_workload

__all__ = ["KINDS", "SERVICE", "AioServer", "Switch", "aio_handlers", "call", "decode", "encode", "method",
           "serve_sync", "sync_handlers"]

SERVICE = "test.Echo"
KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def decode(data: bytes) -> Any:
    return json.loads(data)


def method(kind: str, service: str = SERVICE) -> str:
    """The full method name of the echo service's method of one call type: `/test.Echo/UnaryStream`."""
    return f"/{service}/" + "".join(part.capitalize() for part in kind.split("_"))


def _who() -> str | None:
    """Who the handler sees: the username, `anonymous` (no workload), checked both ways."""
    workload = get_current_workload()
    try:
        assert current_workload() is workload
    except NoWorkloadError:
        assert workload is None
        return "anonymous"
    return workload.username


# -- the echo service: every response says who the handler saw, at every step ----------------------------------


def _uu(request: Any, context: grpc.ServicerContext) -> Any:
    return {"who": _who(), "echo": request}


def _us(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
    for i in range(int(request)):
        yield {"who": _who(), "i": i}


def _su(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
    return {"who": _who(), "got": list(requests)}


def _ss(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    for request in requests:
        yield {"who": _who(), "echo": request}


async def _auu(request: Any, context: Any) -> Any:
    await asyncio.sleep(0)
    return {"who": _who(), "echo": request}


async def _aus(request: Any, context: Any) -> AsyncIterator[Any]:
    for i in range(int(request)):
        await asyncio.sleep(0)
        yield {"who": _who(), "i": i}


async def _asu(requests: AsyncIterator[Any], context: Any) -> Any:
    return {"who": _who(), "got": [r async for r in requests]}


async def _ass(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
    async for request in requests:
        yield {"who": _who(), "echo": request}


def _handlers(service: str, behaviours: Sequence[Callable[..., Any]]) -> grpc.GenericRpcHandler:
    factories = (grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler,
                 grpc.stream_unary_rpc_method_handler, grpc.stream_stream_rpc_method_handler)
    return grpc.method_handlers_generic_handler(service, {
        method(kind).rsplit("/", 1)[1]: factory(behaviour, request_deserializer=decode, response_serializer=encode)
        for kind, factory, behaviour in zip(KINDS, factories, behaviours, strict=True)})


def sync_handlers(service: str = SERVICE) -> grpc.GenericRpcHandler:
    """The echo service with plain (sync) handlers: for sync servers, and for aio servers (run on their pool)."""
    return _handlers(service, (_uu, _us, _su, _ss))


def aio_handlers(service: str = SERVICE) -> grpc.GenericRpcHandler:
    """The echo service with coroutine and async-generator handlers (aio servers)."""
    return _handlers(service, (_auu, _aus, _asu, _ass))


# -- one interceptor per test on a server started once --------------------------------------------------------


class Switch(grpc.ServerInterceptor, grpc.aio.ServerInterceptor):
    """Hands every call to `current` (our interceptor of the test), so that one server serves every test."""

    current: Any = None

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        assert self.current is not None, "the test set no interceptor"
        return self.current.intercept_service(continuation, handler_call_details)


def _health() -> health.HealthServicer:
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return servicer


@contextlib.contextmanager
def serve_sync(interceptors: Sequence[grpc.ServerInterceptor], *handlers: grpc.GenericRpcHandler,
               workers: int = 4) -> Iterator[str]:
    """A sync `grpc.server` on 127.0.0.1 with the health service and `handlers`; yields its target."""
    pool = futures.ThreadPoolExecutor(workers)
    server = grpc.server(pool, interceptors=interceptors)
    server.add_generic_rpc_handlers(handlers)
    health_pb2_grpc.add_HealthServicer_to_server(_health(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait(STOP_TIMEOUT)
        pool.shutdown(wait=True, cancel_futures=True)


class AioServer:
    """A `grpc.aio.server` on 127.0.0.1 running in a thread with its own event loop (the test calls it with sync
    clients). Use as a context manager; `target` is `127.0.0.1:<port>`."""

    def __init__(self, interceptors: Sequence[Any], *handlers: grpc.GenericRpcHandler) -> None:
        self.interceptors, self.handlers = interceptors, handlers
        self.target = ""
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="grpc-aio-server", daemon=True)

    def __enter__(self) -> AioServer:
        self._thread.start()
        if not self._ready.wait(TIMEOUT) or self._error is not None:
            raise RuntimeError("the aio server did not start") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None and self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(STOP_TIMEOUT)
        assert not self._thread.is_alive(), "the aio server did not stop"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self.loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = grpc.aio.server(futures.ThreadPoolExecutor(4), interceptors=self.interceptors)
        server.add_generic_rpc_handlers(self.handlers)
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self.target = f"127.0.0.1:{port}"
        self._ready.set()
        await self._stop.wait()
        await server.stop(None)


# -- the client side --------------------------------------------------------------------------------------------


def call(channel: grpc.Channel, kind: str, *, metadata: Sequence[tuple[str, str]] | None = None,
         name: str | None = None, requests: int = 2) -> Any:
    """One call of `kind` to the echo service (or `name`): its response, or the list of its responses.

    Raises:
        grpc.RpcError: the call ended with a status other than OK.
    """
    multicallable = getattr(channel, kind)(name or method(kind), request_serializer=encode,
                                           response_deserializer=decode)
    argument: Any = iter(range(requests)) if kind.startswith("stream") else requests
    result = multicallable(argument, metadata=metadata, timeout=TIMEOUT)
    return list(result) if kind.endswith("stream") else result
