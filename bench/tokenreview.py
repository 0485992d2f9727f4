"""TokenReview latency: local-only verification vs a TokenReview answered from cache vs an uncached TokenReview,
and an uncached review's latency with a new connection per review vs kept-alive connections.

    python bench/tokenreview.py            # the numbers in docs/tokenreview.md
    python bench/tokenreview.py --quick    # a smoke run

Everything runs in this process against a `FakeIssuer` on 127.0.0.1 (plain HTTP over loopback), so an
uncached review here is a lower bound: a real API server adds TLS, its own authentication and
authorization of the request, and the network. The first table gives the median over rounds of the mean
per-call time of one round (its fake API server has `TCP_NODELAY` set, as kube-apiserver's sockets do).

The second table times single uncached reviews (`TokenReviewer.review`/`review_async`, median and p90 over N):

* `new client`: a new HTTP client and connection per review (what every review did before #16);
* `keep_alive=False`: one client, a new connection per review;
* `pooled`: kept-alive connections (the default);

against the `FakeIssuer` as it is (Python's `http.server`: Nagle's algorithm on, the answer's headers and body
written in two `send()`s) and against the same server with `TCP_NODELAY` set on its sockets, as Go's net/http
(kube-apiserver) does. The third table is the Nagle probe: a raw keep-alive socket writing its request in two
segments (headers, then body), with and without `TCP_NODELAY` on the client, to the `TCP_NODELAY` server.
The last line is a JSON summary (microseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from k8s_jwt_auth import TokenVerifier, VerifierConfig, WorkloadIdentity
from k8s_jwt_auth.testing import FakeIssuer
from k8s_jwt_auth.tokenreview import REVIEW_PATH, TokenReviewer

MODES = ("new_client", "no_keep_alive", "pooled")
LABELS = {"new_client": "new client per review (before #16)", "no_keep_alive": "keep_alive=False (new connection)",
          "pooled": "pooled (kept-alive connection)"}


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


def quantiles(samples: list[float]) -> tuple[float, float]:
    """(median, p90) of `samples`."""
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def _reviewer(url: str, own: str, mode: str) -> TokenReviewer:
    return TokenReviewer(url, audiences=["bench"], token_file=own, cache_ttl=0, keep_alive=mode != "no_keep_alive")


def review_latencies(url: str, own: str, mode: str, token: str, identity: WorkloadIdentity,
                     n: int) -> tuple[list[float], list[float]]:
    """Seconds per uncached review, `n` of them, sync then async (one event loop)."""
    reviewer = _reviewer(url, own, mode)
    reviewer.review(token, identity)  # warm up (and, pooled, the connection)
    sync = []
    for _ in range(n):
        start = time.perf_counter()
        reviewer.review(token, identity)
        if mode == "new_client":
            reviewer.close()
        sync.append(time.perf_counter() - start)
    reviewer.close()

    async def measure() -> list[float]:
        await reviewer.review_async(token, identity)
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            await reviewer.review_async(token, identity)
            if mode == "new_client":
                await reviewer.aclose()
            samples.append(time.perf_counter() - start)
        await reviewer.aclose()
        return samples

    return sync, asyncio.run(measure())


def nagle_probe(url: str, own: str, token: str, n: int, nodelay: bool) -> list[float]:
    """Seconds per TokenReview over one raw kept-alive socket that writes headers and body in two segments."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                       "spec": {"token": token, "audiences": ["bench"]}}).encode()
    with open(own) as fh:
        bearer = fh.read().strip()
    head = (f"POST {REVIEW_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {bearer}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    samples = []
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(nodelay))
        reader = sock.makefile("rb")
        for i in range(n + 3):  # 3 to warm up (Linux ACKs the first segments of a connection at once)
            start = time.perf_counter()
            sock.sendall(head)
            sock.sendall(body)
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            reader.read(length)
            if i >= 3:
                samples.append(time.perf_counter() - start)
    return samples


def nodelay_server(issuer: FakeIssuer) -> None:
    """Set TCP_NODELAY on the fake API server's accepted sockets (http.server's `disable_nagle_algorithm`)."""
    handler: Any = issuer._server.RequestHandlerClass  # type: ignore[union-attr]  # this issuer's own handler class
    handler.disable_nagle_algorithm = True


def connection_table(own: str, n: int) -> dict[str, float]:
    """The second and third tables; returns their figures (µs) for the JSON summary."""
    summary: dict[str, float] = {}
    rows = []
    for server in ("http.server", "http.server+TCP_NODELAY"):
        with FakeIssuer() as issuer:
            if server.endswith("TCP_NODELAY"):
                nodelay_server(issuer)
            token = issuer.mint("payments", "api", audiences="bench", pod="api-1", node="node-1")
            identity = TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences=["bench"],
                                                    jwks=issuer.jwks())).verify(token)
            for mode in MODES:
                sync, async_ = review_latencies(issuer.url, own, mode, token, identity, n)
                (sm, sp), (am, ap) = quantiles(sync), quantiles(async_)
                rows.append((server, LABELS[mode], sm, sp, am, ap))
                key = f"{'nodelay' if server.endswith('TCP_NODELAY') else 'stock'}_{mode}"
                summary.update({f"{key}_sync_median": sm, f"{key}_sync_p90": sp,
                                f"{key}_async_median": am, f"{key}_async_p90": ap})
            if server.endswith("TCP_NODELAY"):
                probes = {flag: quantiles(nagle_probe(issuer.url, own, token, n, flag)) for flag in (True, False)}
    print(f"\n## Uncached TokenReview: new connection vs kept-alive (ms per review, N = {n})\n")
    print("| API server | connections | sync median | sync p90 | async median | async p90 |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for server, label, sm, sp, am, ap in rows:
        print(f"| {server} | {label} | {sm * 1e3:.2f} | {sp * 1e3:.2f} | {am * 1e3:.2f} | {ap * 1e3:.2f} |")
    print(f"\n## Nagle probe: a request written in two segments over a kept-alive socket (ms, N = {n})\n")
    print("| client socket | server socket | median | p90 |\n| --- | --- | ---: | ---: |")
    for flag, (median, p90) in probes.items():
        print(f"| TCP_NODELAY={int(flag)} | TCP_NODELAY=1 | {median * 1e3:.2f} | {p90 * 1e3:.2f} |")
        summary[f"probe_client_nodelay{int(flag)}_median"] = median
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few calls")
    args = parser.parse_args(argv)
    fast, slow, rounds, n = (200, 20, 3, 10) if args.quick else (20_000, 500, 5, 200)
    with FakeIssuer() as issuer, tempfile.TemporaryDirectory() as tmp:
        nodelay_server(issuer)  # as kube-apiserver: the second table shows the stock http.server's Nagle stall
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
    with tempfile.TemporaryDirectory() as tmp:
        own = os.path.join(tmp, "token")
        with open(own, "w") as fh:
            fh.write("bench-reviewer-token")
        results.update(connection_table(own, n))
    print(json.dumps({name: round(seconds * 1e6, 1) for name, seconds in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
