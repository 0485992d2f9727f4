"""Driving I/O flows: a flow written once as a generator, run by a sync and an async driver.

A flow (`JwksFetcher`, `SharedJwksFetcher`, `TokenReviewer`) is a generator that yields I/O operations and is
sent, for each one, the operation's answer (a value, or an exception *value* the flow inspects); what it
returns is the flow's result. It does no I/O itself, so the same code serves threads and event loops:

```python
result = run(flow, do)            # do(op) -> answer, blocking
result = await arun(flow, ado)    # await ado(op) -> answer, never blocking the loop
```

as httpx's `Auth.auth_flow` is run by `sync_auth_flow`/`async_auth_flow`. Both drivers close the flow when
they stop (an exception, a cancellation), so its `finally` blocks run at once. `arun` hands an answer larger
than `LARGE_ANSWER` bytes to a worker thread for the flow to parse, so that a hostile server's megabyte
document never holds the event loop.

`wait_async` waits for a `concurrent.futures.Future` another thread or task settles (single flight) without
blocking the loop.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["LARGE_ANSWER", "Flow", "arun", "run", "wait_async"]

_Op = TypeVar("_Op")
_R = TypeVar("_R")

Flow = Generator[_Op, Any, _R]  # yields operations, is sent their answers, returns the result

LARGE_ANSWER = 64 * 1024  # bytes; a Kubernetes JWKS is about 1 KiB, a TokenReview answer less


def run(flow: Flow[_Op, _R], do: Callable[[_Op], object]) -> _R:
    """Run `flow`, answering each operation with `do(op)` (blocking). Returns what the flow returns."""
    try:
        op = next(flow)
        while True:
            op = flow.send(do(op))
    except StopIteration as done:
        result: _R = done.value
        return result
    finally:
        flow.close()


async def arun(flow: Flow[_Op, _R], do: Callable[[_Op], Awaitable[object]]) -> _R:
    """Run `flow`, answering each operation with `await do(op)`; never blocks the event loop.

    A large answer (more than `LARGE_ANSWER` bytes) is sent to the flow in a worker thread.
    """
    try:
        op = next(flow)
        while True:
            answer = await do(op)
            if _size(answer) > LARGE_ANSWER:
                done, step = await _send_in_thread(flow, answer)
                if done:
                    result: _R = step
                    return result
                op = step
            else:
                op = flow.send(answer)
    except StopIteration as stopped:
        result = stopped.value
        return result
    finally:  # also on cancellation; a flow still busy in a worker thread is closed by that thread's callback
        if inspect.getgeneratorstate(flow) != inspect.GEN_RUNNING:
            flow.close()


def _size(answer: object) -> int:
    """The size in bytes of an answer a flow parses: a body (`bytes`) or a response carrying one (`.body`)."""
    if isinstance(answer, bytes):
        return len(answer)
    body = getattr(answer, "body", None)
    return len(body) if isinstance(body, bytes) else 0


async def _send_in_thread(flow: Flow[_Op, _R], answer: object) -> tuple[bool, Any]:
    """`flow.send(answer)` in a worker thread: `(False, next operation)` or `(True, the flow's result)`."""
    step = asyncio.ensure_future(asyncio.to_thread(_send, flow, answer))
    try:
        return await asyncio.shield(step)
    except asyncio.CancelledError:
        step.add_done_callback(lambda finished: _close_after(flow, finished))
        raise


def _send(flow: Flow[_Op, _R], answer: object) -> tuple[bool, Any]:
    try:
        return False, flow.send(answer)
    except StopIteration as done:  # returned as a value: StopIteration cannot cross a Future
        return True, done.value


def _close_after(flow: Flow[_Op, _R], finished: asyncio.Future[tuple[bool, Any]]) -> None:
    """Close a flow whose caller was cancelled while a worker thread ran it (its error is not wanted)."""
    if not finished.cancelled():
        finished.exception()  # retrieved, so that asyncio does not log it as never retrieved
    flow.close()


async def wait_async(future: Future[Any], timeout: float) -> None:
    """Wait (at most `timeout` seconds) for a future another thread or task settles; never cancels it."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def wake(_: object) -> None:
        try:
            loop.call_soon_threadsafe(_resolve, done)
        except RuntimeError:  # the loop closed while this waiter was pending
            pass

    future.add_done_callback(wake)
    try:
        await asyncio.wait_for(done, timeout)
    except asyncio.TimeoutError:
        pass


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
