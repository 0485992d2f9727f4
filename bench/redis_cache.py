"""What the Redis shared cache costs and saves, against a real redis-server on 127.0.0.1.

    python bench/redis_cache.py                 # starts its own redis-server (no persistence) on a free port
    python bench/redis_cache.py --quick         # few iterations (a smoke run)
    python bench/redis_cache.py --redis-url redis://10.0.0.5:6379/0   # measure against another Redis

Per algorithm (RS256, ES256), microseconds per `verify` call (median and p99 over single calls):

1. local hit: the same verifier verified this token before (in-process cache; Redis is not asked);
2. shared hit: another replica verified it; this verifier's local cache is empty, so it reads Redis (one
   GET) and checks the claims, skipping the signature;
3. shared miss: nobody verified it yet: GET (miss) + full verification + SET;
4. no cache: full verification (header, signature, claims), no local cache and no Redis;
5. Redis GET round trip alone, for reference.

Then a cold start: N verifiers (threads, each with its own key source and RedisCache, as N pods would
have) verify at once with empty caches -> JWKS fetches counted by the fake issuer, with and without Redis.

The last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import redis

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from k8s_jwt_auth import TokenVerifier, VerifierConfig  # noqa: E402
from k8s_jwt_auth.redis_cache import RedisCache  # noqa: E402
from k8s_jwt_auth.testing import FakeIssuer  # noqa: E402

SECRET = "bench-" + "0" * 58


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """`url` as is, or a throwaway redis-server on 127.0.0.1 (no persistence), stopped at the end."""
    if url is not None:
        yield url
        return
    executable = shutil.which("redis-server")
    if executable is None:
        sys.exit("redis-server is not installed (apt-get install redis-server), or give --redis-url")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        process = subprocess.Popen([executable, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                    "--appendonly", "no", "--dir", directory], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with redis.Redis(port=port, socket_timeout=0.5) as probe:
                        probe.ping()
                    break
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.kill()
            process.wait(10)


def timed(fn: Callable[[], object], number: int, before: Callable[[], object] | None = None) -> tuple[float, float]:
    """(median, p99) microseconds of single calls of `fn`; `before` runs untimed before each call."""
    samples = []
    for _ in range(number):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return statistics.median(samples) * 1e6, samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e6


def latencies(algorithm: str, url: str, number: int) -> dict[str, tuple[float, float]]:
    with FakeIssuer(algorithm=algorithm) as issuer:
        local = VerifierConfig(issuer=issuer.issuer, audiences=["test"])
        shared = dataclasses.replace(local, redis_url=url, cache_secret=SECRET)
        token = issuer.mint("shop", "cart")
        out: dict[str, tuple[float, float]] = {}

        cached = TokenVerifier(local)
        cached.verify(token)
        out["local hit"] = timed(lambda: cached.verify(token), number)

        first, second = TokenVerifier(shared), TokenVerifier(shared)
        first.verify(token)
        second.verify(token)  # keys fetched, connection open
        out["shared hit (Redis)"] = timed(lambda: second.verify(token), number, before=second.clear_cache)

        fresh = iter([issuer.mint("shop", f"sa-{i}") for i in range(number)])
        current = [token]

        def next_token() -> None:
            current[0] = next(fresh)

        out["shared miss (GET + verify + SET)"] = timed(lambda: first.verify(current[0]), number,
                                                         before=next_token)

        uncached = TokenVerifier(dataclasses.replace(local, token_cache_size=0))
        uncached.verify(token)
        out["no cache (full verification)"] = timed(lambda: uncached.verify(token), number)

        store = second.shared
        assert isinstance(store, RedisCache)
        digest = b"\0" * 32
        out["Redis GET alone"] = timed(lambda: store.get("v", digest), number)
        for verifier in (first, second):
            assert isinstance(verifier.shared, RedisCache)
            verifier.shared.close()
        return out


def cold_start(url: str, replicas: int, with_redis: bool) -> int:
    """JWKS fetches when `replicas` verifiers with empty caches verify one token at the same moment."""
    with FakeIssuer() as issuer:
        config = VerifierConfig(issuer=issuer.issuer, audiences=["test"])
        if with_redis:
            config = dataclasses.replace(config, redis_url=url, cache_secret=SECRET,
                                         redis_prefix=f"bench-{time.monotonic_ns()}:")
        token = issuer.mint()
        verifiers = [TokenVerifier(config) for _ in range(replicas)]
        barrier = threading.Barrier(replicas)

        def run(verifier: TokenVerifier) -> None:
            barrier.wait(30)
            verifier.verify(token)

        threads = [threading.Thread(target=run, args=(v,)) for v in verifiers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for verifier in verifiers:
            if isinstance(verifier.shared, RedisCache):
                verifier.shared.close()
        return issuer.jwks_fetches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few iterations (a smoke run)")
    parser.add_argument("--redis-url", help="measure against this Redis instead of a local redis-server")
    parser.add_argument("--replicas", type=int, default=16, help="verifiers in the cold start")
    args = parser.parse_args()
    number = 200 if args.quick else 5000
    summary: dict[str, object] = {}
    with redis_server(args.redis_url) as url:
        for algorithm in ("RS256", "ES256"):
            rows = latencies(algorithm, url, number)
            print(f"## verify latency, {algorithm} (µs per call, {number} calls)\n")
            print("| path | median | p99 |\n|---|---:|---:|")
            for name, (median, p99) in rows.items():
                print(f"| {name} | {median:.1f} | {p99:.1f} |")
            print()
            summary[algorithm] = {name: round(median, 1) for name, (median, _) in rows.items()}
        fetches = {"without Redis": cold_start(url, args.replicas, False),
                   "with Redis": cold_start(url, args.replicas, True)}
    print(f"## cold start: {args.replicas} verifiers (own key source each) verify at once\n")
    print("| | JWKS fetches |\n|---|---:|")
    for name, count in fetches.items():
        print(f"| {name} | {count} |")
    print()
    summary["cold_start_jwks_fetches"] = fetches
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
