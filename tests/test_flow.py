"""`k8s_jwt_auth._flow`: one flow, a sync and an async driver; flows are closed when a driver stops."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Generator

import pytest

from k8s_jwt_auth._flow import LARGE_ANSWER, arun, run


def _flow(log: list[str]) -> Generator[str, object, int]:
    try:
        first = yield "a"
        second = yield "b"
        assert isinstance(first, bytes) and isinstance(second, bytes)
        log.append(threading.current_thread().name)
        return len(first) + len(second)
    finally:
        log.append("closed")


def test_run_and_arun_answer_every_operation_and_return_the_result() -> None:
    sync_log: list[str] = []
    assert run(_flow(sync_log), lambda op: op.encode() * 2) == 4
    assert sync_log[-1] == "closed"

    async def answer(op: str) -> bytes:
        return op.encode() * 3

    async_log: list[str] = []
    assert asyncio.run(arun(_flow(async_log), answer)) == 6
    assert async_log == [threading.current_thread().name, "closed"]  # a small answer is parsed on the loop


def test_a_large_answer_is_sent_to_the_flow_in_a_worker_thread() -> None:
    log: list[str] = []

    async def answer(op: str) -> bytes:
        return b"x" * (LARGE_ANSWER + 1)

    assert asyncio.run(arun(_flow(log), answer)) == 2 * (LARGE_ANSWER + 1)
    assert log[0] != threading.current_thread().name and log[-1] == "closed"


def test_a_failing_operation_closes_the_flow() -> None:
    log: list[str] = []

    def fail(op: str) -> object:
        raise OSError("down")

    with pytest.raises(OSError):
        run(_flow(log), fail)
    assert log == ["closed"]

    async def afail(op: str) -> object:
        raise OSError("down")

    log.clear()
    with pytest.raises(OSError):
        asyncio.run(arun(_flow(log), afail))
    assert log == ["closed"]


def test_a_cancelled_caller_closes_its_flow_even_while_a_worker_thread_runs_it() -> None:
    release, entered, log = threading.Event(), threading.Event(), []

    def slow() -> Generator[str, object, None]:
        try:
            yield "a"
            entered.set()
            release.wait(5)
            yield "b"
        finally:
            log.append("closed")

    async def answer(op: str) -> bytes:
        return b"x" * (LARGE_ANSWER + 1)

    async def main() -> None:
        task = asyncio.ensure_future(arun(slow(), answer))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert log == []  # still running in the worker thread
        release.set()
        for _ in range(500):
            if log:
                break
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert log == ["closed"]
