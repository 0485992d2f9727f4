"""Helpers shared by the adapter tests: TestClient import, verifiers on the fake issuer, bad tokens and headers."""

from __future__ import annotations

import time
from typing import Any

# Starlette >= 1.10 builds its TestClient on httpx2 and warns when only httpx is installed: the test extra installs
# httpx2 (Python >= 3.11; on 3.10 pip picks a Starlette whose TestClient uses httpx), so no warning is hidden here.
from starlette.testclient import TestClient

from k8s_jwt_auth import KeySetUnavailable, TokenVerifier, VerificationKey, VerifierConfig
from k8s_jwt_auth.testing import FakeIssuer, SigningKey

__all__ = [
    "MALFORMED_HEADERS",
    "TestClient",
    "UnavailableKeys",
    "bad_tokens",
    "bearer",
    "static_verifier",
]


def static_verifier(issuer: FakeIssuer, **overrides: Any) -> TokenVerifier:
    """A verifier for the fake issuer's current keys, given statically (no fetch), audience "test"."""
    settings: dict[str, Any] = {"issuer": issuer.issuer, "audiences": ["test"], "jwks": issuer.jwks()}
    settings.update(overrides)
    return TokenVerifier(VerifierConfig(**settings))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class UnavailableKeys:
    """A key source that can never get keys (the issuer is down): every lookup is a 503."""

    def get(self, kid: str | None, alg: str) -> VerificationKey:
        raise KeySetUnavailable("the issuer is down", retry_after=7)

    async def get_async(self, kid: str | None, alg: str) -> VerificationKey:
        return self.get(kid, alg)


def bad_tokens(issuer: FakeIssuer) -> dict[str, tuple[str, str]]:
    """Tokens the verifier must refuse, each with its expected reason."""
    good = issuer.mint("payments", "worker", pod="worker-1")
    head, payload, signature = good.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    return {
        "expired": (issuer.mint(now=time.time() - 7200, lifetime=600), "expired"),
        "tampered": (f"{head}.{payload}.{flipped}", "bad_signature"),
        "wrong_audience": (issuer.mint(audiences="someone-else"), "bad_audience"),
        "foreign_key": (issuer.mint(key=SigningKey.generate("ES256")), "unknown_key"),
        "garbage": ("not-a-jwt", "malformed"),
    }


# Authorization header values that must be answered with a 4xx (never a 2xx or a 5xx).
MALFORMED_HEADERS: dict[str, bytes] = {
    "bearer_without_token": b"Bearer",
    "bearer_blank": b"Bearer    ",
    "two_tokens": b"Bearer a b",
    "tab_inside": b"Bearer a\tb",
    "other_scheme": b"Basic dXNlcjpwYXNz",
    "empty": b"",
    "non_latin1_bytes": b"Bearer \xff\xfe\xc3\x28",
    "utf8_token": "Bearer ťoken".encode(),
    "three_dots": b"Bearer ...",
    "huge_token": b"Bearer " + b"a" * 20_000,
    "huge_header": b"Bearer " + b"a.b.c" * 14_000,
    "json_token": b'Bearer {"alg":"none"}',
}
