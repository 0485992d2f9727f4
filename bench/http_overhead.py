"""HTTP overhead: the same hello-world app with and without our auth, on a real server on 127.0.0.1.

Each server runs in its own process (uvicorn for Starlette, gunicorn for Flask); one client with a
keep-alive connection sends a bounded number of requests carrying a valid token (so the server
takes the cached path). Runs alternate without/with auth and the median of each is kept.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from k8s_jwt_auth.testing import SigningKey, build_claims, sign

HERE = os.path.dirname(os.path.abspath(__file__))
ISSUER = "https://bench.cluster.local"
AUDIENCE = "bench"
CLIENTS = 1  # one keep-alive client: with 2 cores, more client threads make the server compete with them


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(command: list[str], port: int, env: dict[str, str]) -> Iterator[str]:
    """Start a server process and wait (bounded) until it answers on 127.0.0.1:port."""
    proc = subprocess.Popen(command, cwd=os.path.join(HERE, "apps"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(base + "/", timeout=1)
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"server did not start: {' '.join(command)}")
        yield base
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server process: SIGTERM, then SIGKILL after 10 s (bounded waits)."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def load(base: str, token: str, requests: int, threads: int) -> float:
    """Requests per second for `requests` GETs from `threads` keep-alive clients (all must be 200)."""
    per_thread = requests // threads
    failures: list[int] = []
    clients = [httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10)
               for _ in range(threads)]  # built here: concurrent first imports inside httpx/httpcore race

    def client(http: httpx.Client) -> None:
        with http:
            for _ in range(per_thread):
                status = http.get("/").status_code
                if status != 200:
                    failures.append(status)

    workers = [threading.Thread(target=client, args=(http,)) for http in clients]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. HTTP {failures[0]}")
    return per_thread * threads / elapsed


def measure(name: str, command: Callable[[int], list[str]], env: dict[str, str], token: str, requests: int,
            rounds: int) -> tuple[float, float]:
    """Median requests/s without and with auth over alternating rounds (client and server share the
    machine, so single runs vary; the median of alternating rounds is stable to a few %)."""
    runs: dict[str, list[float]] = {"0": [], "1": []}
    for _ in range(rounds):
        for auth in ("0", "1"):
            port = free_port()
            with server(command(port), port, {**env, "BENCH_AUTH": auth}) as base:
                load(base, token, max(requests // 10, 20), CLIENTS)  # warm-up
                runs[auth].append(load(base, token, requests, CLIENTS))
    return statistics.median(runs["0"]), statistics.median(runs["1"])


def run(*, quick: bool, table: Callable[..., None]) -> dict[str, Any]:
    """Section 3 of bench/run.py; returns {app: with/without ratio}."""
    key = SigningKey.generate("RS256")
    token = sign(key, build_claims(issuer=ISSUER, audiences=[AUDIENCE], namespace="payments",
                                   service_account="api", lifetime=3600))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({"keys": [key.public_jwk()]}, fh)
    env = {**os.environ, "K8S_JWT_AUTH_ISSUER": ISSUER, "K8S_JWT_AUTH_AUDIENCES": AUDIENCE,
           "K8S_JWT_AUTH_JWKS_FILE": fh.name, "PYTHONPATH": os.path.join(HERE, "apps")}
    requests, rounds = (200, 1) if quick else (2000, 7)
    apps: dict[str, Callable[[int], list[str]]] = {
        "Starlette + uvicorn": lambda port: [sys.executable, "-m", "uvicorn", "starlette_hello:app", "--host",
                                              "127.0.0.1", "--port", str(port), "--log-level", "warning",
                                              "--no-access-log"],
    }
    if importlib.util.find_spec("gunicorn") and importlib.util.find_spec("k8s_jwt_auth.integrations.flask"):
        import gunicorn

        # gunicorn >= 25.1 opens a control socket in $HOME shared by every gunicorn: not wanted here
        quiet = ["--no-control-socket"] if gunicorn.version_info >= (25, 1) else []
        apps["Flask + gunicorn"] = lambda port: [sys.executable, "-m", "gunicorn", "flask_hello:app", "-b",
                                                 f"127.0.0.1:{port}", "-w", "1", "--threads", "4",
                                                 "--log-level", "warning", *quiet]
    rows, ratios = [], {}
    try:
        for name, command in apps.items():
            without, with_auth = measure(name, command, env, token, requests, rounds)
            ratios[name] = round(with_auth / without, 3)
            rows.append((name, f"{without:,.0f}", f"{with_auth:,.0f}", f"{with_auth / without:.1%}"))
    finally:
        os.unlink(fh.name)
    table(f"HTTP overhead ({requests} requests, {CLIENTS} keep-alive client, median of {rounds} alternating rounds)",
          ("server", "req/s without auth", "req/s with auth", "with / without"), rows)
    return ratios
