"""The example apps under their real start commands, in subprocesses on 127.0.0.1, with bounded waits.

Each example is started exactly as its docs say (`uvicorn --app-dir examples/<app> ...` or
`gunicorn --chdir examples/<app> ...`, from the repository root), plus only what a test needs: where to listen
(uvicorn: `--host 127.0.0.1 --port 0`, the port read from its log; gunicorn: `--bind fd://N` on a socket bound
here first) and quiet logs. Every wait is bounded; a server that does not stop is killed.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import gunicorn
import httpx

__all__ = ["EXAMPLES", "REPO", "Example", "Server", "example_env", "raw_get", "serve"]

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
_UVICORN_LISTENING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


@dataclass(frozen=True)
class Example:
    """An example app: the server that runs it and the arguments of its documented start command."""

    server: str  # "uvicorn" or "gunicorn"
    args: tuple[str, ...]


EXAMPLES: dict[str, Example] = {
    "fastapi": Example("uvicorn", ("--app-dir", "examples/fastapi_app", "app:app")),
    "starlette": Example("uvicorn", ("--app-dir", "examples/starlette_app", "app:app")),
    "flask": Example("gunicorn", ("--chdir", "examples/flask_app", "app:app")),
    "django-asgi": Example("uvicorn", ("--app-dir", "examples/django_project", "example_project.asgi:application")),
    "django-wsgi": Example("gunicorn", ("--chdir", "examples/django_project", "example_project.wsgi:application")),
}


def example_env(**variables: str) -> dict[str, str]:
    """The test process's environment without K8S_JWT_AUTH_*/DJANGO_* variables, plus K8S_JWT_AUTH_<name>s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("K8S_JWT_AUTH_", "DJANGO_"))}
    env.update({f"K8S_JWT_AUTH_{name}": value for name, value in variables.items()})
    return env


class Server:
    """One example in a subprocess; its output (stdout and stderr) is drained by a thread into `output`.

    Call `url()` to wait until it serves, `wait()` to wait for it to exit, and always `stop()` (idempotent).
    """

    def __init__(self, example: Example, env: Mapping[str, str]) -> None:
        self.example = example
        self._listener: socket.socket | None = None
        self._url: str | None = None
        if example.server == "uvicorn":
            command = [sys.executable, "-m", "uvicorn", *example.args, "--host", "127.0.0.1", "--port", "0",
                       "--no-access-log"]
            pass_fds: tuple[int, ...] = ()
        else:
            self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._listener.bind(("127.0.0.1", 0))
            self._listener.listen(64)
            self._url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
            pass_fds = (self._listener.fileno(),)
            command = [sys.executable, "-m", "gunicorn", *example.args, "--bind", f"fd://{pass_fds[0]}",
                       "--workers", "1"]
            if gunicorn.version_info >= (25, 1):  # no control socket in $HOME shared by every gunicorn
                command.append("--no-control-socket")
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        try:
            self.proc = subprocess.Popen(command, cwd=REPO, env=dict(env), pass_fds=pass_fds,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True, errors="replace")
        finally:
            # The child holds the socket now: once it exits, connections are refused instead of hanging.
            if self._listener is not None:
                self._listener.close()
        self._reader = threading.Thread(target=self._drain, name="example-output", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def log(self) -> str:
        return "".join(self.output)

    def url(self, timeout: float = STARTUP_TIMEOUT) -> str:
        """The base URL once `/healthz` answers 200. Raises RuntimeError if it exits or is not up in time."""
        deadline = time.monotonic() + timeout
        if self._url is None:  # uvicorn: the port it chose is in its log
            while self._url is None:
                try:
                    line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
                except queue.Empty:
                    raise RuntimeError(f"the example did not start in {timeout} s:\n{self.log()}") from None
                if line is None:
                    raise RuntimeError(f"the example exited with {self.proc.wait(STOP_TIMEOUT)}:\n{self.log()}")
                if match := _UVICORN_LISTENING.search(line):
                    self._url = match.group(1)
        while (remaining := deadline - time.monotonic()) > 0:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the example exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self._url}/healthz", timeout=min(remaining, 2.0)).status_code == 200:
                    return self._url
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the example did not answer /healthz in {timeout} s:\n{self.log()}")

    def wait(self, timeout: float = STARTUP_TIMEOUT) -> int:
        """Wait (bounded) for the server to exit by itself; return its exit code."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=STOP_TIMEOUT)
        return code

    def stop(self) -> None:
        """Terminate the server (kill it if it does not stop in time) and release its pipe."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        self._reader.join(timeout=STOP_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def serve(example: Example, env: Mapping[str, str]) -> Iterator[httpx.Client]:
    """Run `example` until the block ends; yield an httpx client on its base URL."""
    server = Server(example, env)
    try:
        with httpx.Client(base_url=server.url(), timeout=10) as client:
            yield client
    finally:
        server.stop()


def raw_get(base_url: str, path: str, headers: list[tuple[bytes, bytes]], timeout: float = 10.0) -> int:
    """The status of `GET path` sent byte for byte (httpx refuses to send some malformed header values)."""
    url = httpx.URL(base_url)
    host, port = url.host, url.port
    assert port is not None
    request = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
    request += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    request += b"Connection: close\r\n\r\n"
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it may answer before reading all
            sock.sendall(request)
        with sock.makefile("rb") as response:
            status_line = response.readline()
    return int(status_line.split()[1])
