"""Shared fixtures: the real kube-apiserver fixtures, a fixed clock, a static-key verifier factory."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from k8s_jwt_auth import TokenVerifier, VerifierConfig
from k8s_jwt_auth.testing import FakeIssuer, SigningKey

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "k8s"  # recorded from a real kube-apiserver v1.36.2
REAL_ISSUER = "https://kubernetes.default.svc.cluster.local"
REAL_NOW = 1795428016  # iat + 60 of every fixture token: all three are valid then
TEST_ISSUER = "https://issuer.test"
NOW = 1_800_000_000.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No K8S_JWT_AUTH_* variable from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("K8S_JWT_AUTH_"):
            monkeypatch.delenv(name)
    yield


def real_token(name: str) -> str:
    return (FIXTURES / "tokens" / f"{name}.jwt").read_text().strip()


def real_detail(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "tokens" / f"{name}.json").read_text())


@pytest.fixture
def issuer(k8s_issuer: FakeIssuer) -> FakeIssuer:
    """The session's fake issuer, reset for this test (its initial key, no failure, zero counters)."""
    return k8s_issuer


@pytest.fixture(scope="session")
def rsa_key() -> SigningKey:
    return SigningKey.generate("RS256")


@pytest.fixture(scope="session")
def ec_key() -> SigningKey:
    return SigningKey.generate("ES256")


@pytest.fixture
def make_verifier(rsa_key: SigningKey, ec_key: SigningKey) -> Callable[..., TokenVerifier]:
    """A verifier trusting `rsa_key` and `ec_key` for TEST_ISSUER / audience "test" at time NOW."""

    def factory(*, now: float = NOW, **overrides: Any) -> TokenVerifier:
        settings: dict[str, Any] = {"issuer": TEST_ISSUER, "audiences": ["test"],
                                    "jwks": {"keys": [rsa_key.public_jwk(), ec_key.public_jwk()]}}
        settings.update(overrides)
        return TokenVerifier(VerifierConfig(**settings), clock=lambda: now)

    return factory
