"""`TokenVerifier`: one object that turns a token into a `WorkloadIdentity`, for threads and event loops.

`verify(token)` and `await verify_async(token)` run the same pure steps:

1. shape and size (before any parsing) — `too_large`, `malformed`;
2. header — `disallowed_algorithm`, `unsupported_critical_header`, `malformed`;
3. key lookup by `kid` — `unknown_key` (or `KeySetUnavailable`); the only I/O, and the only difference;
4. signature — `bad_signature`, `disallowed_algorithm` (alg does not fit the key type);
5. claims — `legacy_token`, `bad_issuer`, `bad_audience`, `missing_claim`, `expired`, `not_yet_valid`,
   `issued_in_future`, `too_old`, `claim_mismatch`, `not_pod_bound`;
6. identity;
7. optionally, TokenReview: the API server confirms the token (`token_revoked`, or `TokenReviewUnavailable`).

Both methods share every step. A cached token is answered by `_hot` — one dict lookup, no lock, no I/O (≈1 µs;
see `k8s_jwt_auth._cache`) — while its key's check (at most `KEY_RECHECK` seconds old) stands; when the check is
due, the key lookup is the only difference. Steps 1-6 for any other token are one generator flow
(`_verification`) that yields its I/O (the key, the shared cache), run by `k8s_jwt_auth._flow.run` or `arun`.

With a shared store (`shared=`, e.g. Redis) and `redis_share_tokens` on (off by default: a Redis round trip costs
more than an RS256 or ES256 check), a token another replica verified skips step 4 only if the key
this verifier's key source hands out for it now is the very key material that verified it: the entry names
the key's RFC 7638 thumbprint, not just its `kid` (an issuer may reuse a `kid` for new key material). The
entry is authenticated, keyed by the token's digest and expires with the token; the claims are checked again
here against this verifier's own settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from . import _claims
from ._cache import CachedToken, CacheInfo, TokenCache
from ._flow import Flow, arun, run
from ._jws import ParsedToken, decode_payload, parse
from ._lazy_claims import LazyClaims
from ._observer import UNOBSERVED, Hooks, Observation, Observer, Unobserved
from .config import VerifierConfig
from .errors import ConfigurationError, InvalidToken
from .identity import WorkloadIdentity
from .keys import KeySource, VerificationKey, key_source_from_config
from .policy import Policy

if TYPE_CHECKING:
    from ._shared import SharedStore
    from .tokenreview import TokenReviewer

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
        observer: told about every verification, key fetch and TokenReview call, e.g.
            `k8s_jwt_auth.metrics.Metrics(registry)`, `k8s_jwt_auth.otel.Tracing()`, or several in
            `k8s_jwt_auth.otel.Observers`; also attached to a `RemoteKeySource` or `TokenReviewer` that has no
            observer yet.
        shared: a cache shared by replicas (`k8s_jwt_auth.redis_cache.RedisCache`) for key sets, TokenReview
            answers and, only with `config.redis_share_tokens` (off by default), verified tokens; by default one
            is built when `config.redis_url` is set.
        reviewer: confirms tokens with the API server after local verification; by default a
            `TokenReviewer` when `config.tokenreview` is set.

    Attributes:
        config: the settings.
        keys: the key source.
        policy: the policy integrations apply.
        observer: the observer, or `None`.
        shared: the shared cache, or `None`.
        reviewer: the TokenReview client, or `None`.
    """

    def __init__(
        self,
        config: VerifierConfig,
        *,
        keys: KeySource | None = None,
        clock: Clock | None = None,
        policy: Policy | None = None,
        observer: Observer | None = None,
        shared: SharedStore | None = None,
        reviewer: TokenReviewer | None = None,
    ) -> None:
        self.config = config
        self._clock: Clock = clock if clock is not None else time.time
        self.shared = shared if shared is not None else _shared_from_config(config)
        self.keys: KeySource = keys if keys is not None else key_source_from_config(config, shared=self.shared)
        self.reviewer = reviewer if reviewer is not None else _reviewer_from_config(config, self._clock, self.shared)
        self.policy = policy if policy is not None else Policy.parse(config.allow, dry_run=config.dry_run)
        self._algorithms = frozenset(config.algorithms)
        self._audiences = frozenset(config.audiences)
        self._issuers = config.accepted_issuers
        self._leeway = config.leeway
        self._max_size = config.max_token_size
        self._cache = (TokenCache(config.token_cache_size, config.token_cache_ttl, self._clock)
                       if config.token_cache_size > 0 else None)
        self._token_store = self.shared if config.redis_share_tokens else None  # verified tokens, namespace "v"
        self._shared_hits = self._shared_misses = 0
        self._strings: dict[str, str] = {}  # see _one
        self._audience_tuples: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.observer = observer
        self._hooks: Hooks | None = None  # the observer's optional event methods, looked up on first use
        if observer is not None and getattr(self.keys, "observer", False) is None:  # a RemoteKeySource's hook
            self.keys.observer = observer  # type: ignore[attr-defined]
        if observer is not None and getattr(self.reviewer, "observer", False) is None:
            self.reviewer.observer = observer  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"TokenVerifier(issuer={self.config.issuer!r}, audiences={self.config.audiences!r})"

    def verify(self, token: str | bytes) -> WorkloadIdentity:
        """Verify a token and return the workload it proves. Never needs an event loop.

        A token verified before is answered from the cache while it is valid and its key is unchanged.

        Raises:
            InvalidToken: see the module docstring for the reasons.
            KeySetUnavailable: no usable key set could be obtained.
        """
        answer = self._hot(token)
        if answer is not None:
            return answer
        with self._observe() as seen:
            hit = self._lookup(token)
            if hit is not None and self._reusable(token, hit, self.keys.get(hit.check.kid, hit.check.alg)):
                seen.cached = True
                identity = hit.identity
            else:
                identity = run(self._verification(token), self._do)
            if self.reviewer is not None:
                identity = self.reviewer.review(token, identity)
            seen.identity = identity
            return identity

    async def verify_async(self, token: str | bytes) -> WorkloadIdentity:
        """Like `verify`, for event loops: fetching keys never blocks the loop.

        Raises:
            InvalidToken: see the module docstring for the reasons.
            KeySetUnavailable: no usable key set could be obtained.
        """
        answer = self._hot(token)
        if answer is not None:
            return answer
        with self._observe() as seen:
            hit = self._lookup(token)
            if hit is not None and self._reusable(token, hit, await self.keys.get_async(hit.check.kid,
                                                                                        hit.check.alg)):
                seen.cached = True
                identity = hit.identity
            else:
                identity = await arun(self._verification(token), self._do_async)
            if self.reviewer is not None:
                identity = await self.reviewer.review_async(token, identity)
            seen.identity = identity
            return identity

    def cache_info(self) -> CacheInfo | None:
        """Hits, misses and size of the verified-token cache (`None` when it is disabled).

        `shared_hits`/`shared_misses` count lookups in the shared cache (tokens another replica verified).
        """
        if self._cache is None:
            return None
        return dataclasses.replace(self._cache.info(), shared_hits=self._shared_hits,
                                   shared_misses=self._shared_misses)

    def clear_cache(self) -> None:
        """Forget every verified token (the next call of each token is verified in full)."""
        if self._cache is not None:
            self._cache.clear()

    def close(self) -> None:
        """Close the connections the verifier keeps alive (the TokenReview client's; key fetches keep none).

        The verifier stays usable; the next review opens a new connection. The shared store (`shared=`) is the
        caller's to close when it was given.
        """
        if self.reviewer is not None:
            self.reviewer.close()

    async def aclose(self) -> None:
        """Like `close()`, and the running event loop's connections are closed before this returns (e.g. in an
        ASGI lifespan shutdown)."""
        if self.reviewer is not None:
            await self.reviewer.aclose()

    # -- the full verification, written once ------------------------------------------------------

    def _verification(self, token: str | bytes) -> Flow[_Io, WorkloadIdentity]:
        """Steps 1-6 for a token not answered from the cache; yields its I/O (the key, the shared cache)."""
        parsed, alg, kid = self._parse(token)
        digest = _digest(token)
        key: VerificationKey = yield _Io("key", kid=kid, alg=alg)
        if self._token_store is None or digest is None:
            return self._finish(token, digest, parsed, alg, key)
        seen_before = self._shared_entry((yield _Io("get", digest=digest)), alg, kid, key)
        identity = self._finish(token, digest, parsed, alg, key, signature_checked=seen_before)
        if not seen_before:
            value, ttl = self._shared_record(identity, alg, kid, key)
            yield _Io("set", digest=digest, value=value, ttl=ttl)
        return identity

    def _do(self, io: _Io) -> object:
        if io.kind == "key":
            return self.keys.get(io.kid, io.alg)
        store = self._token_store
        assert store is not None  # the flow asks for the shared cache only when there is one
        if io.kind == "get":
            return store.get("v", io.digest)
        store.set("v", io.digest, io.value, io.ttl)
        return None

    async def _do_async(self, io: _Io) -> object:
        if io.kind == "key":
            return await self.keys.get_async(io.kid, io.alg)
        store = self._token_store
        assert store is not None
        if io.kind == "get":
            return await store.aget("v", io.digest)
        await store.aset("v", io.digest, io.value, io.ttl)
        return None

    # -- steps ------------------------------------------------------------------------------------

    def _hot(self, token: str | bytes) -> WorkloadIdentity | None:
        """The hot path: a cached token whose key was checked less than `KEY_RECHECK` seconds ago, answered with
        one dict lookup and no lock (≈1 µs). Everything else — observers, TokenReview, a key check that is due —
        goes the full way."""
        cache = self._cache
        if cache is None or self.observer is not None or self.reviewer is not None:
            return None
        return cache.hit(token) if type(token) is str or type(token) is bytes else None

    def _observe(self) -> Observation | Unobserved:
        """Times the call for the observer (outcome, reason, seconds, cache hit, identity); a shared no-op
        without one."""
        observer = self.observer
        if observer is None:
            return UNOBSERVED
        self._hooks = hooks = Hooks.of(observer, self._hooks)
        return Observation(hooks, self._cache is not None)

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

    def _check_key_fits(self, alg: str, key: VerificationKey) -> None:
        if alg not in key.algorithms:
            raise InvalidToken(f"algorithm {alg} does not fit the key {key.kid!r}",
                               reason="disallowed_algorithm", claim="alg")

    def _check_signature(self, parsed: ParsedToken, alg: str, key: VerificationKey) -> None:
        self._check_key_fits(alg, key)
        if not key.verify(alg, parsed.signing_input, parsed.signature):
            raise InvalidToken("the token signature is not valid", reason="bad_signature")

    def _lookup(self, token: object) -> CachedToken | None:
        """The token's entry in the verified-token cache, while usable (its key is not checked yet)."""
        if self._cache is None or not isinstance(token, (str, bytes)):
            return None
        return self._cache.find(token, self._clock())

    def _reusable(self, token: str | bytes, hit: CachedToken, key: VerificationKey) -> bool:
        """Whether the key source still hands out the key material that verified the cached token."""
        assert self._cache is not None  # there is a hit
        if self._cache.reuse(hit, key, self._clock()):
            return True
        self._cache.discard(token)
        return False

    def _shared_entry(self, value: bytes | None, alg: str, kid: str | None, key: VerificationKey) -> bool:
        """Whether the shared cache says this very token was verified with `key`, the key material (RFC 7638
        thumbprint) the key source hands out for its kid now; any difference means a full verification.

        The store has already checked the entry's authenticator and expiry; the entry is keyed by the
        digest of the whole token, so it cannot be moved to another token.
        """
        expected = _shared_value(alg, kid, key)
        if value is not None and len(value) > len(expected) and value.startswith(expected):
            try:
                until = float(value[len(expected):])
            except ValueError:
                until = 0.0
            if self._clock() < until:
                self._shared_hits += 1
                return True
        self._shared_misses += 1
        return False

    def _shared_record(self, identity: WorkloadIdentity, alg: str, kid: str | None,
                       key: VerificationKey) -> tuple[bytes, float]:
        """The shared-cache value for a token verified here with `key` and its time to live (never beyond exp)."""
        now = self._clock()
        until = min(self._reusable_until(identity), now + self.config.token_cache_ttl)
        return _shared_value(alg, kid, key) + repr(until).encode(), until - now

    def _finish(self, token: str | bytes, digest: bytes | None, parsed: ParsedToken, alg: str, key: VerificationKey,
                *, signature_checked: bool = False) -> WorkloadIdentity:
        if signature_checked:  # by a replica, with this very key material: its thumbprint is in the entry
            self._check_key_fits(alg, key)
        else:
            self._check_signature(parsed, alg, key)
        identity = self._identity(decode_payload(parsed), digest.hex()[:16] if digest is not None else "",
                                  raw=parsed.payload)
        if self._cache is not None and digest is not None:
            self._cache.put(token, identity, parsed.header.get("kid"), alg, key, self._reusable_until(identity))
        return identity

    def _reusable_until(self, identity: WorkloadIdentity) -> float:
        """When a cached verification stops standing: exp, warnafter (to flag staleness), max token age."""
        limits = [identity.expires_at.timestamp() if identity.expires_at is not None else math.inf]
        if identity.warn_after is not None and not identity.stale:
            limits.append(identity.warn_after.timestamp())
        if self.config.max_token_age is not None and identity.issued_at is not None:
            limits.append(identity.issued_at.timestamp() + self.config.max_token_age)
        return min(limits)

    def _identity(self, payload: dict[str, Any], token_fingerprint: str, *,
                  raw: bytes | None = None) -> WorkloadIdentity:
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
        for name in _REPEATED_FIELDS:  # values that repeat across tokens: one object each, so that a cached
            value = fields.get(name)   # identity holds only what is its own (pod, jti, times)
            if type(value) is str:
                fields[name] = _one(self._strings, value)
        return WorkloadIdentity(
            issuer=_one(self._strings, issuer),
            audiences=_one(self._audience_tuples, audiences),
            token_id=jti if isinstance(jti, str) else None,
            stale=warn_after is not None and now > warn_after,
            trust_domain=config.trust_domain,
            cluster=config.cluster,
            token_fingerprint=token_fingerprint,
            # the payload's JSON bytes, decoded again on first use: a quarter of the dict's memory, and a cached
            # identity lives as long as its token
            claims=LazyClaims(raw) if raw is not None else MappingProxyType(payload),
            **_times(iat, nbf, exp, warn_after),
            **fields,
        )


_MAX_SHARED_STRINGS = 10_000
_Shared = TypeVar("_Shared", str, tuple[str, ...])


def _one(table: dict[_Shared, _Shared], value: _Shared) -> _Shared:
    """The one object for this value in a bounded table of values that repeat (issuer, namespace, audiences...)."""
    return table.setdefault(value, value) if len(table) < _MAX_SHARED_STRINGS else table.get(value, value)


def _times(iat: float | None, nbf: float | None, exp: float | None, warn_after: float | None) -> dict[str, Any]:
    """The identity's times, as aware UTC datetimes."""
    return {"issued_at": _claims.to_datetime(iat, "iat"), "not_before": _claims.to_datetime(nbf, "nbf"),
            "expires_at": _claims.to_datetime(exp, "exp"),
            "warn_after": _claims.to_datetime(warn_after, "kubernetes.io.warnafter")}


_REPEATED_FIELDS = ("subject", "namespace", "service_account", "service_account_uid", "node_name", "node_uid")


@dataclass(frozen=True, slots=True)
class _Io:
    """One I/O step of a full verification: the key for `kid`/`alg`, or a read or write of the shared cache."""

    kind: Literal["key", "get", "set"]
    kid: str | None = None
    alg: str = ""
    digest: bytes = b""
    value: bytes = b""
    ttl: float = 0.0


def _shared_value(alg: str, kid: str | None, key: VerificationKey) -> bytes:
    """The fixed part of a shared-cache entry: version, algorithm, key id and the RFC 7638 thumbprint of the
    key that verified the token (the expiry follows). Entries of the kid-only format `v1` never match."""
    return f"v2\n{alg}\n{kid or ''}\n{key.thumbprint}\n".encode()


def _shared_from_config(config: VerifierConfig) -> SharedStore | None:
    if config.redis_url is None:
        return None
    try:
        from .redis_cache import RedisCache
    except ImportError as exc:
        raise ConfigurationError(f"redis_url is set but {exc}", setting="REDIS_URL") from exc
    return RedisCache.from_config(config)


def _reviewer_from_config(config: VerifierConfig, clock: Clock, shared: SharedStore | None) -> TokenReviewer | None:
    if not config.tokenreview:
        return None
    from .tokenreview import TokenReviewer

    return TokenReviewer.from_config(config, clock=clock, shared=shared)


def _digest(token: object) -> bytes | None:
    """SHA-256 of the token: the cache key and (first 16 hex digits) the fingerprint for logs."""
    if isinstance(token, str):
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
    if isinstance(token, bytes):
        return hashlib.sha256(token).digest()
    return None
