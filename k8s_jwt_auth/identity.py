"""`WorkloadIdentity`: who called, as proven by a verified service-account token."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from ._lazy_claims import LazyClaims

__all__ = ["DEFAULT_TRUST_DOMAIN", "WorkloadIdentity"]

DEFAULT_TRUST_DOMAIN = "cluster.local"

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadIdentity:
    """The verified identity of a calling workload. Immutable and hashable.

    Pod and node fields are `None` when the token is not bound to a pod. Times are timezone-aware UTC
    `datetime`s. `claims` is the read-only raw payload (not part of equality or the hash).

    Attributes:
        issuer: the token's `iss`.
        subject: the token's `sub`, `system:serviceaccount:<namespace>:<name>`.
        namespace: the service account's namespace.
        service_account: the service account's name.
        service_account_uid: the service account's UID (`None` for legacy tokens without it).
        pod_name: name of the pod the token is bound to.
        pod_uid: UID of that pod.
        node_name: name of the node the pod runs on (Kubernetes >= 1.30 with node info in tokens).
        node_uid: UID of that node.
        audiences: every audience in the token, in token order.
        issued_at: `iat`.
        not_before: `nbf`.
        expires_at: `exp` (`None` only for legacy tokens, when those are allowed).
        token_id: `jti`, the credential id.
        warn_after: `kubernetes.io.warnafter`: past this time the token is only valid because the API
            server extended its lifetime for an old client.
        stale: `True` when the token was used after `warn_after` (accepted, but the client should
            re-read its token file; kube-apiserver logs and counts these).
        trust_domain: the trust domain for `istio_principal()` / `spiffe_id()` (config `trust_domain`).
        cluster: the name of the cluster the token came from (config `cluster`; set by a
            `MultiClusterVerifier`), `None` when not named.
        reviewed: `True` when the API server confirmed the token with a TokenReview just now (TokenReview
            mode); `False` after local verification only.
        groups: the user groups the TokenReview returned (empty without TokenReview).
        token_fingerprint: first 16 hex digits of the token's SHA-256, safe to log.
        claims: the raw, read-only payload.
    """

    issuer: str
    subject: str
    namespace: str
    service_account: str
    service_account_uid: str | None = None
    pod_name: str | None = None
    pod_uid: str | None = None
    node_name: str | None = None
    node_uid: str | None = None
    audiences: tuple[str, ...] = ()
    issued_at: datetime | None = None
    not_before: datetime | None = None
    expires_at: datetime | None = None
    token_id: str | None = None
    warn_after: datetime | None = None
    stale: bool = False
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    cluster: str | None = None
    reviewed: bool = field(default=False, compare=False, hash=False)
    groups: tuple[str, ...] = field(default=(), compare=False, hash=False)
    token_fingerprint: str = field(default="", compare=False, hash=False)
    claims: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if type(self.audiences) is not tuple:
            object.__setattr__(self, "audiences", tuple(self.audiences))
        if type(self.groups) is not tuple:
            object.__setattr__(self, "groups", tuple(self.groups))
        if type(self.claims) is not LazyClaims and type(self.claims) is not MappingProxyType:  # read-only already
            object.__setattr__(self, "claims", MappingProxyType(dict(self.claims)))

    @property
    def username(self) -> str:
        """The Kubernetes username, `system:serviceaccount:NS:SA`."""
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    @property
    def is_pod_bound(self) -> bool:
        """Whether the token is bound to a pod (its `kubernetes.io.pod` claim is present)."""
        return self.pod_name is not None

    def istio_principal(self, trust_domain: str | None = None) -> str:
        """Istio's principal form, `cluster.local/ns/NS/sa/SA` (default: the identity's trust domain)."""
        return f"{trust_domain or self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def spiffe_id(self, trust_domain: str | None = None) -> str:
        """The SPIFFE ID, `spiffe://cluster.local/ns/NS/sa/SA`."""
        return f"spiffe://{self.istio_principal(trust_domain)}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the CLI's identity keys (times as RFC 3339 strings, `None` where absent).

        `cluster` is added when the identity names its cluster.
        """
        data: dict[str, Any] = {
            "issuer": self.issuer,
            "subject": self.subject,
            "namespace": self.namespace,
            "service_account": self.service_account,
            "service_account_uid": self.service_account_uid,
            "pod_name": self.pod_name,
            "pod_uid": self.pod_uid,
            "node_name": self.node_name,
            "node_uid": self.node_uid,
            "audiences": list(self.audiences),
            "issued_at": _iso(self.issued_at),
            "expires_at": _iso(self.expires_at),
            "token_id": self.token_id,
        }
        if self.cluster is not None:  # multi-cluster verifiers only: single-cluster output keeps its shape
            data["cluster"] = self.cluster
        return data

    def __str__(self) -> str:
        return self.username


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")
