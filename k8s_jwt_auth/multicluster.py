"""`MultiClusterVerifier`: one verifier that trusts several clusters (issuers), each on its own terms.

```python
verifier = MultiClusterVerifier({
    "prod-eu": VerifierConfig(issuer="https://oidc.eu.example", audiences="payments-api", allow="shop/*"),
    "prod-us": VerifierConfig(issuer="https://oidc.us.example", audiences="payments-api", allow="shop/checkout"),
})
workload = verifier.verify(token)      # workload.cluster == "prod-eu" or "prod-us"
verifier.policy.enforce(workload)      # the policy of the cluster the token came from
```

The token's `iss` is read *before* anything is verified, only to choose the cluster; that cluster's
`TokenVerifier` then verifies everything (signature with *its* key source, exact `iss`, audiences,
lifetime) exactly as a single-cluster verifier would. Each cluster has its own key source, so one
issuer's keys can never verify another issuer's tokens: a token naming issuer A and signed by B's key
fails with `unknown_key` or `bad_signature` in A's verifier. A token naming an issuer no cluster trusts
fails with `bad_issuer` without any key lookup or network call.

`MultiClusterVerifier` is a `TokenVerifier`, so every adapter accepts it. Its `policy` applies the
policy of the identity's cluster; its `config` and `keys` are those of the first cluster (what adapters
read for defaults such as the test-mint audiences).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from ._cache import CacheInfo
from ._jws import decode_payload, parse
from ._observer import Observer
from .config import ENV_PREFIX, VerifierConfig, parse_list
from .errors import ConfigurationError, InvalidToken
from .identity import WorkloadIdentity
from .policy import Decision, Policy
from .verifier import Clock, TokenVerifier, _digest

__all__ = ["ClusterPolicy", "MultiClusterVerifier"]


class ClusterPolicy(Policy):
    """The policy of a `MultiClusterVerifier`: each identity is judged by its own cluster's policy.

    An identity that names no known cluster is denied (no rule matched), whatever the policies say.

    Args:
        policies: cluster name -> that cluster's policy.
    """

    __slots__ = ("policies",)

    def __init__(self, policies: Mapping[str, Policy]) -> None:
        super().__init__(())
        self.policies: Mapping[str, Policy] = MappingProxyType(dict(policies))

    def __repr__(self) -> str:
        return f"ClusterPolicy({dict(self.policies)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClusterPolicy) and dict(self.policies) == dict(other.policies)

    __hash__ = None

    @property
    def is_open(self) -> bool:
        """Whether no cluster's policy has any rule (every verified workload is allowed)."""
        return all(p.is_open for p in self.policies.values())

    def evaluate(self, identity: WorkloadIdentity) -> Decision:
        """Decide for `identity` with the policy of `identity.cluster`, without raising."""
        policy = self.policies.get(identity.cluster) if identity.cluster is not None else None
        if policy is None:
            return Decision(False, None)
        return policy.evaluate(identity)


class MultiClusterVerifier(TokenVerifier):
    """Verifies tokens from several clusters, choosing the cluster by the token's `iss`. Thread-safe.

    Args:
        clusters: cluster name -> a `VerifierConfig` or a ready `TokenVerifier` (its own issuer,
            audiences, key source, policy, cache; TokenReview and shared-cache settings apply per cluster).
            A config's `cluster` field must be unset or equal the name; the name is recorded on every
            identity as `cluster`.
        clock: the clock of the verifiers built from configs (Unix seconds).
        observer: the observer of the verifiers built from configs.

    Attributes:
        clusters: cluster name -> its `TokenVerifier`, in the order given.
        policy: a `ClusterPolicy` applying each cluster's policy to its own identities.

    Raises:
        ConfigurationError: no cluster, two clusters accepting the same issuer, or a config or verifier
            whose `cluster` name disagrees with its key.
    """

    def __init__(
        self,
        clusters: Mapping[str, TokenVerifier | VerifierConfig],
        *,
        clock: Clock | None = None,
        observer: Observer | None = None,
    ) -> None:
        if not clusters:
            raise ConfigurationError("MultiClusterVerifier needs at least one cluster")
        built = {name: _cluster_verifier(name, given, clock, observer) for name, given in clusters.items()}
        self.clusters: Mapping[str, TokenVerifier] = MappingProxyType(built)
        self._by_issuer: dict[str, TokenVerifier] = {}
        for name, verifier in built.items():
            for issuer in verifier.config.accepted_issuers:
                other = self._by_issuer.setdefault(issuer, verifier)
                if other is not verifier:
                    raise ConfigurationError(f"clusters {other.config.cluster!r} and {name!r} both accept issuer "
                                             f"{issuer!r}: each issuer must belong to one cluster (legacy tokens "
                                             "can be allowed for one cluster only)")
        first = next(iter(built.values()))
        self.config, self.keys, self.observer = first.config, first.keys, observer
        self.shared, self.reviewer = None, None
        self.policy = ClusterPolicy({name: v.policy for name, v in built.items()})
        self._max_size = max(v.config.max_token_size for v in built.values())
        # token digest -> its cluster's verifier, for tokens that verified: skips reading iss again
        self._routes: dict[bytes, TokenVerifier] = {}
        self._max_routes = max(1024, sum(v.config.token_cache_size for v in built.values()))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, clock: Clock | None = None,
                 observer: Observer | None = None) -> MultiClusterVerifier:
        """Clusters from the environment: `K8S_JWT_AUTH_CLUSTERS=prod-eu,prod-us`, then each cluster's
        settings under its own prefix, `K8S_JWT_AUTH_PROD_EU_ISSUER`, `K8S_JWT_AUTH_PROD_EU_AUDIENCES`, ...
        (the name upper-cased, `-` and `.` as `_`; every suffix of `VerifierConfig.from_env`).

        Raises:
            ConfigurationError: `K8S_JWT_AUTH_CLUSTERS` is missing, or a cluster's settings are invalid.
        """
        env = os.environ if environ is None else environ
        names = parse_list(env.get(f"{ENV_PREFIX}CLUSTERS", ""), "CLUSTERS")
        if not names:
            raise ConfigurationError(f"set {ENV_PREFIX}CLUSTERS to the names of the trusted clusters "
                                     "(e.g. prod-eu,prod-us)", setting="CLUSTERS")
        configs: dict[str, TokenVerifier | VerifierConfig] = {}
        for name in names:
            prefix = f"{ENV_PREFIX}{re.sub(r'[^A-Za-z0-9]', '_', name).upper()}_"
            configs[name] = VerifierConfig.from_mapping(env, prefix=prefix, cluster=name)
        return cls(configs, clock=clock, observer=observer)

    def __repr__(self) -> str:
        return f"MultiClusterVerifier({{{', '.join(f'{n!r}: {v!r}' for n, v in self.clusters.items())}}})"

    def verify(self, token: str | bytes) -> WorkloadIdentity:
        """Verify a token with the verifier of the cluster its `iss` names.

        Raises:
            InvalidToken: `bad_issuer` when no cluster trusts the token's issuer; otherwise as
                `TokenVerifier.verify` of that cluster.
            KeySetUnavailable: that cluster's keys (or TokenReview) are unavailable.
        """
        verifier, unrouted = self._choose(token)
        identity = verifier.verify(token)
        self._remember(unrouted, verifier)
        return identity

    async def verify_async(self, token: str | bytes) -> WorkloadIdentity:
        """Like `verify`, for event loops.

        Raises:
            InvalidToken: `bad_issuer`, or as `TokenVerifier.verify_async` of the chosen cluster.
            KeySetUnavailable: that cluster's keys (or TokenReview) are unavailable.
        """
        verifier, unrouted = self._choose(token)
        identity = await verifier.verify_async(token)
        self._remember(unrouted, verifier)
        return identity

    def route(self, token: str | bytes) -> TokenVerifier:
        """The verifier of the cluster the token's (unverified) `iss` names; verifies nothing.

        Raises:
            InvalidToken: `malformed`/`too_large` for a token that cannot be read, `bad_issuer` when no
                cluster accepts its issuer.
        """
        claims = decode_payload(parse(token, self._max_size))  # the same guarded parser as every verifier
        issuer = claims.get("iss")
        verifier = self._by_issuer.get(issuer) if isinstance(issuer, str) else None
        if verifier is None:
            shown = issuer if isinstance(issuer, str) and len(issuer) <= 128 else "?"
            raise InvalidToken(f"no trusted cluster has the issuer {shown!r}", reason="bad_issuer", claim="iss")
        return verifier

    def _choose(self, token: str | bytes) -> tuple[TokenVerifier, bytes | None]:
        """The token's verifier, and its digest when it is not routed yet (to remember once it verified)."""
        digest = _digest(token)
        verifier = self._routes.get(digest) if digest is not None else None
        if verifier is not None:
            return verifier, None
        return self.route(token), digest

    def _remember(self, digest: bytes | None, verifier: TokenVerifier) -> None:
        """Route this token straight to its verifier next time (only tokens that verified; bounded)."""
        if digest is None:
            return
        if len(self._routes) >= self._max_routes:
            self._routes.clear()  # rare and harmless: the next calls route by iss again
        self._routes[digest] = verifier

    def cache_info(self) -> CacheInfo | None:
        """The verified-token cache counters summed over the clusters (`None` if no cluster caches)."""
        infos = [i for i in (v.cache_info() for v in self) if i is not None]
        if not infos:
            return None
        return CacheInfo(*(sum(getattr(i, f.name) for i in infos) for f in dataclasses.fields(CacheInfo)))

    def clear_cache(self) -> None:
        """Forget every verified token of every cluster."""
        self._routes.clear()
        for verifier in self:
            verifier.clear_cache()

    def __iter__(self) -> Iterator[TokenVerifier]:
        return iter(self.clusters.values())


def _cluster_verifier(name: str, given: TokenVerifier | VerifierConfig, clock: Clock | None,
                      observer: Observer | None) -> TokenVerifier:
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"cluster names must be non-empty strings, not {name!r}")
    if isinstance(given, VerifierConfig):
        if given.cluster not in (None, name):
            raise ConfigurationError(f"cluster {name!r}: its config names cluster {given.cluster!r}")
        return TokenVerifier(dataclasses.replace(given, cluster=name), clock=clock, observer=observer)
    if isinstance(given, MultiClusterVerifier) or not isinstance(given, TokenVerifier):
        raise ConfigurationError(f"cluster {name!r}: expected a VerifierConfig or a TokenVerifier, "
                                 f"not {type(given).__name__}")
    if given.config.cluster != name:
        raise ConfigurationError(f"cluster {name!r}: its verifier's config has cluster={given.config.cluster!r}; "
                                 f"build it with VerifierConfig(..., cluster={name!r}) so identities name it")
    return given
