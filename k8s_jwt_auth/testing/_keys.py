"""Signing keys and token minting for tests: tokens with exactly the shape kube-apiserver gives them."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from k8s_jwt_auth.keys import kube_key_id

__all__ = ["SigningKey", "b64url", "build_claims", "sign"]

_CURVES = {"ES256": (ec.SECP256R1(), hashes.SHA256(), 32, "P-256"),
           "ES384": (ec.SECP384R1(), hashes.SHA384(), 48, "P-384"),
           "ES512": (ec.SECP521R1(), hashes.SHA512(), 66, "P-521")}


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JWS uses it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64(value: int, size: int | None = None) -> str:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(length, "big"))


@dataclass(frozen=True)
class SigningKey:
    """A private key with its `kid` and algorithm. `kid` is computed the way kube-apiserver does it
    (base64url SHA-256 of the DER public key) unless given."""

    kid: str
    alg: str
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, alg: str = "RS256", kid: str | None = None, rsa_bits: int = 2048) -> SigningKey:
        """Generate a fresh key for `alg` (RS256, ES256, ES384 or ES512)."""
        if alg == "RS256":
            private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = rsa.generate_private_key(65537, rsa_bits)
        elif alg in _CURVES:
            private = ec.generate_private_key(_CURVES[alg][0])
        else:
            raise ValueError(f"unsupported algorithm {alg!r}")
        return cls(kid=kid or kube_key_id(private.public_key()), alg=alg, private_key=private)

    def public_jwk(self) -> dict[str, str]:
        """The public JWK, with the members kube-apiserver serves (`use`, `kty`, `kid`, `alg`, ...)."""
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            numbers = public.public_numbers()
            return {"use": "sig", "kty": "RSA", "kid": self.kid, "alg": self.alg,
                    "n": _int_b64(numbers.n), "e": _int_b64(numbers.e)}
        curve = _CURVES[self.alg]
        ec_numbers = public.public_numbers()
        return {"use": "sig", "kty": "EC", "kid": self.kid, "crv": curve[3], "alg": self.alg,
                "x": _int_b64(ec_numbers.x, curve[2]), "y": _int_b64(ec_numbers.y, curve[2])}

    def public_pem(self) -> str:
        """The public key as a PEM `PUBLIC KEY` block."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")

    def sign(self, signing_input: bytes) -> bytes:
        """The raw JWS signature of `signing_input` (r||s for EC)."""
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        _, digest, size, _ = _CURVES[self.alg]
        r, s = decode_dss_signature(self.private_key.sign(signing_input, ec.ECDSA(digest)))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def _segment(value: Mapping[str, Any] | bytes) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    return b64url(raw)


def sign(key: SigningKey, payload: Mapping[str, Any] | bytes, header: Mapping[str, Any] | None = None) -> str:
    """Sign a compact JWS. `header` defaults to `{"alg", "kid"}` like kube-apiserver's; a given header is
    used as is (so tests can forge `alg`, `crit`, `jku`, ...). `payload` may be raw bytes."""
    head = dict(header) if header is not None else {"alg": key.alg, "kid": key.kid}
    signing_input = f"{_segment(head)}.{_segment(payload)}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode('ascii')))}"


def build_claims(
    *,
    issuer: str,
    namespace: str = "default",
    service_account: str = "default",
    audiences: Sequence[str] = ("test",),
    lifetime: float = 3600,
    now: float | None = None,
    pod: str | tuple[str, str] | None = None,
    node: str | tuple[str, str] | None = None,
    warn_after: float | None = None,
    extra: Mapping[str, Any] | None = None,
    drop: Sequence[str] = (),
    service_account_uid: str | None = None,
) -> dict[str, Any]:
    """Claims shaped like a TokenRequest token's (see `tests/fixtures/k8s/tokens/*.json` in the repository).

    `pod`/`node` are a name or a `(name, uid)` pair. `extra` members override or add claims; `drop`
    removes top-level claims (to test missing ones). `service_account_uid` defaults to a UID derived from
    the namespace and name (the same for every token of that service account).
    """
    issued = int(time.time() if now is None else now)
    if service_account_uid is None:
        service_account_uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{service_account}"))
    k8s: dict[str, Any] = {
        "namespace": namespace,
        "serviceaccount": {"name": service_account, "uid": service_account_uid},
    }
    for kind, value in (("pod", pod), ("node", node)):
        if value is not None:
            name, uid = (value, str(uuid.uuid4())) if isinstance(value, str) else value
            k8s[kind] = {"name": name, "uid": uid}
    if warn_after is not None:
        k8s["warnafter"] = int(warn_after)
    claims: dict[str, Any] = {
        "aud": list(audiences),
        "exp": issued + int(lifetime),
        "iat": issued,
        "iss": issuer,
        "jti": str(uuid.uuid4()),
        "kubernetes.io": k8s,
        "nbf": issued,
        "sub": f"system:serviceaccount:{namespace}:{service_account}",
    }
    claims.update(extra or {})
    for name in drop:
        claims.pop(name, None)
    return claims
