"""`k8s_jwt_auth.integrations.grpc`: the server interceptors on real gRPC servers on 127.0.0.1, sync and aio.

One sync server and one aio server (with both coroutine and plain handlers) serve the whole module; each test puts
its own interceptor behind them (`Switch`). Every refusal is checked for its status, its `<reason>: ` details, its
one audit record and the token's absence from details and logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from k8s_jwt_auth import ConfigurationError, Policy, Rule, TokenVerifier, VerifierConfig
from k8s_jwt_auth.integrations.grpc import (
    HEALTH_METHODS,
    AioK8sJWTAuthInterceptor,
    K8sJWTAuthInterceptor,
    NoWorkloadError,
    RefusalStatus,
    current_workload,
    get_current_workload,
    refusal_status,
)
from k8s_jwt_auth.testing import FakeIssuer

from ._asgi import UnavailableKeys, bad_tokens, static_verifier
from ._audit import audit_dicts, capture, leaks
from ._grpc import KINDS, AioServer, Switch, aio_handlers, call, method, serve_sync, sync_handlers

REPO = Path(__file__).resolve().parents[1]
PAYMENTS = "system:serviceaccount:payments:worker"
Interceptor = Callable[..., Any]


# -- the servers: started once, each test brings its interceptor ------------------------------------------------


@pytest.fixture(scope="module")
def sync_switch() -> Iterator[tuple[Switch, grpc.Channel]]:
    switch = Switch()
    with serve_sync([switch], sync_handlers()) as target, grpc.insecure_channel(target) as channel:
        yield switch, channel


@pytest.fixture(scope="module")
def aio_switch() -> Iterator[tuple[Switch, grpc.Channel]]:
    switch = Switch()
    with AioServer([switch], aio_handlers(), sync_handlers("test.SyncEcho")) as server, \
            grpc.insecure_channel(server.target) as channel:
        yield switch, channel


@pytest.fixture(params=["sync", "aio"])
def server(request: pytest.FixtureRequest) -> tuple[Switch, grpc.Channel, type[Any]]:
    """(the switch, a channel to the server, our interceptor class for it), for the sync and the aio server."""
    switch, channel = request.getfixturevalue(f"{request.param}_switch")
    cls = K8sJWTAuthInterceptor if request.param == "sync" else AioK8sJWTAuthInterceptor
    return switch, channel, cls


@pytest.fixture
def serve(server: tuple[Switch, grpc.Channel, type[Any]]) -> Iterator[Callable[..., grpc.Channel]]:
    """`serve(verifier, **options)`: put our interceptor (sync or aio) on the server; returns the channel."""
    switch, channel, cls = server

    def install(verifier: Any, **options: Any) -> grpc.Channel:
        switch.current = cls(verifier, **options)
        return channel

    yield install
    switch.current = None


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def refused(channel: grpc.Channel, kind: str = "unary_unary", **options: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(channel, kind, **options)
    return info.value


def records(caplog: pytest.LogCaptureFixture) -> list[tuple[Any, ...]]:
    return [(r["decision"], r["reason"], r["status"], r["path"], r["method"], r["transport"])
            for r in audit_dicts(caplog)]


# -- admitted calls -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_call_type_reaches_its_handler_with_the_workload(
    issuer: FakeIssuer, serve: Callable[..., grpc.Channel], kind: str, caplog: pytest.LogCaptureFixture,
) -> None:
    capture(caplog)
    channel = serve(static_verifier(issuer))
    token = issuer.mint("payments", "worker")
    result = call(channel, kind, metadata=bearer(token), requests=3)
    responses = result if isinstance(result, list) else [result]
    assert [r["who"] for r in responses] == [PAYMENTS] * len(responses)  # every step of a streaming handler
    assert responses == ([{"who": PAYMENTS, "i": i} for i in range(3)] if kind == "unary_stream" else
                         [{"who": PAYMENTS, "got": [0, 1, 2]}] if kind == "stream_unary" else
                         [{"who": PAYMENTS, "echo": r} for r in ([3] if kind == "unary_unary" else range(3))])
    assert records(caplog) == [("allowed", "ok", None, method(kind), None, "grpc")]
    assert leaks(caplog, token) == []


@pytest.mark.parametrize("kind", KINDS)
def test_plain_handlers_on_an_aio_server_see_the_workload(
    issuer: FakeIssuer, aio_switch: tuple[Switch, grpc.Channel], kind: str,
) -> None:
    """grpc.aio runs plain handlers on its thread pool (no contextvars copied there): the wrapper sets them."""
    switch, channel = aio_switch
    switch.current = AioK8sJWTAuthInterceptor(static_verifier(issuer))
    try:
        result = call(channel, kind, metadata=bearer(issuer.mint("payments", "worker")),
                      name=method(kind, "test.SyncEcho"))
    finally:
        switch.current = None
    assert {r["who"] for r in (result if isinstance(result, list) else [result])} == {PAYMENTS}


def test_current_workload_outside_a_call() -> None:
    assert get_current_workload() is None
    with pytest.raises(NoWorkloadError, match="current_workload"):
        current_workload()
    assert issubclass(NoWorkloadError, LookupError)


def test_the_workload_does_not_outlive_its_call(issuer: FakeIssuer, serve: Callable[..., grpc.Channel]) -> None:
    """The pool's threads run the next call without the previous caller's identity (optional mode: anonymous)."""
    channel = serve(static_verifier(issuer), optional=True)
    for _ in range(3):
        for kind in KINDS:
            assert call(channel, kind, metadata=bearer(issuer.mint("payments", "worker")), requests=1)
            result = call(channel, kind, requests=1)
            assert {r["who"] for r in (result if isinstance(result, list) else [result])} == {"anonymous"}


# -- refusals: status, reason, one record, no token -------------------------------------------------------------


@pytest.mark.parametrize("case", ["expired", "tampered", "wrong_audience", "foreign_key", "garbage"])
def test_a_bad_token_is_unauthenticated_with_its_reason(
    issuer: FakeIssuer, serve: Callable[..., grpc.Channel], case: str, caplog: pytest.LogCaptureFixture,
) -> None:
    capture(caplog)
    caplog.set_level(logging.DEBUG, logger="k8s_jwt_auth")
    token, reason = bad_tokens(issuer)[case]
    error = refused(serve(static_verifier(issuer)), metadata=bearer(token))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details().startswith(f"{reason}: ")
    assert token not in error.details() and all(s not in error.details() for s in token.split(".") if len(s) > 8)
    assert records(caplog) == [("rejected_token", reason, 401, "/test.Echo/UnaryUnary", None, "grpc")]
    assert leaks(caplog, token) == [] and token not in caplog.text


@pytest.mark.parametrize(("metadata", "reason"), [
    ([], "missing_token"),
    ([("authorization", "Basic dXNlcjpwYXNz")], "missing_token"),  # not our scheme: no bearer credentials
    ([("authorization", "Bearer")], "malformed"),
    ([("authorization", "Bearer a b")], "malformed"),
    ([("authorization", "bearer  a.b.c ")], "malformed"),
])
def test_missing_and_malformed_credentials(
    issuer: FakeIssuer, serve: Callable[..., grpc.Channel], metadata: list[tuple[str, str]], reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    capture(caplog)
    error = refused(serve(static_verifier(issuer)), metadata=metadata)
    assert (error.code(), error.details().partition(":")[0]) == (grpc.StatusCode.UNAUTHENTICATED, reason)
    assert records(caplog) == [("rejected_token", reason, 401, "/test.Echo/UnaryUnary", None, "grpc")]


def test_repeated_authorization_metadata_is_refused(issuer: FakeIssuer, serve: Callable[..., grpc.Channel],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Two credentials (e.g. an interceptor and call credentials both sending one): refused, like repeated headers."""
    capture(caplog)
    token = issuer.mint("payments", "worker")
    error = refused(serve(static_verifier(issuer)), metadata=bearer(token) + bearer(token))
    assert (error.code(), error.details().partition(":")[0]) == (grpc.StatusCode.UNAUTHENTICATED, "malformed")
    assert [r[:3] for r in records(caplog)] == [("rejected_token", "malformed", 401)]
    assert leaks(caplog, token) == []


@pytest.mark.parametrize("kind", KINDS)
def test_every_call_type_is_refused_before_its_handler(issuer: FakeIssuer, serve: Callable[..., grpc.Channel],
                                                       kind: str, caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    error = refused(serve(static_verifier(issuer)), kind, requests=3)
    assert (error.code(), error.details().partition(":")[0]) == (grpc.StatusCode.UNAUTHENTICATED, "missing_token")
    assert records(caplog) == [("rejected_token", "missing_token", 401, method(kind), None, "grpc")]


def test_a_denied_workload_is_permission_denied(issuer: FakeIssuer, serve: Callable[..., grpc.Channel],
                                                caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    channel = serve(static_verifier(issuer, allow=["payments/*", "!payments/batch"]))
    token = issuer.mint("payments", "batch")
    error = refused(channel, metadata=bearer(token))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == ("policy_denied: workload payments/batch is not allowed "
                               "(denied by rule !payments/batch)")
    assert [r[:3] for r in records(caplog)] == [("denied_policy", "policy_denied", 403)]
    assert audit_dicts(caplog)[0]["namespace"] == "payments" and audit_dicts(caplog)[0]["rule"] == "!payments/batch"
    assert leaks(caplog, token) == []
    assert call(channel, "unary_unary", metadata=bearer(issuer.mint("payments", "worker")))["who"] == PAYMENTS


def test_unavailable_keys_are_unavailable_with_retry_pushback(issuer: FakeIssuer, serve: Callable[..., grpc.Channel],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    verifier = TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences=["test"]), keys=UnavailableKeys())
    token = issuer.mint("payments", "worker")
    error = refused(serve(verifier), metadata=bearer(token))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == ("keys_unavailable: the token cannot be verified now: the issuer's keys are "
                               "unavailable; retry later")  # the public sentence, not "the issuer is down"
    assert ("grpc-retry-pushback-ms", "7000") in [tuple(m) for m in error.trailing_metadata()]
    assert [r[:3] for r in records(caplog)] == [("unavailable", "keys_unavailable", 503)]
    assert leaks(caplog, token) == []


def test_unavailable_tokenreview_is_unavailable(issuer: FakeIssuer, serve: Callable[..., grpc.Channel],
                                                tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    own = tmp_path / "token"
    own.write_text(issuer.mint("kube-system", "reviewer") + "\n")
    verifier = TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences=["test"], jwks=issuer.jwks(),
                                            tokenreview=True, tokenreview_url=issuer.url, token_file=str(own)))
    issuer.fail("error", endpoint="tokenreview")
    try:
        error = refused(serve(verifier), metadata=bearer(issuer.mint("payments", "worker", pod="worker-1")))
    finally:
        verifier.close()  # its kept-alive connection to the API server
    assert (error.code(), error.details().partition(":")[0]) == (grpc.StatusCode.UNAVAILABLE, "review_unavailable")
    assert any(key == "grpc-retry-pushback-ms" and int(value) >= 1000 for key, value in error.trailing_metadata())
    assert [r[:3] for r in records(caplog)] == [("unavailable", "review_unavailable", 503)]


def test_refusal_status_maps_every_outcome() -> None:
    from k8s_jwt_auth import InvalidToken, KeySetUnavailable, PolicyDenied, TokenReviewUnavailable

    assert refusal_status(InvalidToken("gone", reason="expired")) == RefusalStatus(
        grpc.StatusCode.UNAUTHENTICATED, "expired: gone")
    assert refusal_status(PolicyDenied("no")) == RefusalStatus(grpc.StatusCode.PERMISSION_DENIED, "policy_denied: no")
    status = refusal_status(TokenReviewUnavailable("http://10.0.0.1 said 500", retry_after=3))
    assert status.code == grpc.StatusCode.UNAVAILABLE and "10.0.0.1" not in status.details
    assert status.trailing_metadata == (("grpc-retry-pushback-ms", "3000"),)
    assert isinstance(refusal_status(KeySetUnavailable("x")), grpc.Status)


# -- options: optional, exempt methods, rules --------------------------------------------------------------------


def test_optional_lets_calls_without_a_token_through_anonymously(
    issuer: FakeIssuer, serve: Callable[..., grpc.Channel], caplog: pytest.LogCaptureFixture,
) -> None:
    capture(caplog)
    channel = serve(static_verifier(issuer), optional=True, rules={"/test.Echo/Stream*": "payments/*"})
    assert call(channel, "unary_unary")["who"] == "anonymous"
    assert call(channel, "unary_stream", requests=1) == [{"who": "anonymous", "i": 0}]
    assert records(caplog) == []  # an anonymous admission decides nothing
    error = refused(channel, metadata=bearer(bad_tokens(issuer)["expired"][0]))  # a bad token is still refused
    assert error.details().startswith("expired: ")
    for kind in ("stream_unary", "stream_stream"):  # methods with rules of their own always need a token
        assert refused(channel, kind).details().startswith("missing_token: ")
        assert call(channel, kind, metadata=bearer(issuer.mint("payments", "worker")))


def test_health_methods_are_exempt_by_default(issuer: FakeIssuer, serve: Callable[..., grpc.Channel],
                                              caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    channel = serve(static_verifier(issuer))
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="")
    assert stub.Check(request, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    watch = stub.Watch(request, timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    assert records(caplog) == []
    assert K8sJWTAuthInterceptor(static_verifier(issuer)).exempt_methods == HEALTH_METHODS == (
        "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch")


def test_without_exempt_methods_health_needs_a_token(issuer: FakeIssuer, serve: Callable[..., grpc.Channel]) -> None:
    channel = serve(static_verifier(issuer), exempt_methods=())
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="")
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    metadata = bearer(issuer.mint("payments", "worker"))
    assert stub.Check(request, metadata=metadata, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    watch = stub.Watch(request, metadata=metadata, timeout=10)  # a non-blocking behaviour, wrapped as such
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


def test_exempt_methods_take_globs(issuer: FakeIssuer, serve: Callable[..., grpc.Channel]) -> None:
    channel = serve(static_verifier(issuer), exempt_methods=["/test.Echo/Unary*"])
    assert call(channel, "unary_unary")["who"] == "anonymous"
    assert refused(channel, "stream_unary").code() == grpc.StatusCode.UNAUTHENTICATED


def test_rules_decide_per_method(issuer: FakeIssuer, serve: Callable[..., grpc.Channel],
                                 caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)
    channel = serve(static_verifier(issuer, allow=["orders/*"]), rules={
        "/test.Echo/UnaryUnary": "payments/worker",           # exact: beats the globs below
        "/test.Echo/Unary*": ["payments/*", "!payments/worker"],
        "/test.Echo/*": Policy([Rule(namespace="payments")]),
    })
    worker, batch, orders = (bearer(issuer.mint(*who)) for who in
                             (("payments", "worker"), ("payments", "batch"), ("orders", "api")))
    assert call(channel, "unary_unary", metadata=worker)["who"] == PAYMENTS
    assert refused(channel, "unary_unary", metadata=batch).code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused(channel, "unary_unary", metadata=orders).code() == grpc.StatusCode.PERMISSION_DENIED  # replaced
    assert refused(channel, "unary_stream", metadata=worker).details().endswith("(denied by rule !payments/worker)")
    assert call(channel, "unary_stream", metadata=batch, requests=1)
    assert call(channel, "stream_stream", metadata=worker, requests=1)
    assert refused(channel, "stream_stream", metadata=orders).code() == grpc.StatusCode.PERMISSION_DENIED
    assert [(r["decision"], r["rule"], r["path"]) for r in audit_dicts(caplog)] == [
        ("allowed", "payments/worker", "/test.Echo/UnaryUnary"),
        ("denied_policy", None, "/test.Echo/UnaryUnary"),
        ("denied_policy", None, "/test.Echo/UnaryUnary"),
        ("denied_policy", "!payments/worker", "/test.Echo/UnaryStream"),
        ("allowed", "payments/*", "/test.Echo/UnaryStream"),
        ("allowed", "payments/*", "/test.Echo/StreamStream"),
        ("denied_policy", None, "/test.Echo/StreamStream"),
    ]


def test_the_policy_model_table(issuer: FakeIssuer, serve: Callable[..., grpc.Channel]) -> None:
    """docs/policy-model.md, section gRPC: a method's own rules replace the service policy, for that method."""
    channel = serve(static_verifier(issuer, allow=["orders/*"]),
                    rules={method("unary_unary"): ["payments/*", "!payments/batch"]})
    table = {("payments", "worker"): ("OK", "PERMISSION_DENIED"), ("payments", "batch"): ("PERMISSION_DENIED",) * 2,
             ("orders", "api"): ("PERMISSION_DENIED", "OK")}
    for caller, expected in table.items():
        seen = []
        for kind in ("unary_unary", "stream_stream"):  # the method with rules, another one
            try:
                call(channel, kind, metadata=bearer(issuer.mint(*caller)), requests=1)
                seen.append("OK")
            except grpc.RpcError as error:
                seen.append(error.code().name)
        assert tuple(seen) == expected, caller


def test_rules_precedence(issuer: FakeIssuer) -> None:
    interceptor = K8sJWTAuthInterceptor(static_verifier(issuer, allow=["svc/*"]), rules={
        "/*": "any/*",
        "/pkg.*": "pkg/*",
        "/pkg.Payments/*": "payments/*",
        "/pkg.Payments/Get*": "getters/*",
        "/pkg.Payments/*Item": "items/*",     # the same literal start as /pkg.Payments/*, more literal characters
        "/pkg.Payments/GetItem": "exact/*",
        "/pkg.?ayments/List": "list/*",
    })

    def rule(name: str) -> str:
        policy = interceptor.policy_for(name)
        assert policy is not None
        return ",".join(str(r) for r in policy.rules)

    assert rule("/pkg.Payments/GetItem") == "exact/*"
    assert rule("/pkg.Payments/GetOther") == "getters/*"
    assert rule("/pkg.Payments/PutItem") == "items/*"
    assert rule("/pkg.Payments/Put") == "payments/*"
    assert rule("/pkg.Payments/List") == "payments/*"       # literal start /pkg.Payments/ beats /pkg.
    assert rule("/pkg.Xayments/List") == "list/*"
    assert rule("/pkg.Orders/List") == "pkg/*"
    assert rule("/other.Svc/Call") == "any/*"
    assert interceptor.policy_for("/grpc.health.v1.Health/Check") is None  # exempt beats /*
    bare = K8sJWTAuthInterceptor(static_verifier(issuer, allow=["svc/*"]))
    assert bare.policy_for("/pkg.Payments/Get") is bare.policy == bare.verifier.policy


@pytest.mark.parametrize(("options", "message"), [
    ({"rules": {"pkg.Svc/Method": "a/b"}}, "can never match a gRPC method"),
    ({"rules": {"/pkg.Svc/Method ": "a/b"}}, "can never match a gRPC method"),
    ({"rules": {"/pkg.Svc": "a/b"}}, "is not a full method name"),
    ({"rules": {"/pkg.Svc/": "a/b"}}, "is not a full method name"),
    ({"rules": {"/pkg.Svc/a/b": "a/b"}}, "is not a full method name"),
    ({"rules": {"/pkg/Svc/*": "a/b"}}, "exactly two '/'"),
    ({"rules": {b"/pkg.Svc/M": "a/b"}}, "is not a method name"),
    ({"rules": {"/pkg.Svc/M": ""}}, "no rule given; '*/*' allows every verified workload"),
    ({"rules": {"/pkg.Svc/M": []}}, "no rule given"),
    ({"rules": {"/pkg.Svc/M": Policy(())}}, "no rule given"),
    ({"rules": {"/pkg.Svc/M": "Payments/*"}}, "rules['/pkg.Svc/M']: policy rule 'Payments/*'"),
    ({"rules": {"/pkg.Svc/M": "payments"}}, "is not NAMESPACE/SERVICEACCOUNT"),
    ({"rules": {"/pkg.Svc/M": 42}}, "not int"),
    ({"rules": [("/pkg.Svc/M", "a/b")]}, "rules must be a mapping"),
    ({"rules": {"/pkg.Svc/*Item": "a/b", "/pkg.Svc/*List": "c/d"}}, "are equally specific"),
    ({"rules": {"/grpc.health.v1.Health/Check": "a/b"}}, "the method is also exempt"),
    ({"exempt_methods": "/grpc.health.v1.Health/Check"}, "must be a list of method names"),
    ({"exempt_methods": ["healthz"]}, "exempt_methods: 'healthz' can never match"),
    ({"optional": "maybe"}, "expected True or False"),
])
def test_invalid_settings_are_refused_at_construction(issuer: FakeIssuer, options: dict[str, Any],
                                                      message: str) -> None:
    for cls in (K8sJWTAuthInterceptor, AioK8sJWTAuthInterceptor):
        with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace("[", r"\[").replace(
                "*", r"\*").replace("?", r"\?")):
            cls(static_verifier(issuer), **options)


def test_globs_with_different_starts_never_tie(issuer: FakeIssuer) -> None:
    interceptor = K8sJWTAuthInterceptor(static_verifier(issuer), rules={"/a.A/*": "a/*", "/b.B/*": "b/*"})
    assert [str(r) for r in interceptor.policy_for("/b.B/X").rules] == ["b/*"]  # type: ignore[union-attr]


def test_the_default_verifier_comes_from_the_environment(issuer: FakeIssuer, serve: Callable[..., grpc.Channel],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K8S_JWT_AUTH_ISSUER", issuer.issuer)
    monkeypatch.setenv("K8S_JWT_AUTH_AUDIENCES", "grpc-api")
    monkeypatch.setenv("K8S_JWT_AUTH_JWKS_URI", issuer.jwks_uri)
    monkeypatch.setenv("K8S_JWT_AUTH_ALLOW", "payments/*")
    channel = serve(None)
    assert call(channel, "unary_unary", metadata=bearer(issuer.mint("payments", "worker", audiences="grpc-api")))
    assert refused(channel, metadata=bearer(issuer.mint("orders", "api", audiences="grpc-api"))).code() == \
        grpc.StatusCode.PERMISSION_DENIED
    monkeypatch.delenv("K8S_JWT_AUTH_ISSUER")
    with pytest.raises(ConfigurationError, match="ISSUER"):
        K8sJWTAuthInterceptor()


def test_an_unknown_method_is_unimplemented_only_once_admitted(
    issuer: FakeIssuer, serve: Callable[..., grpc.Channel], caplog: pytest.LogCaptureFixture,
) -> None:
    capture(caplog)
    channel = serve(static_verifier(issuer))
    for kind in ("unary_unary", "stream_stream"):
        assert refused(channel, kind, name="/test.Echo/Nope").code() == grpc.StatusCode.UNAUTHENTICATED
        error = refused(channel, kind, name="/test.Echo/Nope", metadata=bearer(issuer.mint("payments", "worker")))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert [r[0] for r in records(caplog)] == ["rejected_token", "allowed"] * 2


# -- any metadata: one of our three statuses, never another exception -------------------------------------------


class _Aborted(Exception):
    pass


class _StubContext:
    """A servicer context as the interceptors use it (the metadata; abort raises), for calls without a network."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata
        self.status: Any = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def abort_with_status(self, status: Any) -> None:
        self.status = status
        raise _Aborted

    async def abort(self, code: Any, details: str = "", trailing_metadata: Any = ()) -> None:
        self.status = RefusalStatus(code, details, trailing_metadata)
        raise _Aborted


class _Details:
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method, self.invocation_metadata = "/test.Echo/UnaryUnary", metadata


@pytest.fixture(scope="module")
def fuzz_interceptors(k8s_issuer_session: FakeIssuer) -> tuple[K8sJWTAuthInterceptor, AioK8sJWTAuthInterceptor]:
    verifier = static_verifier(k8s_issuer_session)
    return K8sJWTAuthInterceptor(verifier), AioK8sJWTAuthInterceptor(verifier)


REASONS = {"missing_token", "malformed", "too_large", "disallowed_algorithm", "unsupported_critical_header",
           "unknown_key", "bad_signature", "bad_issuer", "bad_audience", "missing_claim", "expired", "not_yet_valid",
           "issued_in_future", "too_old", "claim_mismatch", "legacy_token", "not_pod_bound"}


@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.one_of(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80),
                                 st.text(max_size=40).map(lambda t: f"Bearer {t}"),
                                 st.lists(st.text(alphabet="abcXYZ-_019", min_size=1, max_size=30), min_size=1,
                                          max_size=5).map(lambda parts: "Bearer " + ".".join(parts))),
                       max_size=3))
def test_any_authorization_metadata_is_refused_with_a_reason(
    fuzz_interceptors: tuple[K8sJWTAuthInterceptor, AioK8sJWTAuthInterceptor], values: list[str],
) -> None:
    """Whatever a client sends as `authorization` (none, one or several values): UNAUTHENTICATED with a reason,
    through the sync wrapper and the aio interceptor alike; never a handler run, never another exception."""
    sync, aio = fuzz_interceptors
    metadata = tuple(("authorization", value) for value in values)
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: pytest.fail("the handler ran"))
    context = _StubContext(metadata)
    with pytest.raises(_Aborted):
        sync.intercept_service(lambda details: handler, _Details(metadata)).unary_unary(b"", context)  # type: ignore[arg-type,union-attr]

    async def aio_call() -> Any:
        refusal = await aio.intercept_service(_async_return(handler), _Details(metadata))  # type: ignore[arg-type]
        assert refusal is not None and refusal.request_streaming and refusal.response_streaming
        aio_context = _StubContext(metadata)
        with pytest.raises(_Aborted):
            await refusal.stream_stream(iter(()), aio_context)  # type: ignore[misc]
        return aio_context.status

    for status in (context.status, asyncio.run(aio_call())):
        assert status.code == grpc.StatusCode.UNAUTHENTICATED
        assert status.details.partition(": ")[0] in REASONS


def _async_return(handler: Any) -> Callable[[Any], Any]:
    async def continuation(details: Any) -> Any:
        return handler

    return continuation


def test_the_method_memo_stays_bounded(issuer: FakeIssuer) -> None:
    """A client sending ever new method names cannot grow the interceptor's per-method memo without bound."""
    interceptor = K8sJWTAuthInterceptor(static_verifier(issuer), rules={"/a.B/*": "a/*"})
    for i in range(10_000):
        interceptor.policy_for(f"/a.B/M{i}")
    assert len(interceptor._methods) <= 4096


# -- where the check runs: never on the sync server's dispatch thread, never blocking the loop ----------------


def test_a_slow_key_fetch_blocks_only_its_own_call(issuer: FakeIssuer, serve: Callable[..., grpc.Channel]) -> None:
    """First sight of a token with remote keys fetches the JWKS; while that fetch hangs, other calls go on.

    A sync server calls `intercept_service` on its single dispatch thread: a fetch there would stall every call.
    """
    verifier = TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences=["test"], jwks_uri=issuer.jwks_uri))
    channel = serve(verifier)
    issuer.fail("slow", endpoint="jwks", delay=2.0)
    outcome: dict[str, Any] = {}

    def slow_call() -> None:
        outcome["who"] = call(channel, "unary_unary", metadata=bearer(issuer.mint("payments", "worker")))["who"]

    thread = threading.Thread(target=slow_call)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while issuer.jwks_fetches == 0 and time.monotonic() < deadline:  # the slow fetch has started
            time.sleep(0.01)
        start = time.monotonic()
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        assert refused(channel).code() == grpc.StatusCode.UNAUTHENTICATED  # checked, and answered, meanwhile
        assert time.monotonic() - start < 1.0
        assert thread.is_alive()
    finally:
        issuer.fail(None)
        thread.join(10)
    assert outcome == {"who": PAYMENTS}


def test_logs_never_hold_the_token(issuer: FakeIssuer, serve: Callable[..., grpc.Channel],
                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    channel = serve(static_verifier(issuer, allow=["payments/*"]))
    tokens = [issuer.mint("payments", "worker"), issuer.mint("orders", "api"),
              *(token for token, _ in bad_tokens(issuer).values())]
    for token in tokens:
        try:
            call(channel, "unary_stream", metadata=bearer(token), requests=1)
        except grpc.RpcError as error:
            assert token not in error.details()
    for token in tokens:
        assert token not in caplog.text
        assert leaks(caplog, token) == []


def test_each_interceptor_on_the_wrong_kind_of_server_fails_closed_and_loudly(
    issuer: FakeIssuer, caplog: pytest.LogCaptureFixture,
) -> None:
    """grpc.server() does not check its interceptors' type: the aio one answers UNKNOWN, with our message in
    grpc's log, and the server goes on serving (a coroutine handed back as a handler would kill its serving thread,
    every later call hanging until its deadline). grpc.aio.server() refuses the sync one itself."""
    with serve_sync([AioK8sJWTAuthInterceptor(static_verifier(issuer))], sync_handlers()) as target, \
            grpc.insecure_channel(target) as channel:
        for _ in range(2):
            assert refused(channel, metadata=bearer(issuer.mint("payments", "worker"))).code() == \
                grpc.StatusCode.UNKNOWN
    assert "give grpc.server() K8sJWTAuthInterceptor" in caplog.text

    async def aio_server() -> None:
        grpc.aio.server(interceptors=[K8sJWTAuthInterceptor(static_verifier(issuer))])

    with pytest.raises(ValueError, match="Interceptor must be ServerInterceptor"):
        asyncio.run(aio_server())


def test_the_interceptor_repr_holds_no_secret(issuer: FakeIssuer) -> None:
    text = repr(AioK8sJWTAuthInterceptor(static_verifier(issuer, allow=["a/*"]), rules={"/a.B/C": "x/y"}))
    assert text.startswith("AioK8sJWTAuthInterceptor(policy=Policy(['a/*']") and "rules=1" in text


# -- the docs' testing recipe ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_the_docs_testing_recipe_passes(tmp_path: Path) -> None:
    """docs/grpc.md's `# test_grpc_service.py` block, run as a user's test module (the k8s_issuer fixture from the
    installed plugin, warnings as errors)."""
    page = (REPO / "docs" / "grpc.md").read_text(encoding="utf-8")
    (code,) = [block for block in re.findall(r"^```python\n(.*?)^```", page, re.S | re.M)
               if block.startswith("# test_grpc_service.py\n")]
    (tmp_path / "test_grpc_service.py").write_text(code, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider -p no:randomly\n"
                                         "filterwarnings = error\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("K8S_JWT_AUTH_", "PYTEST_"))}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"^4 passed in", proc.stdout, re.M), proc.stdout[-2000:]


# -- the benchmark's smoke run -----------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_bench_quick_run_measures_both_servers() -> None:
    """bench/grpc.py --quick: every mode answered OK before it was timed (< 5 s)."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "grpc.py"), "--quick"], capture_output=True,
                          text=True, timeout=30, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for server in ("sync", "aio"):
        assert summary[server]["bare_us"] > 0 and summary[server]["ours_us"] > 0
        assert summary[server]["bare_calls_per_s"] > 0 and summary[server]["ours_calls_per_s"] > 0
    assert time.monotonic() - started < 15
