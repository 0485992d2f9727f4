"""Hostile HTTP peers on 127.0.0.1: servers that trickle their answers or send what was not asked for.

Each runs in a daemon thread and serves a bounded number of connections; every loop is bounded in time, and
the server stops when the `with` block ends (client sockets are closed, so no thread outlives the test by more
than one send interval).
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
import time
from collections.abc import Callable, Iterator

__all__ = ["gzip_server", "trickle_server"]

MAX_SECONDS = 30.0  # no hostile connection is served longer than this


@contextlib.contextmanager
def _serve(handle: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stop = threading.Event()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=_guarded, args=(handle, conn, stop), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _guarded(handle: Callable[[socket.socket, threading.Event], None], conn: socket.socket,
             stop: threading.Event) -> None:
    with conn, contextlib.suppress(OSError):
        conn.settimeout(2.0)
        with contextlib.suppress(TimeoutError):
            conn.recv(65536)  # the request (small: a GET or a TokenReview POST)
        handle(conn, stop)


def trickle_server(answer: bytes = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + b"X-Pad: a\r\n" * 500,
                   interval: float = 0.05) -> contextlib.AbstractContextManager[str]:
    """A server that sends `answer` (by default a status line and endless headers) one byte per `interval`
    seconds: each byte arrives well within any read timeout, so only a deadline on the whole exchange ends it."""

    def handle(conn: socket.socket, stop: threading.Event) -> None:
        ends = time.monotonic() + MAX_SECONDS
        for byte in answer:
            if stop.is_set() or time.monotonic() > ends:
                return
            conn.sendall(bytes([byte]))
            time.sleep(interval)

    return _serve(handle)


def gzip_server(plain: bytes, encoding: str = "gzip") -> contextlib.AbstractContextManager[str]:
    """A server that answers every request with `plain` gzip-compressed (once per `gzip` in `encoding`) and says
    so in `Content-Encoding`, although the client asked for identity."""
    body = plain
    for _ in range(encoding.count("gzip")):
        body = gzip.compress(body)

    def handle(conn: socket.socket, stop: threading.Event) -> None:
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: {encoding}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        conn.sendall(head + body)

    return _serve(handle)
