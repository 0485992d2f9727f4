"""The attack suite: every forged, tampered or malformed token is refused with its exact reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest

from k8s_jwt_auth import InvalidToken, TokenVerifier
from k8s_jwt_auth.testing import FakeIssuer, SigningKey, b64url, build_claims, sign

from .conftest import NOW, TEST_ISSUER

Factory = Callable[..., TokenVerifier]


def claims(**kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("namespace", "payments")
    kwargs.setdefault("service_account", "worker")
    kwargs.setdefault("now", NOW)
    return build_claims(issuer=TEST_ISSUER, audiences=["test"], **kwargs)


def rejected(verifier: TokenVerifier, token: str) -> InvalidToken:
    with pytest.raises(InvalidToken) as info:
        verifier.verify(token)
    error = info.value
    if len(token) > 8:
        assert token not in error.message and token not in repr(error)
    return error


def unsigned(header: dict[str, Any], payload: dict[str, Any] | bytes, signature: bytes = b"") -> str:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return f"{b64url(json.dumps(header).encode())}.{b64url(raw)}.{b64url(signature)}"


def test_valid_tokens_of_every_algorithm_verify(make_verifier: Factory) -> None:
    keys = [SigningKey.generate(alg) for alg in ("RS256", "ES256", "ES384", "ES512")]
    verifier = make_verifier(jwks={"keys": [k.public_jwk() for k in keys]})
    for key in keys:
        assert verifier.verify(sign(key, claims())).namespace == "payments"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", ""])
def test_alg_none(make_verifier: Factory, rsa_key: SigningKey, alg: str) -> None:
    token = unsigned({"alg": alg, "kid": rsa_key.kid}, claims())
    assert rejected(make_verifier(), token).reason == "disallowed_algorithm"


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_signed_with_the_rsa_public_key(make_verifier: Factory, rsa_key: SigningKey, alg: str) -> None:
    header = {"alg": alg, "kid": rsa_key.kid}
    head, body = b64url(json.dumps(header).encode()), b64url(json.dumps(claims()).encode())
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    mac = hmac.new(rsa_key.public_pem().encode(), f"{head}.{body}".encode(), digest).digest()
    assert rejected(make_verifier(), f"{head}.{body}.{b64url(mac)}").reason == "disallowed_algorithm"


def test_alg_outside_configured_allowlist(make_verifier: Factory, ec_key: SigningKey) -> None:
    assert rejected(make_verifier(algorithms=["RS256"]), sign(ec_key, claims())).reason == "disallowed_algorithm"


def test_rs256_header_on_an_ec_key_kid(make_verifier: Factory, ec_key: SigningKey, rsa_key: SigningKey) -> None:
    token = sign(rsa_key, claims(), {"alg": "RS256", "kid": ec_key.kid})
    assert rejected(make_verifier(), token).reason == "disallowed_algorithm"


@pytest.mark.parametrize("member", ["jwk", "jku", "x5u", "x5c"])
def test_embedded_key_headers_are_never_used(make_verifier: Factory, rsa_key: SigningKey, member: str) -> None:
    attacker = SigningKey.generate("RS256", kid=rsa_key.kid)
    value: Any = {"jwk": attacker.public_jwk(), "jku": "https://attacker.example/jwks",
                  "x5u": "https://attacker.example/cert.pem", "x5c": ["MIIBattacker"]}[member]
    # kid of a trusted key: the attacker's signature does not verify with it
    token = sign(attacker, claims(), {"alg": "RS256", "kid": rsa_key.kid, member: value})
    assert rejected(make_verifier(), token).reason == "bad_signature"
    # the attacker's own kid: not in our key set, whatever the header says
    token = sign(attacker, claims(), {"alg": "RS256", "kid": "attacker", member: value})
    assert rejected(make_verifier(), token).reason == "unknown_key"


def test_jku_pointing_at_a_live_jwks_is_never_fetched(make_verifier: Factory) -> None:
    with FakeIssuer() as attacker:
        key = attacker.key
        token = sign(key, claims(), {"alg": "RS256", "kid": key.kid, "jku": attacker.jwks_uri})
        assert rejected(make_verifier(), token).reason == "unknown_key"
        assert attacker.jwks_fetches == attacker.discovery_fetches == 0


def test_unknown_kid(make_verifier: Factory) -> None:
    stranger = SigningKey.generate("RS256")
    error = rejected(make_verifier(), sign(stranger, claims()))
    assert (error.reason, error.claim) == ("unknown_key", "kid")


def test_signature_from_another_key_with_the_same_kid(make_verifier: Factory, rsa_key: SigningKey) -> None:
    impostor = SigningKey.generate("RS256", kid=rsa_key.kid)
    assert rejected(make_verifier(), sign(impostor, claims())).reason == "bad_signature"


def test_ec_signature_from_another_key_with_the_same_kid(make_verifier: Factory, ec_key: SigningKey) -> None:
    impostor = SigningKey.generate("ES256", kid=ec_key.kid)
    assert rejected(make_verifier(), sign(impostor, claims())).reason == "bad_signature"


def test_tampered_payload(make_verifier: Factory, rsa_key: SigningKey) -> None:
    head, _, sig = sign(rsa_key, claims()).split(".")
    forged = b64url(json.dumps(claims(namespace="kube-system")).encode())
    assert rejected(make_verifier(), f"{head}.{forged}.{sig}").reason == "bad_signature"


@pytest.mark.parametrize("signature", [b"", b"\x00" * 63, b"\x00" * 64, b"\x01" * 65])
def test_broken_ec_signatures(make_verifier: Factory, ec_key: SigningKey, signature: bytes) -> None:
    token = unsigned({"alg": "ES256", "kid": ec_key.kid}, claims(), signature)
    assert rejected(make_verifier(), token).reason == "bad_signature"


def test_crit_header(make_verifier: Factory, rsa_key: SigningKey) -> None:
    token = sign(rsa_key, claims(), {"alg": "RS256", "kid": rsa_key.kid, "crit": ["exp"], "exp": 1})
    error = rejected(make_verifier(), token)
    assert (error.reason, error.claim) == ("unsupported_critical_header", "crit")


@pytest.mark.parametrize(
    ("payload", "reason", "claim"),
    [
        (claims(lifetime=-120), "expired", "exp"),
        (claims(now=NOW + 3600), "not_yet_valid", "nbf"),
        (claims(drop=["nbf"], extra={"iat": NOW + 3600}), "issued_in_future", "iat"),
        (claims(extra={"iss": "https://attacker.example"}), "bad_issuer", "iss"),
        (claims(drop=["iss"]), "missing_claim", "iss"),
        (claims(extra={"aud": ["other-api"]}), "bad_audience", "aud"),
        (claims(extra={"aud": "other-api"}), "bad_audience", "aud"),
        (claims(extra={"aud": []}), "bad_audience", "aud"),
        (claims(drop=["aud"]), "missing_claim", "aud"),
        (claims(extra={"aud": ["test", 7]}), "malformed", "aud"),
        (claims(drop=["exp"]), "missing_claim", "exp"),
        (claims(extra={"exp": "tomorrow"}), "malformed", "exp"),
        (claims(extra={"exp": True}), "malformed", "exp"),
        (claims(extra={"exp": 1e300}), "malformed", "exp"),
        (claims(extra={"sub": "system:serviceaccount:kube-system:worker"}), "claim_mismatch", "sub"),
        (claims(extra={"sub": "system:serviceaccount:payments:admin"}), "claim_mismatch", "sub"),
        (claims(extra={"sub": "system:node:node-1"}), "claim_mismatch", "sub"),
        (claims(extra={"sub": "system:serviceaccount:payments:worker:extra"}), "claim_mismatch", "sub"),
        (claims(extra={"sub": "system:serviceaccount:Payments:worker"}), "claim_mismatch", "sub"),
        (claims(drop=["sub"]), "missing_claim", "sub"),
        (claims(drop=["kubernetes.io"]), "missing_claim", "kubernetes.io"),
        (claims(extra={"kubernetes.io": "payments"}), "malformed", "kubernetes.io"),
        (claims(extra={"kubernetes.io": {"namespace": "payments"}}), "missing_claim",
         "kubernetes.io.serviceaccount"),
        (claims(pod=("web", 5)), "malformed", "kubernetes.io.pod.uid"),  # type: ignore[arg-type]
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_claims(make_verifier: Factory, rsa_key: SigningKey, payload: dict[str, Any], reason: str,
                    claim: str) -> None:
    error = rejected(make_verifier(), sign(rsa_key, payload))
    assert (error.reason, error.claim) == (reason, claim)


def test_legacy_secret_token(make_verifier: Factory, rsa_key: SigningKey) -> None:
    legacy = {
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": "payments",
        "kubernetes.io/serviceaccount/secret.name": "worker-token-x7k2p",
        "kubernetes.io/serviceaccount/service-account.name": "worker",
        "kubernetes.io/serviceaccount/service-account.uid": "6f0b4e8a-0000-4000-8000-000000000001",
        "sub": "system:serviceaccount:payments:worker",
    }
    assert rejected(make_verifier(), sign(rsa_key, legacy)).reason == "legacy_token"
    # explicitly allowed: accepted although it has neither exp nor aud (documented as dangerous)
    identity = make_verifier(allow_legacy_tokens=True).verify(sign(rsa_key, legacy))
    assert (identity.namespace, identity.service_account, identity.expires_at) == ("payments", "worker", None)
    mismatched = dict(legacy, **{"kubernetes.io/serviceaccount/namespace": "kube-system"})
    assert rejected(make_verifier(allow_legacy_tokens=True), sign(rsa_key, mismatched)).reason == "claim_mismatch"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "a.b.c.d.e",
        "!!!.eyJ9.c2ln",
        "eyJhbGciOiJSUzI1NiJ9..c2ln",
        ".eyJzdWIiOiJ4In0.c2ln",
        "eyJhbGciOiJSUzI1NiJ9.eyJ9.c2ln=",
        "eyJhbGciOiJSUzI1NiJ9.e.c2ln",
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIi OiJ4In0.c2ln",
        f"{b64url(b'not json')}.e30.c2ln",
        f"{b64url(b'[1,2]')}.e30.c2ln",
        f"{b64url(bytes([0xff, 0xfe]))}.e30.c2ln",
        b64url(b'{"alg":"RS256","alg":"none"}') + ".e30.c2ln",
        b64url(b'{"alg":"RS256","kid":7}') + ".e30.c2ln",
        b64url(b'{"alg":"RS256","typ":"at+jwt"}') + ".e30.c2ln",
        b64url(b'{"kid":"x"}') + ".e30.c2ln",
        f"{b64url(b'[' * 5000)}.e30.c2ln",
    ],
)
def test_malformed_tokens(make_verifier: Factory, token: str) -> None:
    assert rejected(make_verifier(), token).reason == "malformed"


@pytest.mark.parametrize("payload", [b"not json", b"[1,2]", b'"a string"', b"\xff\xfe", b"null"])
def test_signed_non_object_payload(make_verifier: Factory, rsa_key: SigningKey, payload: bytes) -> None:
    assert rejected(make_verifier(), sign(rsa_key, payload)).reason == "malformed"


def test_oversized_token_rejected_before_parsing(make_verifier: Factory, rsa_key: SigningKey) -> None:
    token = sign(rsa_key, claims(extra={"padding": "x" * 20_000}))
    assert rejected(make_verifier(), token).reason == "too_large"
    assert rejected(make_verifier(), "!" * 100_000).reason == "too_large"
    assert make_verifier(max_token_size=64 * 1024).verify(token).namespace == "payments"


@pytest.mark.parametrize("token", [None, 12, ["a.b.c"], b"\xff.\xfe.\xfd"])
def test_non_text_input(make_verifier: Factory, token: Any) -> None:
    with pytest.raises(InvalidToken) as info:
        make_verifier().verify(token)
    assert info.value.reason == "malformed"


def test_token_as_bytes_is_accepted(make_verifier: Factory, rsa_key: SigningKey) -> None:
    assert make_verifier().verify(sign(rsa_key, claims()).encode()).service_account == "worker"


def test_padding_oracle_style_base64_variants(make_verifier: Factory, rsa_key: SigningKey) -> None:
    head, body, sig = sign(rsa_key, claims()).split(".")
    standard = base64.b64encode(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))).decode()
    if standard.rstrip("=") != sig:  # only meaningful when the alphabets differ for this signature
        assert rejected(make_verifier(), f"{head}.{body}.{standard}").reason == "malformed"
