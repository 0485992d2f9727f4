"""The app a bench/load.py server runs: `BENCH_FRAMEWORK` (starlette, fastapi, flask, django) in `BENCH_MODE`
(bare, ours, hand), with the key from `BENCH_JWKS_FILE` (see frameworks.py)."""

import os

from frameworks import Bench, build

app = build(os.environ["BENCH_FRAMEWORK"], os.environ["BENCH_MODE"], Bench.from_env())
