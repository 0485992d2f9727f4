"""Per-call overhead of the gRPC server interceptors on a cached token, against the same server without them.

    python bench/grpc.py            # the full run (about a minute on 2 cores)
    python bench/grpc.py --quick    # a smoke run: one short round (tests/test_grpc.py runs it)

Six servers in one child process on 127.0.0.1, each with the same unary-unary handler (it returns the request
bytes; no serializers): a sync `grpc.server` bare, with a no-op interceptor (it only calls `continuation`: what
grpc's interceptor machinery costs any interceptor) and with `K8sJWTAuthInterceptor`; a `grpc.aio.server` the same
three ways with `AioK8sJWTAuthInterceptor` (the verifier: static RS256 key, service policy with one allow rule, the
token verified once before timing, so every timed call takes the cached path). The client runs in this process, so the
servers keep a core's worth of GIL to themselves; every call sends the same `authorization: Bearer <token>`.

Two measurements per server and mode, in interleaved rounds (the three modes take turns, in a rotated order):

* **latency**: one sync client, one call at a time: µs per call;
* **throughput**: one `grpc.aio` client keeping 32 calls in flight for the measurement's seconds: calls per second
  (and the µs of server time per call it implies, 1e6 / calls per second).

The tables give the medians over rounds, the overhead (ours - bare) and the ratios ours / bare and ours / no-op
(the second is what our check costs beyond having an interceptor at all). Before timing,
each server is checked: bare and ours answer OK with the token, ours answers UNAUTHENTICATED without it.

On loopback a Python gRPC call costs hundreds of µs, and two cores shared by client and server make those
numbers move by more than the interceptor costs. So a last table times the interceptor in process, no network:
`intercept_service` plus the call of the handler it returns (the check, the contextvar, the wrapper), against
calling the bare handler; µs per call, median of 5.

The last line is JSON: {"sync"|"aio": {"bare_us", "noop_us", "ours_us", "overhead_us", "ratio", "bare_calls_per_s",
"noop_calls_per_s", "ours_calls_per_s", "throughput_ratio", "throughput_vs_noop", "in_process_us"}}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

# This file is bench/grpc.py: running it puts bench/ first on sys.path, where `import grpc` would find this file.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _HERE]

import grpc  # noqa: E402
import grpc.aio  # noqa: E402

from k8s_jwt_auth import TokenVerifier, VerifierConfig  # noqa: E402
from k8s_jwt_auth.integrations.grpc import AioK8sJWTAuthInterceptor, K8sJWTAuthInterceptor  # noqa: E402
from k8s_jwt_auth.testing import SigningKey, build_claims, sign  # noqa: E402

ISSUER = "https://bench.cluster.local"
AUDIENCE = "bench"
ALLOW = "payments/*"
METHOD = "/bench.Echo/Call"
SERVERS = ("sync", "aio")
MODES = ("bare", "noop", "ours")
IN_FLIGHT = 32
PAYLOAD = b"hello"
STARTUP_TIMEOUT = 30.0


# -- the servers (child process) --------------------------------------------------------------------------------


def _verifier(jwk: dict[str, Any]) -> TokenVerifier:
    return TokenVerifier(VerifierConfig(issuer=ISSUER, audiences=[AUDIENCE], jwks={"keys": [jwk]}, allow=ALLOW))


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


async def _aecho(request: bytes, context: Any) -> bytes:
    return request


class _NoOp(grpc.ServerInterceptor):
    """An interceptor that does nothing: the cost of grpc's interceptor machinery alone (sync servers)."""

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        return continuation(handler_call_details)


class _AioNoOp(grpc.aio.ServerInterceptor):
    """The same for grpc.aio servers."""

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        return await continuation(handler_call_details)


def _handlers(behaviour: Any) -> list[grpc.GenericRpcHandler]:
    return [grpc.method_handlers_generic_handler("bench.Echo", {"Call": grpc.unary_unary_rpc_method_handler(
        behaviour)})]


def serve(jwk: dict[str, Any], token: str) -> None:
    """Start the six servers, print their targets as one JSON line, serve until stdin closes."""
    targets: dict[str, str] = {}
    sync_servers = []
    for mode in MODES:
        interceptors = {"bare": [], "noop": [_NoOp()], "ours": [K8sJWTAuthInterceptor(_verifier(jwk))]}[mode]
        server = grpc.server(futures.ThreadPoolExecutor(16), interceptors=interceptors, handlers=_handlers(_echo))
        targets[f"sync-{mode}"] = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        server.start()
        sync_servers.append(server)
    ready = threading.Event()
    stop: dict[str, Any] = {}

    async def aio_main() -> None:
        servers = []
        for mode in MODES:
            verifier = _verifier(jwk)
            verifier.verify(token)  # warm the cache: the timed calls all take the cached path
            interceptors = {"bare": [], "noop": [_AioNoOp()], "ours": [AioK8sJWTAuthInterceptor(verifier)]}[mode]
            server = grpc.aio.server(interceptors=interceptors, handlers=_handlers(_aecho))
            targets[f"aio-{mode}"] = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
            await server.start()
            servers.append(server)
        stop["loop"], stop["event"] = asyncio.get_running_loop(), asyncio.Event()
        ready.set()
        await stop["event"].wait()
        for server in servers:
            await server.stop(None)

    thread = threading.Thread(target=asyncio.run, args=(aio_main(),), daemon=True)
    thread.start()
    if not ready.wait(STARTUP_TIMEOUT):
        raise RuntimeError("the aio servers did not start")
    print(json.dumps(targets), flush=True)
    sys.stdin.read()  # the parent closes stdin to stop us
    stop["loop"].call_soon_threadsafe(stop["event"].set)
    thread.join(10)
    for server in sync_servers:
        server.stop(None).wait(10)


@contextlib.contextmanager
def servers(jwk: dict[str, Any], token: str) -> Iterator[dict[str, str]]:
    """The child process serving the six servers; yields {"sync-bare": target, ...}."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("K8S_JWT_AUTH_")}
    env["BENCH_GRPC"] = json.dumps({"jwk": jwk, "token": token})
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the server process exited ({proc.wait(STARTUP_TIMEOUT)}) before serving")
        yield json.loads(line)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


# -- the client (this process) ----------------------------------------------------------------------------------


def check(channels: dict[str, grpc.Channel], metadata: tuple[tuple[str, str], ...]) -> None:
    """Every server answers OK with the token; ours refuses a call without it."""
    for name, channel in channels.items():
        call = channel.unary_unary(METHOD)
        if call(PAYLOAD, metadata=metadata, timeout=10) != PAYLOAD:
            raise RuntimeError(f"{name}: wrong answer")
        if name.endswith("ours"):
            try:
                call(PAYLOAD, timeout=10)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                    raise
            else:
                raise RuntimeError(f"{name}: a call without a token was answered")


def latency(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...], calls: int) -> float:
    """µs per call, one call at a time."""
    call = channel.unary_unary(METHOD)
    gc.collect()
    start = time.perf_counter()
    for _ in range(calls):
        call(PAYLOAD, metadata=metadata, timeout=10)
    return (time.perf_counter() - start) / calls * 1e6


async def _throughput(target: str, metadata: tuple[tuple[str, str], ...], seconds: float) -> float:
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD)
        await call(PAYLOAD, metadata=metadata, timeout=10)
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await call(PAYLOAD, metadata=metadata, timeout=10)
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
        return done / (time.perf_counter() - start)


def throughput(target: str, metadata: tuple[tuple[str, str], ...], seconds: float) -> float:
    """Calls per second with `IN_FLIGHT` calls in flight."""
    gc.collect()
    return asyncio.run(_throughput(target, metadata, seconds))


def measure(targets: dict[str, str], token: str, rounds: int, calls: int,
            seconds: float) -> dict[str, dict[str, dict[str, list[float]]]]:
    """{server: {mode: {"us": [...], "per_s": [...]}}} over `rounds` interleaved rounds."""
    metadata = (("authorization", f"Bearer {token}"),)
    results = {s: {m: {"us": [], "per_s": []} for m in MODES} for s in SERVERS}  # type: ignore[misc]
    channels = {name: grpc.insecure_channel(target) for name, target in targets.items()}
    try:
        check(channels, metadata)
        for name in channels:
            latency(channels[name], metadata, max(50, calls // 10))  # warm: connections, caches
        for index in range(rounds):
            for server in SERVERS:
                order = MODES[index % len(MODES):] + MODES[:index % len(MODES)]
                for mode in order:
                    name = f"{server}-{mode}"
                    results[server][mode]["us"].append(latency(channels[name], metadata, calls))
                    results[server][mode]["per_s"].append(throughput(targets[name], metadata, seconds))
    finally:
        for channel in channels.values():
            channel.close()
    return results


class _Details:
    """`grpc.HandlerCallDetails` as a server builds it."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method, self.invocation_metadata = METHOD, (("user-agent", "grpc-python"), *metadata)


class _Context:
    """The servicer context as our wrapper uses it: the call's metadata; a refusal (never here) raises."""

    def __init__(self, details: _Details) -> None:
        self.metadata = details.invocation_metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def abort_with_status(self, status: object) -> None:
        raise RuntimeError(f"refused: {status}")


def in_process(jwk: dict[str, Any], token: str, n: int) -> dict[str, float]:
    """µs per call the interceptor adds in process, sync and aio (median of 5 timings, bare subtracted)."""
    details = _Details((("authorization", f"Bearer {token}"),))
    context = _Context(details)
    generic, agenic = _handlers(_echo)[0], _handlers(_aecho)[0]  # built once, as a server holds them
    bare_handler = generic.service(details)  # type: ignore[arg-type]
    sync = K8sJWTAuthInterceptor(_verifier(jwk))

    def sync_ours() -> object:
        handler = sync.intercept_service(generic.service, details)  # type: ignore[arg-type]
        return handler.unary_unary(PAYLOAD, context)  # type: ignore[union-attr,misc]

    def sync_bare() -> object:
        handler = generic.service(details)  # type: ignore[arg-type]
        return handler.unary_unary(PAYLOAD, context)  # type: ignore[union-attr,misc]

    aio = AioK8sJWTAuthInterceptor(_verifier(jwk))

    async def continuation(d: Any) -> Any:
        return agenic.service(d)

    async def aio_ours() -> object:
        handler = await aio.intercept_service(continuation, details)  # type: ignore[arg-type]
        return await handler.unary_unary(PAYLOAD, context)  # type: ignore[union-attr,misc]

    async def aio_bare() -> object:
        handler = await continuation(details)
        return await handler.unary_unary(PAYLOAD, context)

    assert bare_handler is not None and sync_ours() == PAYLOAD

    def timed(fn: Any) -> float:
        per = []
        for _ in range(5):
            gc.collect()
            start = time.perf_counter()
            for _ in range(n):
                fn()
            per.append((time.perf_counter() - start) / n * 1e6)
        return statistics.median(per)

    async def atimed(fn: Any) -> float:
        per = []
        await fn()
        for _ in range(5):
            gc.collect()
            start = time.perf_counter()
            for _ in range(n):
                await fn()
            per.append((time.perf_counter() - start) / n * 1e6)
        return statistics.median(per)

    async def both() -> tuple[float, float]:
        return await atimed(aio_ours), await atimed(aio_bare)

    aio_us = asyncio.run(both())
    return {"sync": timed(sync_ours) - timed(sync_bare), "aio": aio_us[0] - aio_us[1]}


def summarise(results: dict[str, dict[str, dict[str, list[float]]]]) -> tuple[list[tuple[str, ...]], dict[str, Any]]:
    rows, summary = [], {}
    for server, modes in results.items():
        bare_us, noop_us, ours_us = (statistics.median(modes[m]["us"]) for m in MODES)
        bare_s, noop_s, ours_s = (statistics.median(modes[m]["per_s"]) for m in MODES)
        overhead = [o - b for o, b in zip(modes["ours"]["us"], modes["bare"]["us"], strict=True)]
        rows.append((f"{server} server", f"{bare_us:.1f}", f"{noop_us:.1f}", f"{ours_us:.1f}",
                     f"{statistics.median(overhead):+.1f} ({min(overhead):+.1f}..{max(overhead):+.1f})",
                     f"{ours_us / bare_us:.3f}x", f"{bare_s:,.0f}", f"{noop_s:,.0f}", f"{ours_s:,.0f}",
                     f"{ours_s / bare_s:.3f}x", f"{ours_s / noop_s:.3f}x"))
        summary[server] = {"bare_us": round(bare_us, 2), "noop_us": round(noop_us, 2), "ours_us": round(ours_us, 2),
                           "overhead_us": round(statistics.median(overhead), 2),
                           "ratio": round(ours_us / bare_us, 3), "bare_calls_per_s": round(bare_s, 1),
                           "noop_calls_per_s": round(noop_s, 1), "ours_calls_per_s": round(ours_s, 1),
                           "throughput_ratio": round(ours_s / bare_s, 3),
                           "throughput_vs_noop": round(ours_s / noop_s, 3)}
    return rows, summary


def table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    print(f"\n## {title}\n")
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round (smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7; --quick: 1)")
    parser.add_argument("--calls", type=int, default=None, help="sequential calls per latency measurement")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per throughput measurement")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.serve:
        settings = json.loads(os.environ["BENCH_GRPC"])
        serve(settings["jwk"], settings["token"])
        return 0
    rounds = args.rounds or (1 if args.quick else 7)
    calls = args.calls or (50 if args.quick else 2000)
    seconds = args.seconds or (0.1 if args.quick else 2.0)
    key = SigningKey.generate("RS256")
    token = sign(key, build_claims(issuer=ISSUER, audiences=[AUDIENCE], namespace="payments",
                                   service_account="api", pod="api-1", node="node-1", lifetime=3600))
    print(f"# gRPC interceptor overhead\n\nCPython {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} cores; grpcio {grpc.__version__}")
    with servers(key.public_jwk(), token) as targets:
        results = measure(targets, token, rounds, calls, seconds)
    rows, summary = summarise(results)
    local = in_process(key.public_jwk(), token, 500 if args.quick else 50000)
    for server in SERVERS:
        summary[server]["in_process_us"] = round(local[server], 2)
    table(f"Per-call overhead on a cached token (median of {rounds} interleaved rounds; unary-unary, loopback)",
          ("server", "bare µs/call", "no-op µs/call", "ours µs/call", "overhead µs (min..max)", "latency ours/bare",
           f"bare calls/s ({IN_FLIGHT} in flight)", "no-op calls/s", "ours calls/s", "throughput ours/bare",
           "throughput ours/no-op"),
          rows)
    table("The interceptor in process (µs per call added, median of 5; no network)", ("server", "µs per call"),
          [(f"{server} interceptor", f"{local[server]:.2f}") for server in SERVERS])
    print()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
