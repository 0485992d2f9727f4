"""Verification keys and where they come from.

* `VerificationKey` — one parsed public key (RSA or EC) with the algorithms it may verify.
* `KeySet` — an immutable set of keys, built from a JWKS document (skipping unusable keys) or PEMs.
* `KeySource` — the protocol the verifier gets keys from: `get(kid, alg)` and `await get_async(kid, alg)`.
* `StaticKeySource` — a fixed `KeySet` (air-gapped clusters, tests).
* `RemoteKeySource` — OIDC discovery + JWKS over HTTPS, cached and rotated (see `k8s_jwt_auth._remote`).

A key is only ever found by `kid` (or, for a token without `kid`, as the only key that fits the
algorithm) in a set we fetched or were given: `jwk`, `jku`, `x5u` and `x5c` token headers are ignored.

`VerificationKey`, `KeySet`, `jwk_thumbprint` and `kube_key_id` are defined in `k8s_jwt_auth._keyset`, and
`RemoteKeySource`/`KeySourceStatus` in `k8s_jwt_auth._remote`; all are importable from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from cryptography.exceptions import UnsupportedAlgorithm

from ._keyset import JWK, JWKS, KeySet, VerificationKey, jwk_thumbprint, kube_key_id
from ._remote import KeySourceStatus, RemoteKeySource
from .errors import ConfigurationError, InvalidToken

if TYPE_CHECKING:
    from ._shared import SharedStore
    from .config import VerifierConfig

__all__ = [
    "JWK",
    "JWKS",
    "KeySet",
    "KeySource",
    "KeySourceStatus",
    "RemoteKeySource",
    "StaticKeySource",
    "VerificationKey",
    "jwk_thumbprint",
    "key_source_from_config",
    "kube_key_id",
]


class KeySource(Protocol):
    """Where a `TokenVerifier` gets verification keys from.

    Both methods return the key for `kid` (see `KeySet.find`) and raise:
        InvalidToken: `unknown_key` when no key has that `kid`.
        KeySetUnavailable: when no usable key set can be obtained at all.

    `get` must never need an event loop; `get_async` must never block the loop.
    """

    def get(self, kid: str | None, alg: str) -> VerificationKey: ...

    async def get_async(self, kid: str | None, alg: str) -> VerificationKey: ...


class StaticKeySource:
    """A fixed `KeySet`: a JWKS document or PEM keys given in configuration. No I/O."""

    def __init__(self, keys: KeySet) -> None:
        if not len(keys):
            raise ConfigurationError("the key set has no usable keys (RSA >= 2048 bits or EC P-256/384/521)")
        self.keys = keys

    def get(self, kid: str | None, alg: str) -> VerificationKey:
        key = self.keys.find(kid, alg)
        if key is None:
            raise InvalidToken(f"no key with kid {kid[:64] if kid else kid!r} in the key set", reason="unknown_key",
                               claim="kid")
        return key

    async def get_async(self, kid: str | None, alg: str) -> VerificationKey:
        return self.get(kid, alg)


def key_source_from_config(config: VerifierConfig, *, shared: SharedStore | None = None) -> KeySource:
    """The key source a config describes: static for `jwks`/`jwks_file`/`public_keys`, else remote.

    `shared` (e.g. Redis) lets replicas share the remote key set (one fetch per refresh for the fleet).

    Raises:
        ConfigurationError: when a static key set cannot be read or has no usable key.
    """
    try:
        if config.jwks is not None:
            return StaticKeySource(KeySet.from_jwks(config.jwks, max_keys=config.max_keys))
        if config.jwks_file is not None:
            with open(config.jwks_file, "rb") as fh:
                return StaticKeySource(KeySet.from_jwks(fh.read(), max_keys=config.max_keys))
        if config.public_keys:
            return StaticKeySource(KeySet.from_pem(config.public_keys))
    except (OSError, ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError(f"cannot load the configured keys: {exc}") from exc
    return RemoteKeySource.from_config(config, shared=shared)
