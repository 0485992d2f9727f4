"""Verification keys: one parsed public key, and a set of them read from a JWKS document or PEMs.

* `VerificationKey` — one parsed public key (RSA or EC) with the algorithms it may verify.
* `KeySet` — an immutable set of keys, built from a JWKS document (skipping unusable keys) or PEMs.
* `jwk_thumbprint`, `kube_key_id` — the RFC 7638 thumbprint and the `kid` kube-apiserver gives a key.

This module does no I/O and knows nothing of where keys come from (`k8s_jwt_auth.keys` does); it is the
bottom layer every key source builds on, and the public names are re-exported from `k8s_jwt_auth.keys`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict, Union

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ._jws import b64url_decode
from .errors import InvalidToken

__all__ = [
    "DEFAULT_MAX_KEYS",
    "JWK",
    "JWKS",
    "KeySet",
    "VerificationKey",
    "jwk_thumbprint",
    "kube_key_id",
]

logger = logging.getLogger("k8s_jwt_auth.keys")

PublicKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey]  # noqa: UP007 - runtime alias on 3.10

MIN_RSA_BITS = 2048
MAX_RSA_EXPONENT = 2**32  # Kubernetes keys use 65537
DEFAULT_MAX_KEYS = 100  # keys taken from one JWKS document; Kubernetes publishes a handful
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_EC_JWK_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_EC_CURVES = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
_HASHES: dict[str, hashes.HashAlgorithm] = {
    "RS256": hashes.SHA256(), "ES256": hashes.SHA256(), "ES384": hashes.SHA384(), "ES512": hashes.SHA512(),
}
_EC_SIZES = {"ES256": 32, "ES384": 48, "ES512": 66}


class JWK(TypedDict, total=False):
    """One JSON Web Key (RFC 7517) as served by kube-apiserver."""

    kty: str
    kid: str
    use: str
    alg: str
    n: str
    e: str
    crv: str
    x: str
    y: str


class JWKS(TypedDict):
    """A JSON Web Key Set document: `{"keys": [...]}`."""

    keys: list[JWK]


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A parsed public key and the JWS algorithms it may verify.

    `thumbprint` is the key's RFC 7638 JWK thumbprint (SHA-256, base64url), computed once from its public
    numbers: it names the key *material*, where `kid` is only a label an issuer may reuse.
    """

    kid: str | None
    key: PublicKey
    algorithms: frozenset[str]
    thumbprint: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "thumbprint", jwk_thumbprint(self.key))

    @classmethod
    def from_public_key(cls, key: object, kid: str | None = None, alg: str | None = None) -> VerificationKey:
        """Wrap a `cryptography` public key; `alg` narrows the algorithms it may verify.

        Raises:
            ValueError: for key types Kubernetes does not sign with, or RSA keys under 2048 bits.
        """
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < MIN_RSA_BITS:
                raise ValueError(f"RSA key of {key.key_size} bits is too small (minimum {MIN_RSA_BITS})")
            _check_rsa_exponent(key.public_numbers().e)
            allowed = {"RS256"}
        elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_ALGORITHMS:
            allowed = {_EC_ALGORITHMS[key.curve.name]}
        else:
            raise ValueError(f"unsupported key type {type(key).__name__}")
        if alg is not None:
            if alg not in allowed:
                raise ValueError(f"key alg {alg!r} does not fit its key type")
            allowed = {alg}
        return cls(kid=kid, key=key, algorithms=frozenset(allowed))

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> VerificationKey:
        """Parse one JWK (RSA or EC P-256/384/521 public key).

        Raises:
            ValueError: for anything that is not a usable signing public key.
        """
        if jwk.get("use", "sig") != "sig":
            raise ValueError(f"key use {jwk.get('use')!r} is not 'sig'")
        if "d" in jwk:
            raise ValueError("refusing a private key in a JWKS")
        kid, alg = jwk.get("kid"), jwk.get("alg")
        if kid is not None and not isinstance(kid, str):
            raise ValueError("kid is not a string")
        if alg is not None and not isinstance(alg, str):
            raise ValueError("alg is not a string")
        kty = jwk.get("kty")
        if kty == "RSA":
            n, e = _b64_int(jwk, "n"), _b64_int(jwk, "e")
            public: PublicKey = rsa.RSAPublicNumbers(e, n).public_key()
        elif kty == "EC":
            curve = _EC_CURVES.get(str(jwk.get("crv")))
            if curve is None:
                raise ValueError(f"unsupported curve {jwk.get('crv')!r}")
            public = ec.EllipticCurvePublicNumbers(_b64_int(jwk, "x"), _b64_int(jwk, "y"), curve).public_key()
        else:
            raise ValueError(f"unsupported kty {kty!r}")
        return cls.from_public_key(public, kid=kid, alg=alg)

    def verify(self, alg: str, signing_input: bytes, signature: bytes) -> bool:
        """Whether `signature` is a valid `alg` signature of `signing_input` by this key."""
        try:
            if isinstance(self.key, rsa.RSAPublicKey):
                self.key.verify(signature, signing_input, padding.PKCS1v15(), _HASHES[alg])
            else:
                size = _EC_SIZES[alg]
                if len(signature) != 2 * size:
                    return False
                r = int.from_bytes(signature[:size], "big")
                s = int.from_bytes(signature[size:], "big")
                self.key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(_HASHES[alg]))
        except (InvalidSignature, ValueError, UnsupportedAlgorithm):
            return False
        return True


def jwk_thumbprint(public: object) -> str:
    """The RFC 7638 JWK thumbprint of an RSA or EC public key: unpadded base64url SHA-256 of its required JWK
    members (`e`, `kty`, `n` or `crv`, `kty`, `x`, `y`) in lexicographic order, without whitespace.

    Raises:
        ValueError: for other key types.
    """
    if isinstance(public, rsa.RSAPublicKey):
        rsa_numbers = public.public_numbers()
        members = {"e": _b64_member(rsa_numbers.e), "kty": "RSA", "n": _b64_member(rsa_numbers.n)}
    elif isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name in _EC_JWK_CURVES:
        ec_numbers, size = public.public_numbers(), (public.curve.key_size + 7) // 8
        members = {"crv": _EC_JWK_CURVES[public.curve.name], "kty": "EC", "x": _b64_member(ec_numbers.x, size),
                   "y": _b64_member(ec_numbers.y, size)}
    else:
        raise ValueError(f"unsupported key type {type(public).__name__}")
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode("ascii")
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode("ascii")


def _b64_member(value: int, size: int | None = None) -> str:
    """An integer as a JWK member: big-endian octets (minimal, or `size` for EC coordinates), base64url."""
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return base64.urlsafe_b64encode(value.to_bytes(length, "big")).rstrip(b"=").decode("ascii")


def _short(kid: object) -> str:
    text = repr(kid)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_rsa_exponent(e: int) -> None:
    """Refuse exponents no real key uses: even (not invertible), below 3, or above 2**32 — a huge exponent
    makes every signature check (so every forged token) cost milliseconds of CPU."""
    if e < 3 or e % 2 == 0 or e > MAX_RSA_EXPONENT:
        shown = e if e.bit_length() <= 64 else f"a {e.bit_length()}-bit number"
        raise ValueError(f"RSA public exponent {shown} is not odd and within [3, 2**32]")


def _b64_int(jwk: Mapping[str, Any], name: str) -> int:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"JWK member {name!r} is missing")
    try:
        return int.from_bytes(b64url_decode(value, f"JWK member {name!r}"), "big")
    except InvalidToken as exc:
        raise ValueError(str(exc)) from exc


class KeySet:
    """An immutable set of verification keys, looked up by `kid` (and algorithm)."""

    __slots__ = ("_by_kid", "_keys", "skipped")

    def __init__(self, keys: Iterable[VerificationKey], skipped: int = 0) -> None:
        self._keys: tuple[VerificationKey, ...] = tuple(keys)
        self._by_kid: dict[str | None, VerificationKey] = {}
        for k in self._keys:
            self._by_kid.setdefault(k.kid, k)
        self.skipped = skipped

    @classmethod
    def from_jwks(cls, document: object, *, max_keys: int = DEFAULT_MAX_KEYS) -> KeySet:
        """Parse a JWKS document (a mapping, or its JSON text/bytes), skipping keys that cannot be used.

        Unusable keys are counted in `skipped` and reported in ONE warning per document, whatever their
        number. A document with more than `max_keys` entries is refused whole before any key is parsed
        (Kubernetes publishes a handful; a hostile issuer could publish hundreds of thousands).

        Raises:
            ValueError: when the document is not a JWKS (`{"keys": [...]}`) or has more than `max_keys` keys.
        """
        if isinstance(document, (str, bytes, bytearray)):
            try:
                document = json.loads(document)
            except (UnicodeDecodeError, RecursionError) as exc:
                raise ValueError(f"JWKS is not JSON: {exc}") from exc
        if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
            raise ValueError('a JWKS must be a JSON object with a "keys" list')
        entries = document["keys"]
        if len(entries) > max_keys:
            raise ValueError(f"the JWKS has {len(entries)} keys, more than the {max_keys} accepted (max_keys)")
        keys, problems = [], []
        for jwk in entries:
            try:
                if not isinstance(jwk, Mapping):
                    raise ValueError("not an object")
                keys.append(VerificationKey.from_jwk(jwk))
            except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                kid = jwk.get("kid") if isinstance(jwk, Mapping) else None
                problems.append(f"{_short(kid)}: {str(exc)[:120]}")
        if problems:
            logger.warning("skipped %d unusable key(s) of %d in the JWKS: %s%s", len(problems), len(entries),
                           "; ".join(problems[:3]), "; ..." if len(problems) > 3 else "")
        return cls(keys, skipped=len(problems))

    @classmethod
    def from_pem(cls, pems: Iterable[str | bytes]) -> KeySet:
        """Build a set from PEM public keys (each may be a file's whole text).

        Each key's `kid` is computed as kube-apiserver computes it (base64url SHA-256 of the DER public
        key), so tokens signed with the cluster's `--service-account-signing-key-file` find their key.

        Raises:
            ValueError: when a PEM cannot be loaded or is not a supported public key.
        """
        keys = []
        for pem in pems:
            data = pem.encode("ascii") if isinstance(pem, str) else pem
            for block in _pem_blocks(data):
                public = serialization.load_pem_public_key(block)
                keys.append(VerificationKey.from_public_key(public, kid=kube_key_id(public)))
        return cls(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Any:
        return iter(self._keys)

    @property
    def kids(self) -> tuple[str | None, ...]:
        """The key ids in the set, in document order."""
        return tuple(k.kid for k in self._keys)

    def find(self, kid: str | None, alg: str) -> VerificationKey | None:
        """The key for `kid`; for a token without `kid`, the only key that can verify `alg`."""
        if kid is not None:
            return self._by_kid.get(kid)
        fitting = [k for k in self._keys if alg in k.algorithms]
        return fitting[0] if len(fitting) == 1 else None


def kube_key_id(public: object) -> str:
    """The `kid` kube-apiserver gives a public key: unpadded base64url SHA-256 of its DER SubjectPublicKeyInfo."""
    if not isinstance(public, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise ValueError(f"unsupported key type {type(public).__name__}")
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


def _pem_blocks(data: bytes) -> list[bytes]:
    marker = b"-----END PUBLIC KEY-----"
    blocks = [part + marker for part in data.split(marker) if b"-----BEGIN" in part]
    if not blocks:
        raise ValueError("no PEM public key found (expected -----BEGIN PUBLIC KEY-----)")
    return blocks
