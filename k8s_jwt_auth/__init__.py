"""k8s-jwt-auth: verify Kubernetes service-account tokens and turn them into workload identities.

```python
from k8s_jwt_auth import TokenVerifier, VerifierConfig

verifier = TokenVerifier(VerifierConfig.from_env())
workload = verifier.verify(token)          # or: await verifier.verify_async(token)
verifier.policy.enforce(workload)          # PolicyDenied unless K8S_JWT_AUTH_ALLOW lets it in
```

Framework adapters live in `k8s_jwt_auth.integrations.*`; this package imports none of them.
"""

from __future__ import annotations

import logging

from ._cache import CacheInfo
from ._observer import FetchEvent, Observer, Observers, ReviewEvent, VerifyEvent
from ._remote import KeySourceStatus, RemoteKeySource
from ._shared import SharedStore
from .client import ServiceAccountTokenAuth, TokenFileError, read_token
from .config import VerifierConfig
from .errors import (
    AlreadyInstalled,
    AuthError,
    ConfigurationError,
    InvalidToken,
    KeySetUnavailable,
    PolicyDenied,
    Reason,
    ServiceUnavailable,
    TokenReviewUnavailable,
)
from .identity import WorkloadIdentity
from .keys import KeySet, KeySource, StaticKeySource, VerificationKey
from .multicluster import ClusterPolicy, MultiClusterVerifier
from .policy import Decision, Policy, Rule
from .tokenreview import TokenReviewer
from .verifier import Clock, TokenVerifier

__all__ = [
    "AlreadyInstalled",
    "AuthError",
    "CacheInfo",
    "Clock",
    "ClusterPolicy",
    "ConfigurationError",
    "Decision",
    "FetchEvent",
    "InvalidToken",
    "KeySet",
    "KeySetUnavailable",
    "KeySource",
    "KeySourceStatus",
    "MultiClusterVerifier",
    "Observer",
    "Observers",
    "Policy",
    "PolicyDenied",
    "Reason",
    "ReviewEvent",
    "RemoteKeySource",
    "ServiceAccountTokenAuth",
    "ServiceUnavailable",
    "SharedStore",
    "Rule",
    "StaticKeySource",
    "TokenFileError",
    "TokenReviewUnavailable",
    "TokenReviewer",
    "TokenVerifier",
    "VerificationKey",
    "VerifierConfig",
    "VerifyEvent",
    "WorkloadIdentity",
    "read_token",
]

__version__ = "0.1.0"

# A library leaves output to the application: without this, Python's last-resort handler prints every WARNING of
# `k8s_jwt_auth.*` (each refused request's audit record) to stderr when the application configured no logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())

# Tracebacks and reprs show `k8s_jwt_auth.InvalidToken`, not the private module path (as httpx does).
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = __name__
del _name, _obj
