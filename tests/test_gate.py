"""`k8s_jwt_auth.gate.Gate`, the one request pipeline, and `k8s_jwt_auth.options`, the one option parser.

The adapters' behaviour through real frameworks is in the contract suite; here the gate's own promises: the same
outcome sync and async, exactly one audit record per call (none for an `AUTHENTICATE_ONLY` admission), refusals
returned not raised, and each option parsed with one meaning.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from k8s_jwt_auth import (
    ConfigurationError,
    InvalidToken,
    KeySetUnavailable,
    Policy,
    PolicyDenied,
    ServiceUnavailable,
    TokenReviewUnavailable,
    TokenVerifier,
    VerifierConfig,
    WorkloadIdentity,
)
from k8s_jwt_auth.gate import AUTHENTICATE_ONLY, Gate, Outcome, bearer_credentials
from k8s_jwt_auth.http import error_response
from k8s_jwt_auth.options import AdapterOptions, PathMatcher, flag_option, header_key
from k8s_jwt_auth.testing import FakeIssuer

from ._asgi import UnavailableKeys, bad_tokens, static_verifier
from ._audit import audit_dicts, capture, leaks

Admit = Callable[..., Outcome]


@pytest.fixture(params=["sync", "async"])
def admit(request: pytest.FixtureRequest) -> Callable[[Gate], Admit]:
    """`gate.admit`, or `gate.aadmit` run to completion: every case holds for both."""
    def bind(gate: Gate) -> Admit:
        if request.param == "sync":
            return gate.admit
        return lambda *args, **kwargs: asyncio.run(gate.aadmit(*args, **kwargs))
    return bind


def _gate(issuer: FakeIssuer, **settings: Any) -> Gate:
    return Gate(static_verifier(issuer, **settings), logger=logging.getLogger("tests.gate"))


def test_a_valid_token_is_admitted_with_one_allowed_record(issuer: FakeIssuer, admit: Callable[[Gate], Admit],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    token = issuer.mint("payments", "worker")
    outcome = admit(_gate(issuer, allow=["payments/*"]))(f"Bearer {token}", path="/pay", method="POST")
    assert outcome.admitted and outcome.error is None
    assert outcome.workload is not None and outcome.workload.username == "system:serviceaccount:payments:worker"
    assert outcome.decision is not None and str(outcome.decision.rule) == "payments/*"
    records = audit_dicts(caplog)
    assert [(r["decision"], r["path"], r["method"], r["rule"]) for r in records] == [
        ("allowed", "/pay", "POST", "payments/*")]
    assert leaks(caplog, token) == []


@pytest.mark.parametrize("case", ["expired", "tampered", "foreign_key", "garbage"])
def test_a_bad_token_is_refused_with_its_reason_and_one_record(issuer: FakeIssuer, admit: Callable[[Gate], Admit],
                                                              caplog: pytest.LogCaptureFixture, case: str) -> None:
    capture(caplog)
    token, reason = bad_tokens(issuer)[case]
    outcome = admit(_gate(issuer))(f"Bearer {token}", path="/x")
    assert not outcome.admitted and outcome.workload is None
    assert isinstance(outcome.error, InvalidToken) and outcome.error.reason == reason
    assert outcome.response().status == 401
    assert [r["decision"] for r in audit_dicts(caplog)] == ["rejected_token"]
    assert leaks(caplog, token) == []
    assert token not in caplog.text


@pytest.mark.parametrize(("credentials", "reason"), [
    (None, "missing_token"),
    ([], "missing_token"),
    ("Basic dXNlcjpwYXNz", "missing_token"),  # not our scheme: no bearer credentials
    ("Bearer", "malformed"),
    ("Bearer a b", "malformed"),
    ([b"Bearer a", b"Bearer b"], "malformed"),  # a repeated header
    ("Bearer " + "a" * 70_000, "too_large"),
])
def test_credentials_that_carry_no_usable_token(issuer: FakeIssuer, admit: Callable[[Gate], Admit],
                                                caplog: pytest.LogCaptureFixture, credentials: Any,
                                                reason: str) -> None:
    capture(caplog)
    outcome = admit(_gate(issuer))(credentials)
    assert outcome.error is not None and outcome.error.reason == reason
    assert len(audit_dicts(caplog)) == 1


def test_optional_admits_no_credentials_anonymously_without_a_record(issuer: FakeIssuer,
                                                                    admit: Callable[[Gate], Admit],
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    gate = admit(_gate(issuer))
    assert gate(None, optional=True) == Outcome()
    assert gate("Basic abc", optional=True).admitted
    assert gate("Bearer not.a.token", optional=True).error is not None  # a bad token is still refused
    assert [r["decision"] for r in audit_dicts(caplog)] == ["rejected_token"]


def test_the_route_policy_replaces_the_service_policy(issuer: FakeIssuer, admit: Callable[[Gate], Admit]) -> None:
    gate = admit(_gate(issuer, allow=["orders/*"]))
    payments = f"Bearer {issuer.mint('payments', 'worker')}"
    assert isinstance(gate(payments).error, PolicyDenied)  # the service policy
    assert gate(payments, policy=Policy(["payments/*"])).admitted  # the route's own rules
    denied = gate(payments, policy=Policy(["payments/*", "!payments/worker"])).error
    assert isinstance(denied, PolicyDenied) and denied.rule == "!payments/worker"


def test_authenticate_only_applies_no_policy_and_writes_no_allowed_record(
        issuer: FakeIssuer, admit: Callable[[Gate], Admit], caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    gate = admit(_gate(issuer, allow=["orders/*"]))
    outcome = gate(f"Bearer {issuer.mint('payments', 'worker')}", policy=AUTHENTICATE_ONLY)
    assert outcome.admitted and outcome.workload is not None and outcome.decision is None
    assert audit_dicts(caplog) == []
    refused = gate(f"Bearer {bad_tokens(issuer)['expired'][0]}", policy=AUTHENTICATE_ONLY)
    assert refused.error is not None and [r["decision"] for r in audit_dicts(caplog)] == ["rejected_token"]


def test_a_dry_run_policy_admits_and_records_the_would_be_denial(issuer: FakeIssuer, admit: Callable[[Gate], Admit],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    caplog.set_level(logging.WARNING, logger="tests.gate")
    outcome = admit(_gate(issuer, allow=["orders/*"], dry_run=True))(f"Bearer {issuer.mint('payments', 'worker')}")
    assert outcome.admitted and outcome.decision is not None and not outcome.decision.allowed
    assert [r["decision"] for r in audit_dicts(caplog)] == ["dry_run_denied"]
    assert "policy dry run: system:serviceaccount:payments:worker would be denied" in caplog.text


def test_keys_down_is_a_503_with_retry_after(issuer: FakeIssuer, admit: Callable[[Gate], Admit],
                                             caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    config = VerifierConfig(issuer=issuer.issuer, audiences=["test"], jwks=issuer.jwks())
    gate = admit(Gate(TokenVerifier(config, keys=UnavailableKeys())))
    outcome = gate(f"Bearer {issuer.mint()}")
    assert isinstance(outcome.error, KeySetUnavailable)
    rendered = outcome.response("svc")
    assert (rendered.status, dict(rendered.headers)["Retry-After"]) == (503, "7")
    assert "WWW-Authenticate" not in dict(rendered.headers)
    assert [r["decision"] for r in audit_dicts(caplog)] == ["unavailable"]


def test_the_check_step_refuses_with_one_record_and_sees_only_allowed_workloads(
        issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    gate, seen = _gate(issuer, allow=["payments/*"]), []

    def check(workload: WorkloadIdentity) -> None:
        seen.append(workload.service_account)
        if workload.service_account == "batch":
            raise PolicyDenied("no user for it", workload=workload)

    async def acheck(workload: WorkloadIdentity) -> None:
        check(workload)

    for call in (lambda c: gate.admit(c, check=check), lambda c: asyncio.run(gate.aadmit(c, check=acheck))):
        assert call(f"Bearer {issuer.mint('payments', 'worker')}").admitted
        assert isinstance(call(f"Bearer {issuer.mint('payments', 'batch')}").error, PolicyDenied)
        assert isinstance(call(f"Bearer {issuer.mint('frontend', 'web')}").error, PolicyDenied)  # never checked
    assert seen == ["worker", "batch"] * 2
    assert [r["decision"] for r in audit_dicts(caplog)] == ["allowed", "denied_policy", "denied_policy"] * 2


def test_authorize_and_refuse_write_one_record_each(issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    gate = _gate(issuer, allow=["orders/*"])
    workload = gate.verifier.verify(issuer.mint("payments", "worker"))
    assert gate.authorize(workload, policy=Policy(["payments/*"]), path="/p").workload == workload
    assert isinstance(gate.authorize(workload, path="/p").error, PolicyDenied)  # default: the service policy
    refused = gate.refuse(InvalidToken("no workload", reason="missing_token"), path="/p", transport="websocket")
    assert refused.error is not None and refused.response().status == 401
    assert [(r["decision"], r["transport"]) for r in audit_dicts(caplog)] == [
        ("allowed", "http"), ("denied_policy", "http"), ("rejected_token", "websocket")]


def test_an_admitted_outcome_has_no_error_response() -> None:
    with pytest.raises(ValueError, match="no error response"):
        Outcome().response()


def test_bearer_credentials_forms() -> None:
    assert bearer_credentials("Bearer abc") == bearer_credentials(b"Bearer abc") == "abc"
    assert bearer_credentials(["Bearer abc"]) == bearer_credentials((b"Bearer abc",)) == "abc"
    assert bearer_credentials(None) is bearer_credentials([]) is None


def test_503_messages_say_which_service_is_down() -> None:
    keys = error_response(KeySetUnavailable("GET https://issuer.internal/jwks: 502"))
    review = error_response(TokenReviewUnavailable("POST https://10.0.0.1/apis/...: 403"))
    assert keys.body["message"] == KeySetUnavailable.public_message and "issuer's keys" in keys.body["message"]
    assert review.body["message"] == TokenReviewUnavailable.public_message and "API server" in review.body["message"]
    assert (keys.body["reason"], review.body["reason"]) == ("keys_unavailable", "review_unavailable")
    assert issubclass(KeySetUnavailable, ServiceUnavailable) and issubclass(TokenReviewUnavailable, ServiceUnavailable)
    assert not issubclass(TokenReviewUnavailable, KeySetUnavailable)


def test_the_gate_never_blocks_the_loop_for_a_cached_token(issuer: FakeIssuer) -> None:
    gate = _gate(issuer)
    header = f"Bearer {issuer.mint()}"

    async def many() -> list[Outcome]:
        calls: list[Awaitable[Outcome]] = [gate.aadmit(header) for _ in range(50)]
        return await asyncio.wait_for(asyncio.gather(*calls), timeout=10)

    assert all(outcome.admitted for outcome in asyncio.run(many()))


# -- options ---------------------------------------------------------------------------------------------------


def test_options_default_when_missing_or_none() -> None:
    assert AdapterOptions.parse({}) == AdapterOptions.parse(dict.fromkeys(("HEADER", "REALM", "OPTIONAL",
                                                                          "EXEMPT_PATHS"))) == AdapterOptions()
    options = AdapterOptions()
    assert (options.header, options.realm, options.optional, bool(options.exempt_paths)) == (
        "Authorization", None, False, False)
    assert (options.header_key, options.meta_key) == (b"authorization", "HTTP_AUTHORIZATION")


def test_options_accepted_forms() -> None:
    options = AdapterOptions.parse({"HEADER": "X-Forwarded-Authorization", "REALM": "payments api",
                                    "OPTIONAL": "yes", "EXEMPT_PATHS": "/healthz, /public/*"})
    assert (options.header_key, options.meta_key) == (b"x-forwarded-authorization", "HTTP_X_FORWARDED_AUTHORIZATION")
    # PEP 3333 and Django's META spell CGI's own two headers without the HTTP_ prefix
    assert AdapterOptions.parse({"HEADER": "Content-Type"}).meta_key == "CONTENT_TYPE"
    assert options.realm == "payments api" and options.optional is True
    assert options.exempt_paths == PathMatcher(["/healthz", "/public/*"])
    assert options.exempt_paths("/public/x") and options.exempt_paths("/public") and not options.exempt_paths("/pub")
    assert AdapterOptions.parse({"EXEMPT_PATHS": ("/a",)}).exempt_paths == PathMatcher(["/a"])
    assert [flag_option(v) for v in (True, "on", "1", "TRUE", False, "off", "0", "no")] == [True] * 4 + [False] * 4


@pytest.mark.parametrize(("suffix", "value", "words"), [
    ("HEADER", "x_token", "use '-', not '_'"),
    ("HEADER", "bad header", "not a valid HTTP header name"),
    ("HEADER", "", "not a valid HTTP header name"),
    ("HEADER", 5, "not a valid HTTP header name"),
    ("REALM", "", "must be 1 to 200 printable ASCII characters"),
    ("REALM", "   ", "not blank"),
    ("REALM", 'a"b', "without '\"'"),
    ("REALM", "r" * 201, "1 to 200"),
    ("REALM", 7, "expected a string"),
    ("OPTIONAL", "maybe", "expected True or False"),
    ("OPTIONAL", 1, "expected True or False"),
    ("OPTIONAL", "", "expected True or False"),
    ("EXEMPT_PATHS", 5, "expected a list of paths"),
    ("EXEMPT_PATHS", ["healthz"], "must be a string starting with '/'"),
    ("EXEMPT_PATHS", ["/pub*"], "only allowed as a trailing '/*'"),
])
def test_invalid_options_name_the_setting_as_the_framework_spells_it(suffix: str, value: object,
                                                                     words: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        AdapterOptions.parse({suffix: value}, lambda s: f'K8S_JWT_AUTH["{s}"]')
    assert caught.value.message.startswith(f'K8S_JWT_AUTH["{suffix}"]: ')
    assert words in caught.value.message and caught.value.setting == suffix


def test_header_key_is_the_one_header_check() -> None:
    assert header_key("X-Token") == b"x-token"
    with pytest.raises(ConfigurationError, match="'-', not '_'"):
        header_key("x_token")


def test_a_repeat_caller_is_answered_from_the_cache_and_a_multi_cluster_verifier_through_verify(
        issuer: FakeIssuer, admit: Callable[[Gate], Admit]) -> None:
    """The gate asks a TokenVerifier's cache first (the same identity object, one hit more), and a verifier
    subclass that verifies its own way (several clusters) through its verify()."""
    from k8s_jwt_auth import MultiClusterVerifier

    gate = _gate(issuer, allow=["payments/*"])
    header = f"Bearer {issuer.mint('payments', 'worker')}"
    first = admit(gate)(header)
    hits = gate.verifier.cache_info().hits  # type: ignore[union-attr]
    again = admit(gate)(header)
    assert again.workload is first.workload
    assert gate.verifier.cache_info().hits == hits + 1  # type: ignore[union-attr]

    multi = Gate(MultiClusterVerifier({"prod": static_verifier(issuer, allow=["payments/*"]).config}))
    for _ in range(2):
        outcome = admit(multi)(header)
        assert outcome.admitted and outcome.workload is not None and outcome.workload.cluster == "prod"
    assert admit(multi)(f"Bearer {issuer.mint('payments', 'worker', audiences='other')}").error is not None
