"""What the Redis shared cache costs and saves, against a real redis-server on this machine.

    python bench/redis_cache.py                 # starts its own redis-server (no persistence): TCP on 127.0.0.1
                                                # and a Unix socket, both measured in the same run
    python bench/redis_cache.py --quick         # few iterations (a smoke run)
    python bench/redis_cache.py --redis-url redis://10.0.0.5:6379/0   # measure against another Redis only

Per algorithm (RS256, ES256, ES384, ES512), microseconds per `verify` call (median, p25-p75, p99 over single
calls). Every path runs once per round, in the same rounds, on the same fresh token (minted untimed), so the
paths are compared side by side under the same load:

1. local hit: the same verifier verified this token before (in-process cache; Redis is not asked);
2. first sight, no Redis: full local verification (header, signature, claims) of a token never seen;
3. first sight, Redis with `redis_share_tokens` off (the default): key sets come from Redis, the token is
   verified locally and Redis is not asked about it (checked: the store counts no GET);
4. shared miss (`redis_share_tokens` on): GET (miss) + full verification + SET;
5. shared hit (`redis_share_tokens` on): another replica verified this token; one GET, the claims are checked,
   the signature is not;
6. a Redis GET alone (the round trip), for reference.

From these: what a shared hit saves (2 - 5), what a shared miss costs (4 - 2), and the break-even: a token that
R replicas each see for the first time makes 1 miss and R - 1 hits, so sharing verified tokens pays only when
(R - 1) x saving > cost, i.e. R > 1 + cost / saving, and never when a hit is not faster than local verification.

Then TokenReview mode (RS256, TCP): a second replica's first sight of a token the first replica had reviewed.
TokenReview answers are shared in Redis whatever `redis_share_tokens` says; with it on, the verified-token
entry is one more GET on top.

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
from pathlib import Path

import redis

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from k8s_jwt_auth import TokenVerifier, VerifierConfig  # noqa: E402
from k8s_jwt_auth.redis_cache import RedisCache  # noqa: E402
from k8s_jwt_auth.testing import FakeIssuer  # noqa: E402

SECRET = "bench-" + "0" * 58
TIMEOUT = 2.0  # a generous Redis deadline: a hiccup of a loaded machine must not open the breaker mid-run
ALGORITHMS = ("RS256", "ES256", "ES384", "ES512")
LOCAL_HIT = "local hit"
FIRST_LOCAL = "first sight, no Redis (local verification)"
FIRST_DEFAULT = "first sight, Redis, share_tokens off (default)"
SHARED_MISS = "shared miss (GET + verification + SET)"
SHARED_HIT = "shared hit (GET, no signature check)"
GET_ALONE = "Redis GET alone (round trip)"


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[dict[str, str]]:
    """{"given": url}, or a throwaway redis-server (no persistence) on 127.0.0.1 and on a Unix socket:
    {"tcp": ..., "unix": ...}, stopped at the end."""
    if url is not None:
        yield {"given": url}
        return
    executable = shutil.which("redis-server")
    if executable is None:
        sys.exit("redis-server is not installed (apt-get install redis-server), or give --redis-url")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "redis.sock"
        process = subprocess.Popen([executable, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                    "--appendonly", "no", "--dir", directory, "--unixsocket", str(path),
                                    "--unixsocketperm", "700"], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with redis.Redis(port=port, socket_timeout=0.5) as probe:
                        probe.ping()
                    if path.exists():
                        break
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.02)
            yield {"tcp": f"redis://127.0.0.1:{port}/0", "unix": f"unix://{path}?db=0"}
        finally:
            process.kill()
            process.wait(10)


@dataclasses.dataclass
class Timed:
    """One timed path: `run(token)` is timed; its samples in seconds."""

    name: str
    run: Callable[[str], object]
    samples: list[float] = dataclasses.field(default_factory=list)

    def stats(self) -> dict[str, float]:
        ordered = sorted(self.samples)
        q = statistics.quantiles(ordered, n=100, method="inclusive")
        return {"median": statistics.median(ordered) * 1e6, "p25": q[24] * 1e6, "p75": q[74] * 1e6,
                "p99": q[98] * 1e6}


def rounds(paths: list[Timed], tokens: list[str]) -> None:
    """Each round runs every path once on that round's token, in order (a hit follows its miss)."""
    clock = time.perf_counter
    for token in tokens:
        for path in paths:
            start = clock()
            path.run(token)
            path.samples.append(clock() - start)


def latencies(algorithm: str, urls: dict[str, str], number: int) -> dict[str, dict[str, dict[str, float]]]:
    """{transport: {path: stats}}; the local paths are under the transport "local"."""
    with FakeIssuer(algorithm=algorithm) as issuer:
        local = VerifierConfig(issuer=issuer.issuer, audiences=["test"])
        token = issuer.mint("shop", "cart")
        cached, first_sight = TokenVerifier(local), TokenVerifier(local)
        cached.verify(token)
        first_sight.verify(token)  # keys fetched
        groups: dict[str, list[Timed]] = {"local": [Timed(LOCAL_HIT, lambda _: cached.verify(token)),
                                                    Timed(FIRST_LOCAL, first_sight.verify)]}
        opened: list[RedisCache] = []
        silent: list[TokenVerifier] = []  # the default: must not ask Redis about tokens
        readers: list[TokenVerifier] = []  # every call a shared hit
        for transport, url in urls.items():
            config = dataclasses.replace(local, redis_url=url, cache_secret=SECRET, redis_timeout=TIMEOUT,
                                         redis_prefix=f"bench-{time.monotonic_ns()}:")
            default = TokenVerifier(dataclasses.replace(config, redis_share_tokens=False))
            writer = TokenVerifier(dataclasses.replace(config, redis_share_tokens=True))
            reader = TokenVerifier(dataclasses.replace(config, redis_share_tokens=True))
            for verifier in (default, writer, reader):
                verifier.verify(token)  # keys fetched, connection open
                assert isinstance(verifier.shared, RedisCache)
                opened.append(verifier.shared)
            store = reader.shared
            assert isinstance(store, RedisCache)
            groups[transport] = [Timed(FIRST_DEFAULT, default.verify), Timed(SHARED_MISS, writer.verify),
                                 Timed(SHARED_HIT, reader.verify),
                                 Timed(GET_ALONE, _round_trip(store))]
            silent.append(default)
            readers.append(reader)
        tokens = [issuer.mint("shop", f"sa-{i}") for i in range(number)]
        asked = [_asked(v) for v in silent]
        rounds([path for paths in groups.values() for path in paths], tokens)
        assert [_asked(v) for v in silent] == asked, "with share_tokens off, a first sight asked Redis"
        for reader in readers:
            info, status = reader.cache_info(), reader.shared.status()  # type: ignore[union-attr]
            assert info is not None and info.shared_hits > number and not status.skipped + status.errors, \
                f"not every shared hit was a hit: {status}"  # (the warm-up call was one too)
        for store in opened:
            store.close()
        return {transport: {p.name: p.stats() for p in paths} for transport, paths in groups.items()}


def _round_trip(store: RedisCache) -> Callable[[str], object]:
    """One GET of an entry that does not exist (the token is ignored)."""
    digest = b"\0" * 32
    return lambda _: store.get("v", digest)


def _asked(verifier: TokenVerifier) -> int:
    """How many GETs the verifier's RedisCache answered (hits and misses)."""
    assert isinstance(verifier.shared, RedisCache)
    status = verifier.shared.status()
    return status.hits + status.misses


def tokenreview(url: str, number: int) -> dict[str, dict[str, float]]:
    """A second replica's first sight of a token another replica had reviewed: share_tokens off vs on."""
    with FakeIssuer() as issuer, tempfile.TemporaryDirectory() as directory:
        own = Path(directory) / "token"
        own.write_text(issuer.mint("payments", "callee"))
        config = VerifierConfig(issuer=issuer.issuer, audiences=["test"], redis_url=url, cache_secret=SECRET,
                                redis_timeout=TIMEOUT, redis_prefix=f"bench-tr-{time.monotonic_ns()}:",
                                tokenreview=True, tokenreview_url=issuer.url, token_file=str(own))
        first = TokenVerifier(dataclasses.replace(config, redis_share_tokens=True))
        off = TokenVerifier(dataclasses.replace(config, redis_share_tokens=False))
        on = TokenVerifier(dataclasses.replace(config, redis_share_tokens=True))
        warm = issuer.mint("shop", "warm")
        for verifier in (first, off, on):
            verifier.verify(warm)
        paths = [Timed("first replica: local verification + TokenReview call", first.verify),
                 Timed("second replica, share_tokens off: verification + shared review", off.verify),
                 Timed("second replica, share_tokens on: shared entry + shared review", on.verify)]
        rounds(paths, [issuer.mint("shop", f"sa-{i}") for i in range(number)])
        assert issuer.tokenreviews == number + 1, issuer.tokenreviews
        for verifier in (first, off, on):
            assert isinstance(verifier.shared, RedisCache)
            verifier.shared.close()
        return {p.name: p.stats() for p in paths}


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


def break_even(local: float, hit: float, miss: float) -> float | None:
    """Replicas that must each see a token for the first time before sharing it pays (None: never)."""
    saving, cost = local - hit, miss - local
    if saving <= 0:
        return None
    return 1 + max(cost, 0.0) / saving


def table(rows: dict[str, dict[str, float]]) -> None:
    print("| path | median | p25 | p75 | p99 |\n|---|---:|---:|---:|---:|")
    for name, s in rows.items():
        print(f"| {name} | {s['median']:.1f} | {s['p25']:.1f} | {s['p75']:.1f} | {s['p99']:.1f} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few iterations (a smoke run)")
    parser.add_argument("--redis-url", help="measure against this Redis instead of a local redis-server")
    parser.add_argument("--replicas", type=int, default=16, help="verifiers in the cold start")
    parser.add_argument("--number", type=int, help="rounds per algorithm (default 3000, 100 with --quick)")
    args = parser.parse_args()
    number = args.number or (100 if args.quick else 3000)
    summary: dict[str, object] = {"rounds": number}
    medians: dict[str, dict[str, dict[str, float]]] = {}
    evens: dict[str, dict[str, float | None]] = {}
    with redis_server(args.redis_url) as urls:
        for algorithm in ALGORITHMS:
            groups = latencies(algorithm, urls, number)
            local = groups.pop("local")
            print(f"## verify latency, {algorithm} (µs per call, {number} rounds)\n")
            table(local)
            for transport, rows in groups.items():
                print(f"Redis over {transport}:\n")
                table(rows)
            medians[algorithm] = {"local": {k: round(v["median"], 1) for k, v in local.items()}}
            evens[algorithm] = {}
            for transport, rows in groups.items():
                medians[algorithm][transport] = {k: round(v["median"], 1) for k, v in rows.items()}
                even = break_even(local[FIRST_LOCAL]["median"], rows[SHARED_HIT]["median"],
                                  rows[SHARED_MISS]["median"])
                evens[algorithm][transport] = None if even is None else round(even, 1)
        transport, url = next(iter(urls.items()))
        reviews = tokenreview(url, max(20, number // 10))
        fetches = {"without Redis": cold_start(url, args.replicas, False),
                   "with Redis": cold_start(url, args.replicas, True)}
    print("## first sight of a token: sharing verified tokens against verifying locally (medians, µs)\n")
    print("| algorithm | Redis | local verification | shared hit | shared miss | a hit saves | a miss costs "
          "| pays from (replicas seeing the token) |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for algorithm, groups_ in medians.items():
        own = groups_["local"][FIRST_LOCAL]
        for transport_, rows_ in groups_.items():
            if transport_ == "local":
                continue
            even_ = evens[algorithm][transport_]
            shown = "never" if even_ is None else f"{even_:.1f}"
            print(f"| {algorithm} | {transport_} | {own:.1f} | {rows_[SHARED_HIT]:.1f} | {rows_[SHARED_MISS]:.1f} "
                  f"| {own - rows_[SHARED_HIT]:.1f} | {rows_[SHARED_MISS] - own:.1f} | {shown} |")
    print()
    print(f"## TokenReview mode (RS256, {transport}): a token the first replica reviewed (µs per call)\n")
    table(reviews)
    print(f"## cold start: {args.replicas} verifiers (own key source each) verify at once\n")
    print("| | JWKS fetches |\n|---|---:|")
    for name, count in fetches.items():
        print(f"| {name} | {count} |")
    print()
    summary.update(latency=medians, break_even_replicas=evens,
                   tokenreview={k: round(v["median"], 1) for k, v in reviews.items()},
                   cold_start_jwks_fetches=fetches)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
