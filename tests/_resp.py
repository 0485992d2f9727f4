"""Hostile Redis servers: a tiny RESP server on 127.0.0.1 whose every reply a test chooses, optionally trickled.

`RespServer(answer)` reads RESP commands (arrays of bulk strings, as redis-py sends them) and writes
`answer(command)` for each, where `command` is the list of arguments (`[b"GET", b"name"]`). With `trickle`,
each reply is written one byte at a time with that many seconds between bytes: a peer that keeps every single
socket read under its timeout while holding the whole call for as long as it likes. Every wait is bounded;
`stop()` closes the listener and every connection.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["HELLO_3", "RespServer", "after_handshake", "resp_server"]

#: A minimal RESP3 answer to `HELLO 3` (a map with `proto` 3), which redis-py checks.
HELLO_3 = b"%1\r\n$5\r\nproto\r\n:3\r\n"
IO_TIMEOUT = 10.0


def after_handshake(reply: bytes) -> Callable[[list[bytes]], bytes]:
    """Answer the connection handshake (`HELLO`, `CLIENT ...`) properly and every other command with `reply`."""

    def answer(command: list[bytes]) -> bytes:
        name = command[0].upper() if command else b""
        if name == b"HELLO":
            return HELLO_3
        if name == b"CLIENT":
            return b"+OK\r\n"
        return reply

    return answer


class RespServer:
    """A RESP server on a free port of 127.0.0.1; a thread per connection; counts the commands it received."""

    def __init__(self, answer: Callable[[list[bytes]], bytes], *, trickle: float = 0.0) -> None:
        self.answer, self.trickle = answer, trickle
        self.commands: list[list[bytes]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, name="resp-server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(IO_TIMEOUT)
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(IO_TIMEOUT)
            with self._lock:
                self._connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), name="resp-connection", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while not self._stop.is_set():
                command = _read_command(reader)
                if command is None:
                    return
                with self._lock:
                    self.commands.append(command)
                self._send(conn, self.answer(command))
        except (OSError, ValueError):
            return
        finally:
            reader.close()

    def _send(self, conn: socket.socket, reply: bytes) -> None:
        if not self.trickle:
            conn.sendall(reply)
            return
        for byte in reply:
            if self._stop.wait(self.trickle):
                return
            conn.sendall(bytes([byte]))


def _read_command(reader: object) -> list[bytes] | None:
    """One command (`*N` then N `$len` bulk strings), or `None` when the client has gone."""
    readline = reader.readline  # type: ignore[attr-defined]
    read = reader.read  # type: ignore[attr-defined]
    line = readline()
    if not line:
        return None
    if not line.startswith(b"*"):
        return line.strip().split()  # an inline command
    command = []
    for _ in range(int(line[1:])):
        size = int(readline()[1:])
        command.append(read(size + 2)[:-2])
    return command


@contextmanager
def resp_server(answer: Callable[[list[bytes]], bytes], *, trickle: float = 0.0) -> Iterator[RespServer]:
    server = RespServer(answer, trickle=trickle)
    try:
        yield server
    finally:
        server.stop()
