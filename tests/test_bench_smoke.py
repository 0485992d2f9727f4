"""A smoke run of the benchmark suite, so that it keeps working (numbers are not asserted, behaviour is)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run.py"


def test_quick_benchmark_run_completes_with_one_jwks_fetch_on_cold_start() -> None:
    proc = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if not k.startswith("K8S_JWT_AUTH_")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["cold_start_jwks_fetches"] == 1
    for alg in ("RS256", "ES256"):
        ratios = summary[alg]
        assert ratios["uncached_vs_floor"] > 0 and ratios["cached_speedup_vs_pyjwt_jwks"] > 1
    assert set(summary["http_with_auth_vs_without"]) >= {"Starlette + uvicorn"}
    for section in ("Verification, RS256", "Verification, ES256", "Cold start", "HTTP overhead",
                    "Verified-token cache memory"):
        assert f"## {section}" in proc.stdout


ADAPTERS = BENCH.with_name("adapters.py")


def test_quick_adapter_overhead_run_measures_every_framework_in_every_mode() -> None:
    proc = subprocess.run([sys.executable, str(ADAPTERS), "--quick"], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if not k.startswith("K8S_JWT_AUTH_")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for framework in ("starlette", "fastapi", "flask", "django"):  # every app answered 200 before it was timed
        assert summary[framework]["bare_us"] > 0, summary
    assert all(us > 0 for us in summary["shared"].values())
    assert "## Per-request overhead in process" in proc.stdout
