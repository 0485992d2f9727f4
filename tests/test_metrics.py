"""Prometheus metrics: values after scripted requests (a fresh registry per test); the no-op without the extra."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from k8s_jwt_auth import RemoteKeySource, TokenVerifier, VerifierConfig
from k8s_jwt_auth.integrations.starlette import K8sJWTAuthMiddleware
from k8s_jwt_auth.metrics import Metrics
from k8s_jwt_auth.testing import FakeIssuer

from ._asgi import TestClient, bad_tokens, bearer, static_verifier


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    sample = registry.get_sample_value(name, labels)
    return 0.0 if sample is None else sample


def remote_verifier(issuer: FakeIssuer, metrics: Metrics, **overrides: Any) -> TokenVerifier:
    """A verifier that fetches the fake issuer's keys (discovery, then JWKS)."""
    return TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences=["test"], **overrides), observer=metrics)


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def client_for(verifier: TokenVerifier) -> TestClient:
    app = Starlette(routes=[Route("/", ok)], middleware=[Middleware(K8sJWTAuthMiddleware, verifier=verifier)])
    return TestClient(app)


def test_scripted_requests_through_starlette(issuer: FakeIssuer, registry: CollectorRegistry) -> None:
    verifier = remote_verifier(issuer, Metrics(registry))
    assert isinstance(verifier.keys, RemoteKeySource) and verifier.keys.observer is verifier.observer
    good = issuer.mint("payments", "worker")
    bad = bad_tokens(issuer)
    with client_for(verifier) as client:
        for _ in range(3):
            assert client.get("/", headers=bearer(good)).status_code == 200
        for case in ("expired", "wrong_audience", "garbage"):
            assert client.get("/", headers=bearer(bad[case][0])).status_code == 401
        assert client.get("/", headers=bearer(bad["foreign_key"][0])).status_code == 401  # unknown kid: a refetch
        assert client.get("/").status_code == 401  # no token: never reaches the verifier
    total = "k8s_jwt_auth_verifications_total"
    assert value(registry, total, outcome="valid", reason="ok") == 3
    for reason in ("expired", "bad_audience", "malformed", "unknown_key"):
        assert value(registry, total, outcome="invalid", reason=reason) == 1, reason
    assert value(registry, "k8s_jwt_auth_token_cache_requests_total", result="hit") == 2
    assert value(registry, "k8s_jwt_auth_token_cache_requests_total", result="miss") == 5  # 1 good + 4 bad
    assert value(registry, "k8s_jwt_auth_verification_seconds_count", cache="hit") == 2
    assert value(registry, "k8s_jwt_auth_verification_seconds_count", cache="miss") == 5
    assert value(registry, "k8s_jwt_auth_verification_seconds_sum", cache="miss") > 0
    assert value(registry, "k8s_jwt_auth_jwks_fetches_total", outcome="success") == issuer.jwks_fetches == 2
    assert 0 <= value(registry, "k8s_jwt_auth_jwks_last_refresh_age_seconds") < 60


def test_fetch_failures_by_kind_and_unavailable_outcome(issuer: FakeIssuer, registry: CollectorRegistry) -> None:
    verifier = remote_verifier(issuer, Metrics(registry))
    issuer.fail("error")
    token = issuer.mint()
    with client_for(verifier) as client:
        assert client.get("/", headers=bearer(token)).status_code == 503
    assert value(registry, "k8s_jwt_auth_verifications_total", outcome="unavailable", reason="keys_unavailable") == 1
    failures = {s.labels["outcome"]: s.value for m in registry.collect() if m.name == "k8s_jwt_auth_jwks_fetches"
                for s in m.samples if s.name.endswith("_total")}
    assert failures == {"http_status": 1.0}
    assert math.isnan(value(registry, "k8s_jwt_auth_jwks_last_refresh_age_seconds"))  # never fetched


def test_sync_verify_and_disabled_cache(issuer: FakeIssuer, registry: CollectorRegistry) -> None:
    verifier = static_verifier(issuer, token_cache_size=0)
    verifier = TokenVerifier(verifier.config, observer=Metrics(registry))
    token = issuer.mint()
    verifier.verify(token)
    verifier.verify(token)
    assert value(registry, "k8s_jwt_auth_verification_seconds_count", cache="disabled") == 2
    assert value(registry, "k8s_jwt_auth_token_cache_requests_total", result="hit") == 0
    assert value(registry, "k8s_jwt_auth_token_cache_requests_total", result="miss") == 0
    assert value(registry, "k8s_jwt_auth_jwks_fetches_total", outcome="success") == 0  # static keys


def test_a_non_auth_error_is_not_counted(issuer: FakeIssuer, registry: CollectorRegistry) -> None:
    class Broken:
        def get(self, kid: str | None, alg: str) -> Any:
            raise RuntimeError("a bug")

        async def get_async(self, kid: str | None, alg: str) -> Any:
            raise RuntimeError("a bug")

    verifier = TokenVerifier(static_verifier(issuer).config, keys=Broken(), observer=Metrics(registry))
    with pytest.raises(RuntimeError):
        verifier.verify(issuer.mint())
    assert b"k8s_jwt_auth_verifications_total{" not in generate_latest(registry)


def test_two_metrics_in_separate_registries_do_not_clash(issuer: FakeIssuer) -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    TokenVerifier(static_verifier(issuer).config, observer=Metrics(first)).verify(issuer.mint())
    Metrics(second)
    assert value(first, "k8s_jwt_auth_verifications_total", outcome="valid", reason="ok") == 1
    assert value(second, "k8s_jwt_auth_verifications_total", outcome="valid", reason="ok") == 0


def test_observer_is_not_replaced_on_a_source_that_has_one(issuer: FakeIssuer, registry: CollectorRegistry) -> None:
    own = Metrics(CollectorRegistry())
    keys = RemoteKeySource(issuer.issuer, observer=own)
    TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences=["test"]), keys=keys, observer=Metrics(registry))
    assert keys.observer is own


def test_no_op_without_prometheus_client() -> None:
    # prometheus_client is installed here and already imported by this process, so `import prometheus_client`
    # cannot be made to fail in place (reloading k8s_jwt_auth.metrics would leave other modules holding the old
    # classes). A fresh interpreter with sys.modules["prometheus_client"] = None makes the import raise
    # ImportError exactly as on a machine without the extra.
    script = textwrap.dedent("""
        import sys
        sys.modules["prometheus_client"] = None
        from k8s_jwt_auth import TokenVerifier, VerifierConfig
        from k8s_jwt_auth.metrics import Metrics
        from k8s_jwt_auth.testing import SigningKey, build_claims, sign
        key = SigningKey.generate("ES256")
        config = VerifierConfig(issuer="https://i.test", audiences=["test"], jwks={"keys": [key.public_jwk()]})
        metrics = Metrics()
        verifier = TokenVerifier(config, observer=metrics)
        token = sign(key, build_claims(issuer="https://i.test", audiences=("test",)))
        assert verifier.verify(token).namespace == "default"
        assert verifier.verify(token).namespace == "default"
        metrics.on_fetch("success")
        metrics.on_fetch("timeout")
        print(metrics.enabled, "prometheus_client" in sys.modules and sys.modules["prometheus_client"] is None)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]


def test_the_core_and_the_audit_log_do_not_import_prometheus_client() -> None:
    script = ("import sys, k8s_jwt_auth, k8s_jwt_auth.audit, k8s_jwt_auth.verifier; "
              "print('prometheus_client' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
