"""Benchmarks of k8s-jwt-auth against a floor and its peers, measured side by side in one run.

    python bench/run.py            # the full run (about two minutes on 2 cores)
    python bench/run.py --quick    # a smoke run: few iterations, small sizes (CI runs this)

Sections (each prints a table):

1. verification, RS256 and ES256, on the same tokens: the floor (base64/JSON decode of header and
   payload + the raw `cryptography` signature check), our uncached `verify`, our cached `verify`, and the
   peers with a preloaded key (PyJWT, joserfc, authlib, python-jose, jwcrypto) plus PyJWT + PyJWKClient
   (warm cache, JWKS served by the fake issuer on 127.0.0.1). Ratios are against the floor and against
   PyJWT + PyJWKClient.
2. cold start: 100 threads + 100 asyncio tasks verify at once with an empty cache -> JWKS fetches.
3. HTTP overhead: hello-world Starlette under uvicorn and Flask under gunicorn on 127.0.0.1, with and
   without our middleware (valid token, cached path), a bounded number of requests from a few client
   threads -> requests/s and the with/without ratio.
4. memory of the verified-token cache at 10k and 100k distinct tokens (tracemalloc).

Peers that are not installed are reported as missing; `pip install -e ".[bench]"` installs them all.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import gc
import importlib.util
import json
import os
import platform
import sys
import threading
import time
import tracemalloc
import warnings
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from k8s_jwt_auth import RemoteKeySource, TokenVerifier, VerificationKey, VerifierConfig  # noqa: E402
from k8s_jwt_auth.testing import FakeIssuer, SigningKey, build_claims, sign  # noqa: E402

AUDIENCE = "bench"
Row = tuple[str, float]  # (name, microseconds per call)


def b64d(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def per_call(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Best-of-`repeat` microseconds per call over `number` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number)
    return min(times) * 1e6


def floor_fn(token: str, key: VerificationKey, alg: str) -> Callable[[], object]:
    """What any uncached check must do: decode header and payload, verify the signature."""
    public = key.key
    digest = hashes.SHA256()

    def rs256() -> object:
        head, payload, sig = token.split(".")
        json.loads(b64d(head))
        claims = json.loads(b64d(payload))
        public.verify(b64d(sig), f"{head}.{payload}".encode(), padding.PKCS1v15(), digest)  # type: ignore[call-arg]
        return claims

    def es256() -> object:
        head, payload, sig = token.split(".")
        json.loads(b64d(head))
        claims = json.loads(b64d(payload))
        raw = b64d(sig)
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        public.verify(der, f"{head}.{payload}".encode(), ec.ECDSA(digest))  # type: ignore[call-arg]
        return claims

    return rs256 if alg == "RS256" else es256


def peers(token: str, jwk: dict[str, Any], key: VerificationKey, alg: str, issuer: str,
          jwks_uri: str) -> dict[str, Callable[[], object] | None]:
    """Each peer's verify with a preloaded key (None when the library is not installed)."""
    out: dict[str, Callable[[], object] | None] = {}
    out["PyJWT"] = _pyjwt(token, key, alg, issuer)
    out["PyJWT + PyJWKClient (warm)"] = _pyjwt_jwks(token, alg, issuer, jwks_uri)
    out["joserfc"] = _joserfc(token, jwk, alg, issuer)
    out["authlib"] = _authlib(token, jwk, alg, issuer)
    out["python-jose"] = _python_jose(token, jwk, alg, issuer)
    out["jwcrypto"] = _jwcrypto(token, jwk, alg, issuer)
    return out


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _pyjwt(token: str, key: VerificationKey, alg: str, issuer: str) -> Callable[[], object] | None:
    import jwt

    return lambda: jwt.decode(token, key.key, algorithms=[alg], audience=AUDIENCE, issuer=issuer)


def _pyjwt_jwks(token: str, alg: str, issuer: str, jwks_uri: str) -> Callable[[], object] | None:
    import jwt

    client = jwt.PyJWKClient(jwks_uri, cache_keys=True)

    def run() -> object:
        signing = client.get_signing_key_from_jwt(token)
        return jwt.decode(token, signing.key, algorithms=[alg], audience=AUDIENCE, issuer=issuer)

    return run


def _joserfc(token: str, jwk: dict[str, Any], alg: str, issuer: str) -> Callable[[], object] | None:
    if not _installed("joserfc"):
        return None
    from joserfc import jwt as jjwt
    from joserfc.jwk import ECKey, RSAKey

    key = (RSAKey if alg == "RS256" else ECKey).import_key(jwk)
    registry = jjwt.JWTClaimsRegistry(iss={"essential": True, "value": issuer},
                                      aud={"essential": True, "value": AUDIENCE}, exp={"essential": True})

    def run() -> object:
        decoded = jjwt.decode(token, key, algorithms=[alg])
        registry.validate(decoded.claims)
        return decoded.claims

    return run


def _authlib(token: str, jwk: dict[str, Any], alg: str, issuer: str) -> Callable[[], object] | None:
    if not _installed("authlib"):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from authlib.jose import JsonWebKey, JsonWebToken

        key = JsonWebKey.import_key(jwk)
    decoder = JsonWebToken([alg])
    options = {"iss": {"essential": True, "value": issuer}, "aud": {"essential": True, "value": AUDIENCE}}

    def run() -> object:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            claims = decoder.decode(token, key, claims_options=options)
            claims.validate()
        return claims

    return run


def _python_jose(token: str, jwk: dict[str, Any], alg: str, issuer: str) -> Callable[[], object] | None:
    if not _installed("jose"):
        return None
    from jose import jwk as jose_jwk
    from jose import jwt as jose_jwt

    key = jose_jwk.construct(jwk, alg)
    return lambda: jose_jwt.decode(token, key, algorithms=[alg], audience=AUDIENCE, issuer=issuer)


def _jwcrypto(token: str, jwk: dict[str, Any], alg: str, issuer: str) -> Callable[[], object] | None:
    if not _installed("jwcrypto"):
        return None
    from jwcrypto import jwk as jjwk
    from jwcrypto import jwt as jjwt

    key = jjwk.JWK(**jwk)
    checks = {"iss": issuer, "aud": AUDIENCE, "exp": None}

    def run() -> object:
        return json.loads(jjwt.JWT(jwt=token, key=key, algs=[alg], check_claims=checks).claims)

    return run


def table(title: str, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n## {title}\n")
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def bench_verification(issuer: FakeIssuer, alg: str, number: int, repeat: int) -> dict[str, float]:
    """Section 1 for one algorithm; returns the measured microseconds by name."""
    key = issuer.add_key(alg)
    jwk = key.public_jwk()
    vkey = VerificationKey.from_jwk(jwk)
    token = sign(key, build_claims(issuer=issuer.issuer, namespace="payments", service_account="api",
                                   audiences=[AUDIENCE], pod="api-7d9f", node="node-1"))
    config = VerifierConfig(issuer=issuer.issuer, audiences=[AUDIENCE], jwks={"keys": [jwk]})
    uncached = TokenVerifier(dataclasses.replace(config, token_cache_size=0))
    cached = TokenVerifier(config)
    results = {"floor": per_call(floor_fn(token, vkey, alg), number, repeat),
               "k8s-jwt-auth verify (uncached)": per_call(lambda: uncached.verify(token), number, repeat),
               "k8s-jwt-auth verify (first sight, cache on, remote keys)": first_sight(issuer, key, number, repeat),
               "k8s-jwt-auth verify (cached)": per_call(lambda: cached.verify(token), number * 10, repeat)}
    for name, fn in peers(token, jwk, vkey, alg, issuer.issuer, issuer.jwks_uri).items():
        results[name] = per_call(fn, number, repeat) if fn is not None else float("nan")
    return results


def first_sight(issuer: FakeIssuer, key: SigningKey, number: int, repeat: int) -> float:
    """Microseconds per distinct token seen for the first time: the cache on (each token is inserted), keys from
    the issuer over HTTP (`RemoteKeySource`, warm): the path a new caller takes. Best of `repeat` rounds."""
    keys = RemoteKeySource(issuer.issuer)
    verifier = TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences=[AUDIENCE],
                                            token_cache_size=number * 2), keys=keys)
    tokens = [sign(key, build_claims(issuer=issuer.issuer, namespace="payments", service_account="api",
                                     audiences=[AUDIENCE], pod=f"api-7d9f-{i}", node="node-1"))
              for i in range(number)]
    verifier.verify(tokens[0])  # warms the key source
    times = []
    for _ in range(repeat):
        verifier.clear_cache()
        start = time.perf_counter()
        for token in tokens:
            verifier.verify(token)
        times.append((time.perf_counter() - start) / number)
    return min(times) * 1e6


def print_verification(alg: str, results: dict[str, float]) -> None:
    floor, pyjwks = results["floor"], results["PyJWT + PyJWKClient (warm)"]
    rows = []
    for name, us in results.items():
        if us != us:  # NaN: not installed
            rows.append((name, "not installed", "", ""))
            continue
        rows.append((name, f"{us:8.2f}", f"{us / floor:5.2f}x", f"{pyjwks / us:6.1f}x"))
    table(f"Verification, {alg} (µs per token; lower is better)",
          ("implementation", "µs/token", "vs floor", "speed-up vs PyJWT+PyJWKClient"), rows)


def bench_cold_start(callers: int) -> tuple[int, int, float]:
    """Section 2: `callers` threads + `callers` tasks on an empty cache; returns (fetches, ok, seconds)."""
    with FakeIssuer() as issuer:
        issuer.fail("slow", delay=0.2)  # a realistic round trip, so callers really pile up
        token = issuer.mint("payments", "api", audiences=AUDIENCE)
        verifier = TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences=[AUDIENCE]),
                                 keys=RemoteKeySource(issuer.issuer))
        ok = [0]
        lock = threading.Lock()
        start_gate = threading.Event()

        def thread_caller() -> None:
            start_gate.wait(5)
            verifier.verify(token)
            with lock:
                ok[0] += 1

        async def task_callers() -> None:
            start_gate.wait(5)
            results = await asyncio.gather(*(verifier.verify_async(token) for _ in range(callers)))
            with lock:
                ok[0] += len(results)

        threads = [threading.Thread(target=thread_caller) for _ in range(callers)]
        threads.append(threading.Thread(target=lambda: asyncio.run(task_callers())))
        for t in threads:
            t.start()
        began = time.perf_counter()
        start_gate.set()
        for t in threads:
            t.join(30)
        elapsed = time.perf_counter() - began
        issuer.fail(None)
        return issuer.jwks_fetches, ok[0], elapsed


def bench_memory(sizes: list[int]) -> list[tuple[int, float]]:
    """Section 4: bytes per cached token at each size (ES256 tokens, fast to mint)."""
    key = SigningKey.generate("ES256")
    now = time.time()
    out = []
    for size in sizes:
        config = VerifierConfig(issuer="https://bench.test", audiences=[AUDIENCE], jwks={"keys": [key.public_jwk()]},
                                token_cache_size=size)
        verifier = TokenVerifier(config, clock=lambda: now)
        tokens = [sign(key, build_claims(issuer="https://bench.test", audiences=[AUDIENCE], now=now,
                                         namespace=f"ns-{i % 500}", service_account=f"sa-{i}", pod=f"pod-{i}",
                                         node="node-1")) for i in range(size)]
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for token in tokens:
            verifier.verify(token)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        info = verifier.cache_info()
        assert info is not None and info.currsize == size
        out.append((size, (after - before) / size))
        del tokens, verifier
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few iterations, small sizes")
    parser.add_argument("--skip-http", action="store_true", help="skip the HTTP overhead section")
    args = parser.parse_args(argv)
    number, repeat = (50, 2) if args.quick else (2000, 5)
    print(f"# k8s-jwt-auth benchmarks{' (quick smoke run: numbers are not meaningful)' if args.quick else ''}\n")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
          f"{platform.python_version()}, {platform.platform()}")
    summary: dict[str, Any] = {}
    with FakeIssuer() as issuer:
        for alg in ("RS256", "ES256"):
            results = bench_verification(issuer, alg, number, repeat)
            print_verification(alg, results)
            summary[alg] = results
    fetches, ok, elapsed = bench_cold_start(10 if args.quick else 100)
    callers = 2 * (10 if args.quick else 100)
    table("Cold start (empty cache, callers at once)", ("callers", "verified", "JWKS fetches", "seconds"),
          [(f"{callers} (threads + tasks)", ok, fetches, f"{elapsed:.2f}")])
    summary["cold_start"] = {"callers": callers, "verified": ok, "jwks_fetches": fetches}
    if not args.skip_http:
        import http_overhead

        summary["http"] = http_overhead.run(quick=args.quick, table=table)
    memory = bench_memory([1000] if args.quick else [10_000, 100_000])
    table("Verified-token cache memory (tracemalloc)", ("tokens cached", "bytes per token", "total MiB"),
          [(f"{n:,}", f"{b:,.0f}", f"{n * b / 2**20:.1f}") for n, b in memory])
    summary["memory"] = memory
    print("\n" + json.dumps(_ratios(summary)))
    return 0 if ok == callers and fetches == 1 else 1


def _ratios(summary: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for alg in ("RS256", "ES256"):
        r = summary[alg]
        peer_times = [v for k, v in r.items() if k not in ("floor",) and not k.startswith("k8s") and v == v]
        out[alg] = {"uncached_vs_floor": round(r["k8s-jwt-auth verify (uncached)"] / r["floor"], 2),
                    "first_sight_vs_floor": round(r["k8s-jwt-auth verify (first sight, cache on, remote keys)"]
                                                  / r["floor"], 2),
                    "cached_us": round(r["k8s-jwt-auth verify (cached)"], 2),
                    "uncached_vs_fastest_peer": round(r["k8s-jwt-auth verify (uncached)"] / min(peer_times), 2),
                    "cached_speedup_vs_pyjwt_jwks": round(r["PyJWT + PyJWKClient (warm)"]
                                                          / r["k8s-jwt-auth verify (cached)"], 1)}
    out["cold_start_jwks_fetches"] = summary["cold_start"]["jwks_fetches"]
    if "http" in summary:
        out["http_with_auth_vs_without"] = summary["http"]
    return out


if __name__ == "__main__":
    sys.exit(main())
