"""Testing kit: a fake Kubernetes issuer and token minting, for your tests and ours.

```python
from k8s_jwt_auth.testing import FakeIssuer

with FakeIssuer() as issuer:
    config = VerifierConfig(issuer=issuer.issuer, audiences=["test"])
    token = issuer.mint("payments", "worker", audiences="test", pod="worker-1")
    assert TokenVerifier(config).verify(token).namespace == "payments"
```

The fake issuer also answers TokenReview like kube-apiserver (`delete_pod`, `recreate_pod`,
`delete_service_account`, `recreate_service_account`, `fail(mode, endpoint="tokenreview")`, a 10 s positive
cache following `clock`), for TokenReview mode.

`FakeClock` is a manual clock for every `clock=` of the library (and the issuer's): time moves with
`clock.advance(seconds)`, never by sleeping.

With pytest, the `k8s_issuer` fixture (from the plugin this package registers) gives a running
`FakeIssuer`, shared by the session and reset before each test.
"""

from __future__ import annotations

from ._clock import FakeClock
from ._issuer import Endpoint, FailureMode, FakeIssuer
from ._keys import SigningKey, b64url, build_claims, sign

__all__ = ["Endpoint", "FailureMode", "FakeClock", "FakeIssuer", "SigningKey", "b64url", "build_claims", "sign"]
