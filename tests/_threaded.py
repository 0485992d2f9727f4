"""Servers on 127.0.0.1 in a thread of the test process, with bounded waits: an ASGI app under uvicorn, and a
plain `http.server` that echoes the `Authorization` header it got."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from typing import Any

import uvicorn

__all__ = ["JsonHandler", "echo_server", "handler_server", "serving", "uvicorn_server"]

STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


@contextlib.contextmanager
def uvicorn_server(app: Any) -> Iterator[str]:
    """Serve the ASGI `app` with uvicorn on 127.0.0.1 until the block ends; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start in time")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(STOP_TIMEOUT)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop in time"


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet `http.server` handler whose subclasses answer with `reply(status, body)` (a JSON body)."""

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass


class _Echo(JsonHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.reply(200, json.dumps({"authorization": self.headers.get("Authorization")}).encode())


@contextlib.contextmanager
def serving(server: HTTPServer) -> Iterator[str]:
    """Run a bound `http.server`-style server (werkzeug's included) in a thread; yield its base URL."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(STOP_TIMEOUT)


@contextlib.contextmanager
def handler_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[tuple[ThreadingHTTPServer, str]]:
    """A threading `http.server` with `handler` on 127.0.0.1 until the block ends; yields (server, base URL)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    with serving(server) as url:
        yield server, url


@contextlib.contextmanager
def echo_server() -> Iterator[str]:
    """A server whose every `GET` answers `{"authorization": <the header or null>}`; yields its base URL."""
    with handler_server(_Echo) as (_, url):
        yield url
