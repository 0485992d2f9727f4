"""TokenReview latency: local-only verification vs a TokenReview answered from cache vs an uncached TokenReview.

    python bench/tokenreview.py            # the numbers in docs/tokenreview.md
    python bench/tokenreview.py --quick    # a smoke run

Everything runs in this process against a `FakeIssuer` on 127.0.0.1 (plain HTTP over loopback), so an
uncached review here is a lower bound: a real API server adds TLS, its own authentication and
authorization of the request, and the network. Each figure is the median over rounds of the mean
per-call time of one round. The last line is a JSON summary (microseconds per call).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

from k8s_jwt_auth import TokenVerifier, VerifierConfig
from k8s_jwt_auth.testing import FakeIssuer


def per_call(run: Callable[[], object], calls: int, rounds: int) -> float:
    """Median over `rounds` of the mean seconds per call of `calls` calls."""
    run()  # warm up
    means = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            run()
        means.append((time.perf_counter() - start) / calls)
    return statistics.median(means)


def per_call_async(run: Callable[[], object], calls: int, rounds: int) -> float:
    async def batch() -> float:
        await run()  # type: ignore[misc]
        means = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(calls):
                await run()  # type: ignore[misc]
            means.append((time.perf_counter() - start) / calls)
        return statistics.median(means)

    return asyncio.run(batch())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few calls")
    args = parser.parse_args(argv)
    fast, slow, rounds = (200, 20, 3) if args.quick else (20_000, 500, 5)
    with FakeIssuer() as issuer, tempfile.TemporaryDirectory() as tmp:
        own = os.path.join(tmp, "token")
        with open(own, "w") as fh:
            fh.write("bench-reviewer-token")
        base = {"issuer": issuer.issuer, "audiences": ["bench"], "jwks": issuer.jwks()}
        review = {**base, "tokenreview": True, "tokenreview_url": issuer.url, "token_file": own}
        token = issuer.mint("payments", "api", audiences="bench", pod="api-1", node="node-1")
        local = TokenVerifier(VerifierConfig(**base))
        local_uncached = TokenVerifier(VerifierConfig(**base, token_cache_size=0))
        cached = TokenVerifier(VerifierConfig(**review, tokenreview_cache_ttl=3600))
        uncached = TokenVerifier(VerifierConfig(**review, tokenreview_cache_ttl=0))
        assert cached.verify(token).reviewed and uncached.verify(token).reviewed
        results = {
            "local_verify_cached": per_call(lambda: local.verify(token), fast, rounds),
            "local_verify_uncached": per_call(lambda: local_uncached.verify(token), slow * 4, rounds),
            "tokenreview_cache_hit": per_call(lambda: cached.verify(token), fast, rounds),
            "tokenreview_uncached_sync": per_call(lambda: uncached.verify(token), slow, rounds),
            "tokenreview_uncached_async": per_call_async(lambda: uncached.verify_async(token), slow, rounds),
        }
        requests = issuer.tokenreviews
    print("## TokenReview latency (per call, FakeIssuer over loopback HTTP)\n")
    print("| path | µs per call |\n| --- | ---: |")
    for name, seconds in results.items():
        print(f"| {name} | {seconds * 1e6:,.1f} |")
    print(f"\nTokenReview requests received by the fake API server: {requests}")
    print(json.dumps({name: round(seconds * 1e6, 1) for name, seconds in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
