"""Multi-cluster routing cost: one `TokenVerifier` vs a `MultiClusterVerifier` of N clusters, side by side.

    python bench/multicluster.py            # 3 clusters
    python bench/multicluster.py --quick    # a smoke run

Same RS256 token, same settings; static keys (no network). Prints microseconds per call for the cached
and the uncached path and the ratio multi/single, then a JSON summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import per_call, table  # noqa: E402

from k8s_jwt_auth import MultiClusterVerifier, TokenVerifier, VerifierConfig  # noqa: E402
from k8s_jwt_auth.testing import SigningKey, build_claims, sign  # noqa: E402

NOW = 1_800_000_000.0


def config(index: int, key: SigningKey, **overrides: Any) -> VerifierConfig:
    return VerifierConfig(issuer=f"https://cluster-{index}.test", audiences="bench",
                          jwks={"keys": [key.public_jwk()]}, **overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clusters", type=int, default=3)
    args = parser.parse_args(argv)
    number, repeat = (200, 3) if args.quick else (20_000, 5)
    keys = [SigningKey.generate("RS256") for _ in range(args.clusters)]
    last = args.clusters - 1
    token = sign(keys[last], build_claims(issuer=f"https://cluster-{last}.test", namespace="shop",
                                          service_account="cart", audiences=("bench",), lifetime=3600,
                                          now=NOW - 10, pod="p", node=None, warn_after=None, extra=None, drop=()))
    results: dict[str, float] = {}
    for cache in (True, False):
        size = {} if cache else {"token_cache_size": 0}
        single = TokenVerifier(config(last, keys[last], **size), clock=lambda: NOW)
        multi = MultiClusterVerifier({f"c{i}": config(i, k, **size) for i, k in enumerate(keys)}, clock=lambda: NOW)
        assert multi.verify(token).cluster == f"c{last}"
        path = "cached" if cache else "uncached"
        results[f"single_{path}"] = per_call(lambda v=single: v.verify(token), number, repeat)  # type: ignore[misc]
        results[f"multi_{path}"] = per_call(lambda v=multi: v.verify(token), number, repeat)  # type: ignore[misc]
    rows = [(path, results[f"single_{path}"], results[f"multi_{path}"],
             results[f"multi_{path}"] / results[f"single_{path}"]) for path in ("cached", "uncached")]
    table(f"Multi-cluster routing ({args.clusters} clusters, RS256)", ("path", "single µs", "multi µs", "multi/single"),
          [(p, f"{s:.2f}", f"{m:.2f}", f"{r:.2f}x") for p, s, m, r in rows])
    print(json.dumps({"clusters": args.clusters, **{k: round(v, 2) for k, v in results.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
