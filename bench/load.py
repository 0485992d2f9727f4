"""Requests per second under concurrent load: bare vs our adapter vs hand-rolled glue, real servers on 127.0.0.1.

    python bench/load.py            # 5 interleaved rounds of 8 s per server (about 7 minutes)
    python bench/load.py --quick    # one short round (2 s per server): a smoke run
    python bench/load.py --rounds 3 --seconds 6 --frameworks starlette,flask

Servers (bench/apps/load_app.py builds the same apps as bench/adapters.py): uvicorn with one worker for
Starlette and FastAPI, gunicorn with 2 sync workers for Flask and Django. The load generator is `wrk` (apt
package `wrk`) with one thread and 32 connections, every request carrying the same valid token (so the cached
path). Without wrk the script says so and falls back to an async client (httpx.AsyncClient, 32 connections, 32
concurrent tasks), which is much slower than wrk and so measures less of the server.

The machine has 2 cores and the load generator competes with the server for them: wrk runs one thread (`-t1`),
so it takes at most one core; `--pin` also pins the server to CPU 0 and wrk to CPU 1 (`taskset`), which is steadier
on an idle machine but worse on a shared one (the server cannot move off a core another process is using).
Rounds are interleaved (every round runs every framework in
bare, ours and hand-rolled mode, in a rotated order), so background load hits all modes alike; the table gives
the median req/s over rounds, the spread (min-max) and the ratio of the medians to the bare app's. Every
response must be 2xx (wrk's non-2xx count and socket errors are checked).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
APPS = os.path.join(HERE, "apps")
sys.path.insert(0, APPS)

from frameworks import FRAMEWORKS, MODES, Bench  # noqa: E402
from http_overhead import stop  # noqa: E402

CONNECTIONS = 32
UVICORN_WORKERS = 1
GUNICORN_WORKERS = 2
SERVER_CPU, CLIENT_CPU = "0", "1"
PIN = False  # --pin: taskset the server to CPU 0 and wrk to CPU 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpu: str, command: list[str]) -> list[str]:
    if PIN and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", cpu, *command]
    return command


def server_command(framework: str, port: int) -> list[str]:
    if framework in ("starlette", "fastapi"):
        command = [sys.executable, "-m", "uvicorn", "load_app:app", "--host", "127.0.0.1", "--port", str(port),
                   "--workers", str(UVICORN_WORKERS), "--log-level", "warning", "--no-access-log"]
    else:
        import gunicorn

        # gunicorn >= 25.1 opens a control socket in $HOME shared by every gunicorn: not wanted here
        quiet = ["--no-control-socket"] if gunicorn.version_info >= (25, 1) else []
        command = [sys.executable, "-m", "gunicorn", "load_app:app", "-b", f"127.0.0.1:{port}", "-k", "sync",
                   "-w", str(GUNICORN_WORKERS), "--log-level", "warning", "--backlog", "256", *quiet]
    return pinned(SERVER_CPU, command)


@contextlib.contextmanager
def server(framework: str, mode: str, env: dict[str, str], token: str) -> Iterator[str]:
    """A server process for one app; waits (bounded) until it answers 200 with the token."""
    import httpx

    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(server_command(framework, port), cwd=APPS,
                            env={**env, "BENCH_FRAMEWORK": framework, "BENCH_MODE": mode},
                            stdout=subprocess.DEVNULL, stderr=log)

    def detail() -> str:
        log.seek(0)
        return log.read().decode(errors="replace")[-2000:]

    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{framework}/{mode} exited: {detail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{framework}/{mode} did not start")
            with contextlib.suppress(httpx.HTTPError):
                status = httpx.get(base + "/", headers={"Authorization": f"Bearer {token}"}, timeout=2).status_code
                if status != 200:
                    raise RuntimeError(f"{framework}/{mode} answered {status}: {detail()}")
                break
            time.sleep(0.1)
        yield base
    finally:
        stop(proc)
        log.close()


def wrk(base: str, token: str, seconds: float) -> float:
    command = pinned(CLIENT_CPU, ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--latency",
                                  "-H", f"Authorization: Bearer {token}", base + "/"])
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw non-2xx responses:\n{out}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors and (int(errors.group(1)) or int(errors.group(3)) or int(errors.group(4))):
        raise RuntimeError(f"wrk saw socket errors:\n{out}")  # read errors: gunicorn sync closes after each reply
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{out}")
    return float(found.group(1))


def async_client(base: str, token: str, seconds: float) -> float:
    """The fallback without wrk: CONNECTIONS concurrent tasks on one httpx.AsyncClient for `seconds`."""
    import httpx

    async def run() -> float:
        limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
        done = [0]
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30,
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            stop = time.perf_counter() + seconds

            async def worker() -> None:
                while time.perf_counter() < stop:
                    response = await client.get("/")
                    if response.status_code != 200:
                        raise RuntimeError(f"HTTP {response.status_code}")
                    done[0] += 1

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
            return done[0] / (time.perf_counter() - start)

    return asyncio.run(run())


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("uvicorn", "h11", "httptools", "uvloop", "gunicorn", "starlette", "fastapi", "flask", "django",
                 "pyjwt", "cachetools"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} not installed")
    return f"CPython {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores; " + ", ".join(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of 2 s per server")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --quick: 1)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds of load per server (default 8)")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated subset")
    parser.add_argument("--pin", action="store_true", help="taskset: server on CPU 0, wrk on CPU 1")
    args = parser.parse_args(argv)
    global PIN
    PIN = args.pin
    rounds = args.rounds or (1 if args.quick else 5)
    seconds = args.seconds or (2.0 if args.quick else 8.0)
    frameworks = [f for f in args.frameworks.split(",") if f]
    if shutil.which("wrk"):
        generator, load = f"wrk -t1 -c{CONNECTIONS}" + (f" (pinned to CPU {CLIENT_CPU})" if PIN else ""), wrk
    else:
        print("wrk is NOT installed (apt-get install -y wrk): falling back to httpx.AsyncClient with "
              f"{CONNECTIONS} connections, which loads the server far less than wrk", file=sys.stderr)
        generator, load = f"httpx.AsyncClient, {CONNECTIONS} connections (wrk missing)", async_client
    bench = Bench.generate()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({"keys": [bench.jwk]}, fh)
    env = {**os.environ, "BENCH_JWKS_FILE": fh.name, "PYTHONPATH": APPS}
    where = f"pinned to CPU {SERVER_CPU}" if PIN else "not pinned"
    print(f"# Under concurrent load\n\n{versions()}\nload generator: {generator}; servers {where}: "
          f"uvicorn {UVICORN_WORKERS} worker (Starlette, FastAPI), gunicorn {GUNICORN_WORKERS} sync workers "
          f"(Flask, Django); {seconds:g} s per measurement after a 1 s warm-up, {rounds} interleaved rounds")
    results: dict[str, dict[str, list[float]]] = {f: {m: [] for m in MODES} for f in frameworks}
    failures: list[str] = []
    try:
        for index in range(rounds):
            for framework in frameworks:
                for mode in MODES[index % 3:] + MODES[:index % 3]:
                    for attempt in (1, 2):  # a failed measurement is retried once with a new server, then left out
                        try:
                            with server(framework, mode, env, bench.token) as base:
                                load(base, bench.token, 1.0)  # warm-up: imports, caches, keep-alive connections
                                results[framework][mode].append(load(base, bench.token, seconds))
                            break
                        except (RuntimeError, subprocess.SubprocessError) as exc:
                            print(f"round {index + 1} {framework} {mode}: attempt {attempt} failed: {exc}",
                                  file=sys.stderr)
                            failures.append(f"{framework}/{mode}")
                    else:
                        continue
                    print(f"round {index + 1} {framework:9} {mode:4} {results[framework][mode][-1]:9,.0f} req/s",
                          file=sys.stderr)
    finally:
        os.unlink(fh.name)
    summary: dict[str, Any] = {}
    print(f"\n## req/s, median of {rounds} interleaved rounds (min-max)\n")
    print("| server | bare | ours | hand-rolled | ours / bare | hand-rolled / bare |")
    print("| --- | --- | --- | --- | --- | --- |")
    for framework, modes in results.items():
        if not all(modes.values()):
            print(f"| {framework} | no measurement in some mode |")
            continue
        med = {mode: statistics.median(values) for mode, values in modes.items()}
        spread = {mode: f"{med[mode]:,.0f} ({min(v):,.0f}-{max(v):,.0f})" for mode, v in modes.items()}
        server_name = "uvicorn" if framework in ("starlette", "fastapi") else "gunicorn sync"
        print(f"| {framework} + {server_name} | {spread['bare']} | {spread['ours']} | {spread['hand']} | "
              f"{med['ours'] / med['bare']:.1%} | {med['hand'] / med['bare']:.1%} |")
        summary[framework] = {"bare": round(med["bare"]), "ours": round(med["ours"]), "hand": round(med["hand"]),
                              "ours_vs_bare": round(med["ours"] / med["bare"], 3),
                              "hand_vs_bare": round(med["hand"] / med["bare"], 3)}
    if failures:
        print(f"\nfailed measurements (retried or left out): {', '.join(failures)}")
        summary["failures"] = failures
    print()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
