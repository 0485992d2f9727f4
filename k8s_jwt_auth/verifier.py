"""`TokenVerifier`: one object that turns a token into a `WorkloadIdentity`, for threads and event loops.

`verify(token)` and `await verify_async(token)` run the same pure steps:

1. shape and size (before any parsing) — `too_large`, `malformed`;
2. header — `disallowed_algorithm`, `unsupported_critical_header`, `malformed`;
3. key lookup by `kid` — `unknown_key` (or `KeySetUnavailable`); the only I/O, and the only difference;
4. signature — `bad_signature`, `disallowed_algorithm` (alg does not fit the key type);
5. claims — `legacy_token`, `bad_issuer`, `bad_audience`, `missing_claim`, `expired`, `not_yet_valid`,
   `issued_in_future`, `too_old`, `claim_mismatch`, `not_pod_bound`;
6. identity.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from . import _claims
from ._jws import ParsedToken, decode_payload, fingerprint, parse
from .config import VerifierConfig
from .errors import InvalidToken
from .identity import WorkloadIdentity
from .keys import KeySource, VerificationKey, key_source_from_config
from .policy import Policy

__all__ = ["Clock", "TokenVerifier"]


class Clock(Protocol):
    """A source of the current time in Unix seconds (`time.time` by default)."""

    def __call__(self) -> float: ...


class TokenVerifier:
    """Verifies Kubernetes service-account tokens. Thread-safe; shared by sync and async callers.

    Args:
        config: the validated settings.
        keys: where keys come from; by default the source the config describes (static or remote).
        clock: the current time in Unix seconds; inject a fixed one in tests.
        policy: the policy integrations apply; by default built from `config.allow` and `config.dry_run`
            (pass a `Policy` for rules with audience or claim conditions).

    Attributes:
        config: the settings.
        keys: the key source.
        policy: the policy integrations apply.
    """

    def __init__(
        self,
        config: VerifierConfig,
        *,
        keys: KeySource | None = None,
        clock: Clock | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.config = config
        self.keys: KeySource = keys if keys is not None else key_source_from_config(config)
        self.policy = policy if policy is not None else Policy.parse(config.allow, dry_run=config.dry_run)
        self._clock: Clock = clock if clock is not None else time.time
        self._algorithms = frozenset(config.algorithms)
        self._audiences = frozenset(config.audiences)
        self._issuers = config.accepted_issuers
        self._leeway = config.leeway
        self._max_size = config.max_token_size

    def __repr__(self) -> str:
        return f"TokenVerifier(issuer={self.config.issuer!r}, audiences={self.config.audiences!r})"

    def verify(self, token: str | bytes) -> WorkloadIdentity:
        """Verify a token and return the workload it proves. Never needs an event loop.

        Raises:
            InvalidToken: see the module docstring for the reasons.
            KeySetUnavailable: no usable key set could be obtained.
        """
        parsed, alg, kid = self._parse(token)
        return self._finish(token, parsed, alg, self.keys.get(kid, alg))

    async def verify_async(self, token: str | bytes) -> WorkloadIdentity:
        """Like `verify`, for event loops: fetching keys never blocks the loop.

        Raises:
            InvalidToken: see the module docstring for the reasons.
            KeySetUnavailable: no usable key set could be obtained.
        """
        parsed, alg, kid = self._parse(token)
        return self._finish(token, parsed, alg, await self.keys.get_async(kid, alg))

    # -- steps ------------------------------------------------------------------------------------

    def _parse(self, token: object) -> tuple[ParsedToken, str, str | None]:
        parsed = parse(token, self._max_size)
        return parsed, self._check_alg(parsed.header), self._check_header(parsed.header)

    def _check_alg(self, header: dict[str, Any]) -> str:
        alg = header.get("alg")
        if alg is None:
            raise InvalidToken("the token header has no alg", reason="malformed", claim="alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            shown = alg if isinstance(alg, str) and len(alg) <= 16 else "?"
            raise InvalidToken(f"algorithm {shown!r} is not allowed", reason="disallowed_algorithm", claim="alg")
        return alg

    def _check_header(self, header: dict[str, Any]) -> str | None:
        if "crit" in header:
            raise InvalidToken("the token marks header parameters as critical (crit); none are supported",
                               reason="unsupported_critical_header", claim="crit")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() not in ("JWT", "APPLICATION/JWT")):
            raise InvalidToken("the token type (typ) is not JWT", reason="malformed", claim="typ")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("the key id (kid) is not a string", reason="malformed", claim="kid")
        return kid

    def _check_signature(self, parsed: ParsedToken, alg: str, key: VerificationKey) -> None:
        if alg not in key.algorithms:
            raise InvalidToken(f"algorithm {alg} does not fit the key {key.kid!r}",
                               reason="disallowed_algorithm", claim="alg")
        if not key.verify(alg, parsed.signing_input, parsed.signature):
            raise InvalidToken("the token signature is not valid", reason="bad_signature")

    def _finish(self, token: object, parsed: ParsedToken, alg: str, key: VerificationKey) -> WorkloadIdentity:
        self._check_signature(parsed, alg, key)
        payload = decode_payload(parsed)
        return self._identity(payload, fingerprint(token) if isinstance(token, (str, bytes)) else "")

    def _identity(self, payload: dict[str, Any], token_fingerprint: str) -> WorkloadIdentity:
        now, leeway, config = self._clock(), self._leeway, self.config
        legacy = _claims.is_legacy(payload)
        if legacy and not config.allow_legacy_tokens:
            raise InvalidToken("legacy secret-based service-account tokens are not accepted; use a projected "
                               "token (TokenRequest)", reason="legacy_token", claim="iss")
        issuer = _claims.check_issuer(payload, self._issuers)
        audiences = () if legacy and "aud" not in payload else _claims.check_audience(payload, self._audiences)
        exp = _claims.check_expiry(payload, now, leeway, required=not legacy)
        nbf = _claims.check_not_before(payload, now, leeway)
        iat = _claims.check_issued_at(payload, now, leeway, config.max_token_age)
        fields = _claims.service_account_claims(payload, legacy)
        if config.require_pod_binding and fields.get("pod_name") is None:
            raise InvalidToken("the token is not bound to a pod", reason="not_pod_bound", claim="kubernetes.io")
        warn_after = fields.pop("warn_after", None)
        jti = payload.get("jti")
        return WorkloadIdentity(
            issuer=issuer,
            audiences=audiences,
            issued_at=_claims.to_datetime(iat, "iat"),
            not_before=_claims.to_datetime(nbf, "nbf"),
            expires_at=_claims.to_datetime(exp, "exp"),
            token_id=jti if isinstance(jti, str) else None,
            warn_after=_claims.to_datetime(warn_after, "kubernetes.io.warnafter"),
            stale=warn_after is not None and now > warn_after,
            trust_domain=config.trust_domain,
            token_fingerprint=token_fingerprint,
            claims=payload,
            **fields,
        )
