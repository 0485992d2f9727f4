"""Testing kit: a fake Kubernetes issuer and token minting, for your tests and ours.

```python
from k8s_jwt_auth.testing import FakeIssuer

with FakeIssuer() as issuer:
    config = VerifierConfig(issuer=issuer.issuer, audiences=["test"])
    token = issuer.mint("payments", "worker", audiences="test", pod="worker-1")
    assert TokenVerifier(config).verify(token).namespace == "payments"
```

With pytest, the `k8s_issuer` fixture (from the plugin this package registers) gives a running
`FakeIssuer`, shared by the session and reset before each test.
"""

from __future__ import annotations

from ._issuer import FailureMode, FakeIssuer
from ._keys import SigningKey, b64url, build_claims, sign

__all__ = ["FailureMode", "FakeIssuer", "SigningKey", "b64url", "build_claims", "sign"]
