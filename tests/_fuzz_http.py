"""Shared by the adapter fuzz tests: generated Authorization headers, the verifier, the oracle and the response checks.

Every adapter is driven with the same generated requests (`requests`): zero to three credentials headers, each with
a name in any letter case and a value that is arbitrary text or bytes, control characters, a value around and beyond
the 64 KiB limit, or `Bearer` (in any case, with odd spacing) followed by zero to three tokens, junk or signed by the
test keys with arbitrary header and claims. Each test sends what its client can send (see `Sent`), asks the core what
the answer must be (`expected`), and checks the adapter's answer against it (`check_answer`).
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import event
from hypothesis import strategies as st

from k8s_jwt_auth import (
    AuthError,
    KeySetUnavailable,
    Policy,
    TokenVerifier,
    VerificationKey,
    VerifierConfig,
    WorkloadIdentity,
)
from k8s_jwt_auth.http import bearer_token, missing_token
from k8s_jwt_auth.keys import KeySet, StaticKeySource
from k8s_jwt_auth.testing import SigningKey, build_claims, sign

from .conftest import NOW, TEST_ISSUER
from .test_fuzz import json_values, segment

__all__ = ["ALLOW", "ROUTE_RULES", "Answer", "Sent", "check_answer", "expected", "fuzz_verifier", "requests"]

RSA, EC, FOREIGN = SigningKey.generate("RS256"), SigningKey.generate("ES256"), SigningKey.generate("ES256")
DOWN_KID = "down"  # the key source answers 503 for this kid: the issuer is down
ALLOW = ("payments/*", "default/*")  # the verifier's policy: kube-system/... is denied (403)
ROUTE_RULES = ("payments/*", "!payments/batch")  # the guarded routes' own rules: default/... and payments/batch 403


class _KeysOrDown:
    """The test keys, except that looking up `kid="down"` fails as if the issuer were unreachable."""

    def __init__(self) -> None:
        self._keys = StaticKeySource(KeySet.from_jwks({"keys": [RSA.public_jwk(), EC.public_jwk()]}))

    def get(self, kid: str | None, alg: str) -> VerificationKey:
        if kid == DOWN_KID:
            raise KeySetUnavailable("the issuer is down", retry_after=7)
        return self._keys.get(kid, alg)

    async def get_async(self, kid: str | None, alg: str) -> VerificationKey:
        return self.get(kid, alg)


def fuzz_verifier() -> TokenVerifier:
    """The verifier every adapter fuzz test uses: the test keys (and the `down` kid), audience "test", `ALLOW`."""
    config = VerifierConfig(issuer=TEST_ISSUER, audiences=["test"], allow=ALLOW,
                            jwks={"keys": [RSA.public_jwk(), EC.public_jwk()]})
    return TokenVerifier(config, keys=_KeysOrDown(), clock=lambda: NOW)


# -- generated requests ------------------------------------------------------------------------------------

_known_names = st.sampled_from(["payments", "default", "kube-system"])
names = st.one_of(_known_names, _known_names, st.text(string.ascii_lowercase + "-.", max_size=12))
accounts = st.one_of(st.sampled_from(["worker", "batch"]), st.sampled_from(["worker", "batch"]), st.text(max_size=10))
claim_names = st.sampled_from(["iss", "aud", "exp", "nbf", "iat", "sub", "kubernetes.io", "jti", "x"])


@st.composite
def signed_tokens(draw: st.DrawFn) -> str:
    """A JWT signed by a test key (or a foreign one): valid claims, often with some replaced, added or dropped,
    and the usual header, the `down` kid, or arbitrary header members."""
    pod = draw(st.none() | st.just(("worker-1", "0d5a0e4e-pod")))
    claims = build_claims(issuer=TEST_ISSUER, namespace=draw(names), service_account=draw(accounts), now=NOW - 60,
                          pod=pod, extra={"jti": "fixed-jti"})
    if draw(st.sampled_from([False, False, True])):
        claims.update(draw(st.dictionaries(claim_names, json_values, max_size=3)))
        for name in draw(st.lists(claim_names, max_size=2)):
            claims.pop(name, None)
    key = draw(st.sampled_from([RSA, RSA, EC, FOREIGN]))
    header: dict[str, Any] = {"alg": key.alg, "kid": key.kid}
    shape = draw(st.sampled_from(["usual", "usual", "down", "arbitrary"]))
    if shape == "down":
        header["kid"] = DOWN_KID
    elif shape == "arbitrary":
        header.update(draw(st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "jku", "x"]), json_values,
                                           max_size=3)))
    return sign(key, claims, header)


tokens = signed_tokens() | st.lists(segment, min_size=1, max_size=4).map(".".join) | st.text(max_size=40)
schemes = (st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR", "Basic", "Token", "Bearer:", "Bearerx", ""])
           | st.text("BbEeAaRr", max_size=7))
blanks = st.text(" \t", max_size=3)


@st.composite
def bearer_values(draw: st.DrawFn) -> tuple[str, tuple[str, ...]]:
    """`[blanks]scheme blanks token[(sep)token...][blanks]`: the value and the tokens in it."""
    sent = tuple(draw(st.lists(tokens, max_size=3)))
    joiner = draw(st.sampled_from([" ", ", ", ",", "\t", "  "]))
    value = draw(blanks) + draw(schemes) + draw(blanks | st.just(" ")) + joiner.join(sent) + draw(blanks)
    return value, sent


good_values = st.builds(  # what a caller sends, with the spacing and case RFC 6750 readers accept
    lambda lead, scheme, gap, token, trail: (lead + scheme + gap + token + trail, (token,)),
    blanks, st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"]), st.text(" ", min_size=1, max_size=3),
    signed_tokens(), blanks)


def _long(n: int, token: str) -> tuple[str, tuple[str, ...]]:
    return "Bearer " + token + " " * n, (token,)


long_values = st.one_of(
    st.builds(lambda n: ("Bearer " + "a" * n, ()), st.integers(65_000, 70_000)),  # around the 64 KiB limit
    st.builds(_long, st.integers(0, 70_000), signed_tokens()),  # a good token padded past the limit
)
arbitrary_values = st.one_of(
    st.text(max_size=200),  # any Unicode: clients that cannot send it send its UTF-8 bytes (see Sent)
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),  # any byte
    st.text(st.characters(max_codepoint=0x1F) | st.sampled_from("Bearer .\x7f\x85\xa0"), max_size=40),  # controls
).map(lambda text: (text, (text,)))
header_names = st.builds(  # "authorization" in any letter case
    lambda flips: "".join(c.upper() if f else c for c, f in zip("authorization", flips, strict=True)),
    st.lists(st.booleans(), min_size=13, max_size=13))


@dataclass(frozen=True)
class Sent:
    """What a request carries: its credentials headers as generated, and the token-like strings in them.

    Clients differ in what they can send; each test converts with the method for its client.
    """

    headers: tuple[tuple[str, str], ...]
    secrets: tuple[str, ...]

    def values(self) -> list[str]:
        return [value for _, value in self.headers]

    def as_bytes(self) -> list[tuple[bytes, bytes]]:
        """For httpx (Starlette's TestClient): a `str` header value must be ASCII, but bytes go through as they are.
        Text beyond latin-1 is sent as its UTF-8 bytes, as a real client would."""
        return [(name.encode("ascii"), _wire(value)) for name, value in self.headers]


def _wire(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def wire_text(value: str) -> str:
    """A value as a server decodes it from the wire (latin-1), for clients that only take latin-1 text."""
    return _wire(value).decode("latin-1")


@st.composite
def requests(draw: st.DrawFn) -> Sent:
    """Zero to three credentials headers (mostly one), names in any case, values of every kind above."""
    count = draw(st.sampled_from([1, 1, 1, 1, 1, 1, 0, 2, 3]))
    headers, secrets = [], []
    for _ in range(count):
        kind = draw(st.sampled_from([good_values] * 4 + [bearer_values()] * 2 + [arbitrary_values, long_values]))
        value, found = draw(kind)
        headers.append((draw(header_names), value))
        secrets.extend(found)
    return Sent(tuple(headers), tuple(s for s in secrets if _tellable(s)))


def _tellable(secret: str) -> bool:
    """Long enough, and not plain words, to tell a token apart from the text of an answer."""
    return len(secret.strip()) >= 16 and any(c.isalnum() for c in secret) and " " not in secret.strip()


# -- the oracle and the checks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What the core says a request must get: the status, and the reason (refusals) or the workload (200)."""

    status: int
    reason: str | None = None
    workload: WorkloadIdentity | None = None


def expected(values: Sequence[str | bytes], verifier: TokenVerifier, policies: Iterable[Policy]) -> Answer:
    """The answer for a request with these credentials header values (as the server sees them), checked by the
    verifier and then every policy in turn. More than one value is `malformed`, none is `missing_token`."""
    try:
        if len(values) > 1:
            return Answer(401, "malformed")
        token = bearer_token(values[0]) if values else None
        if token is None:
            raise missing_token()
        workload = verifier.verify(token)
        for policy in policies:
            policy.enforce(workload)
    except AuthError as exc:
        return Answer(exc.status_code, exc.reason)
    return Answer(200, workload=workload)


_PARAM = r'[a-z_]+="[\x20\x21\x23-\x5b\x5d-\x7e]*"'
CHALLENGE = re.compile(rf"Bearer(?: {_PARAM}(?:, {_PARAM})*)?")  # RFC 6750 section 3, as we write it
ERRORS = {401: "invalid_token", 403: "insufficient_scope", 503: "temporarily_unavailable"}


def check_answer(status: int, headers: Iterable[tuple[str, str]], body: bytes, want: Answer,
                 secrets: Sequence[str], logged: str = "") -> dict[str, Any]:
    """The adapter answered `want` with our shape, and no token shows in the body, headers or logs.

    Returns the JSON body.
    """
    headers = [(name.lower(), value) for name, value in headers]
    text = body.decode("utf-8")
    shown = "\n".join(f"{name}: {value}" for name, value in headers)
    for secret in secrets:
        assert secret not in text and secret not in shown and secret not in logged, "a token leaked"
    assert status in (200, 401, 403, 503)
    assert status == want.status, f"answered {status} {text}, the core says {want}"
    event(f"{status} {want.reason or 'ok'}")  # pytest --hypothesis-show-statistics shows the mix
    document: dict[str, Any] = json.loads(text)
    if status == 200:
        return document
    found = dict(headers)
    assert found["content-type"] == "application/json"
    assert set(document) == {"error", "reason", "message"}
    assert (document["error"], document["reason"]) == (ERRORS[status], want.reason)
    if status == 503:
        assert found["retry-after"].isdigit() and int(found["retry-after"]) >= 1
        return document
    challenge = found["www-authenticate"]
    assert CHALLENGE.fullmatch(challenge), challenge
    if want.reason == "missing_token":
        assert challenge == "Bearer"  # RFC 6750 section 3.1: no error code when no credentials were sent
    else:
        assert f'error="{ERRORS[status]}"' in challenge
    return document
