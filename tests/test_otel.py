"""OpenTelemetry spans (`k8s_jwt_auth.otel.Tracing`) recorded by the SDK's in-memory exporter.

Each test passes its own `TracerProvider` to `Tracing`: the global provider is never set, so nothing leaks
into other tests. Keys come from the fake issuer over HTTP, TokenReview from its fake API server.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from k8s_jwt_auth import (
    InvalidToken,
    KeySetUnavailable,
    RemoteKeySource,
    TokenReviewer,
    TokenReviewUnavailable,
    TokenVerifier,
    VerifierConfig,
)
from k8s_jwt_auth.metrics import Metrics
from k8s_jwt_auth.otel import (
    INSTRUMENTATION_NAME,
    SPAN_JWKS_FETCH,
    SPAN_TOKENREVIEW,
    SPAN_VERIFY,
    FetchEvent,
    Observers,
    ReviewEvent,
    Tracing,
    VerifyEvent,
    _safe_url,
)
from k8s_jwt_auth.testing import FakeClock, FakeIssuer

from ._asgi import TestClient, bad_tokens, bearer, static_verifier
from ._stores import MemoryStore


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def tracing(provider: TracerProvider) -> Tracing:
    return Tracing(provider)


@pytest.fixture
def reviewer(issuer: FakeIssuer, tmp_path: Path) -> Iterator[TokenReviewer]:
    """A TokenReviewer against the fake API server (it wants a bearer token: ours is in a file)."""
    own = tmp_path / "token"
    own.write_text("reviewer-own-token\n")
    reviewer = TokenReviewer(issuer.url, audiences=["test"], token_file=str(own), timeout=1.0)
    yield reviewer
    reviewer.close()


def spans(exporter: InMemorySpanExporter, name: str | None = None) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if name is None or s.name == name]


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def remote_verifier(issuer: FakeIssuer, observer: Any, **overrides: Any) -> TokenVerifier:
    """Keys fetched from the fake issuer (discovery, then JWKS)."""
    return TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences=["test"], **overrides), observer=observer)


def assert_no_secret(exporter: InMemorySpanExporter, *secrets: str) -> None:
    """No span carries any of `secrets` in its name, attributes, events, links or status."""
    for span in exporter.get_finished_spans():
        texts = [span.name, repr(span.attributes), span.status.description or ""]
        texts += [e.name + repr(e.attributes) for e in span.events]
        texts += [repr(link.attributes) for link in span.links]
        for secret in secrets:
            assert not any(secret in text for text in texts), (span.name, secret[:8])


# -- verification --------------------------------------------------------------------------------------


def test_valid_then_cached_verification_spans(issuer: FakeIssuer, tracing: Tracing,
                                               exporter: InMemorySpanExporter) -> None:
    verifier = TokenVerifier(static_verifier(issuer, cluster="prod-eu").config, observer=tracing)
    token = issuer.mint("payments", "api", pod="api-1", node="node-1")
    identity = verifier.verify(token)
    assert verifier.verify(token) is identity
    first, second = spans(exporter)
    workload = {"k8s.namespace.name": "payments", "k8s_jwt_auth.service_account": "api",
                "k8s.pod.name": "api-1", "k8s.pod.uid": identity.pod_uid, "k8s.node.name": "node-1",
                "k8s.cluster.name": "prod-eu", "k8s_jwt_auth.reviewed": False, "k8s_jwt_auth.stale": False}
    assert attributes(first) == {"k8s_jwt_auth.outcome": "valid", "k8s_jwt_auth.reason": "ok",
                                 "k8s_jwt_auth.cache": "miss", **workload}
    assert attributes(second) == {**attributes(first), "k8s_jwt_auth.cache": "hit"}
    for span in (first, second):
        assert (span.name, span.kind, span.status.status_code) == (SPAN_VERIFY, SpanKind.INTERNAL, StatusCode.UNSET)
        assert span.instrumentation_scope is not None and span.instrumentation_scope.name == INSTRUMENTATION_NAME
        assert span.parent is None  # no current span: a root span
        assert span.start_time is not None and span.end_time is not None
        assert 0 <= span.end_time - span.start_time < 5e9
    assert first.end_time is not None and second.start_time is not None and first.end_time <= second.start_time
    assert_no_secret(exporter, token, identity.token_fingerprint)


def test_a_token_without_pod_binding_and_a_disabled_cache(issuer: FakeIssuer, tracing: Tracing,
                                                          exporter: InMemorySpanExporter) -> None:
    verifier = TokenVerifier(static_verifier(issuer, token_cache_size=0).config, observer=tracing)
    asyncio.run(verifier.verify_async(issuer.mint("payments", "batch")))
    (span,) = spans(exporter)
    assert attributes(span) == {"k8s_jwt_auth.outcome": "valid", "k8s_jwt_auth.reason": "ok",
                                "k8s_jwt_auth.cache": "disabled", "k8s.namespace.name": "payments",
                                "k8s_jwt_auth.service_account": "batch", "k8s_jwt_auth.reviewed": False,
                                "k8s_jwt_auth.stale": False}


def test_refused_tokens_record_the_reason_and_no_workload(issuer: FakeIssuer, tracing: Tracing,
                                                          exporter: InMemorySpanExporter) -> None:
    verifier = TokenVerifier(static_verifier(issuer).config, observer=tracing)
    cases = bad_tokens(issuer)
    for token, reason in cases.values():
        with pytest.raises(InvalidToken) as info:
            verifier.verify(token)
        assert info.value.reason == reason
    recorded = spans(exporter, SPAN_VERIFY)
    assert [attributes(s) for s in recorded] == [
        {"k8s_jwt_auth.outcome": "invalid", "k8s_jwt_auth.reason": reason, "k8s_jwt_auth.cache": "miss"}
        for _, reason in cases.values()]
    # the caller sent a bad token: not an error of the verification
    assert {s.status.status_code for s in recorded} == {StatusCode.UNSET}
    assert_no_secret(exporter, *(token for token, _ in cases.values()))


def test_unavailable_keys_are_an_error_with_a_failed_fetch_span(issuer: FakeIssuer, tracing: Tracing,
                                                                exporter: InMemorySpanExporter) -> None:
    issuer.fail("error")
    token = issuer.mint()
    with pytest.raises(KeySetUnavailable):
        remote_verifier(issuer, tracing).verify(token)
    fetch, verify = spans(exporter)  # the fetch ended first
    assert (fetch.name, verify.name) == (SPAN_JWKS_FETCH, SPAN_VERIFY)
    assert attributes(verify) == {"k8s_jwt_auth.outcome": "unavailable", "k8s_jwt_auth.reason": "keys_unavailable",
                                  "k8s_jwt_auth.cache": "miss", "error.type": "keys_unavailable"}
    assert (verify.status.status_code, verify.status.description) == (StatusCode.ERROR, "keys_unavailable")
    assert attributes(fetch) == {"k8s_jwt_auth.outcome": "http_status", "k8s_jwt_auth.issuer": issuer.issuer,
                                 "url.full": issuer.url + "/.well-known/openid-configuration",
                                 "http.response.status_code": 500, "error.type": "http_status"}
    assert (fetch.status.status_code, fetch.status.description) == (StatusCode.ERROR, "http_status")
    # the fetch happened inside the verification
    assert verify.start_time is not None and fetch.start_time is not None and verify.end_time is not None
    assert fetch.end_time is not None and verify.start_time <= fetch.start_time <= fetch.end_time <= verify.end_time


# -- key fetches ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_successful_fetch_span(issuer: FakeIssuer, tracing: Tracing, exporter: InMemorySpanExporter,
                                 mode: str) -> None:
    verifier = remote_verifier(issuer, tracing)
    token = issuer.mint()
    identity = verifier.verify(token) if mode == "sync" else asyncio.run(verifier.verify_async(token))
    (fetch,) = spans(exporter, SPAN_JWKS_FETCH)
    assert attributes(fetch) == {"k8s_jwt_auth.outcome": "success", "k8s_jwt_auth.issuer": issuer.issuer,
                                 "url.full": issuer.jwks_uri, "k8s_jwt_auth.key_count": 1,
                                 "k8s_jwt_auth.shared": False}
    assert fetch.status.status_code is StatusCode.UNSET
    assert fetch.start_time is not None and fetch.end_time is not None and fetch.end_time > fetch.start_time
    assert issuer.jwks_fetches == 1
    assert_no_secret(exporter, token, identity.token_fingerprint)


def test_a_timed_out_fetch_and_a_key_set_from_the_shared_store(issuer: FakeIssuer, tracing: Tracing,
                                                              exporter: InMemorySpanExporter) -> None:
    store = MemoryStore(time.time)
    first = RemoteKeySource(issuer.issuer, timeout=0.3, shared=store, observer=tracing)
    issuer.fail("slow", delay=2)
    with pytest.raises(KeySetUnavailable):
        first.refresh()
    issuer.fail(None)
    first.refresh()
    RemoteKeySource(issuer.issuer, shared=store, observer=tracing).refresh()  # another process: from the store
    timed_out, fetched, shared = spans(exporter, SPAN_JWKS_FETCH)
    assert attributes(timed_out)["error.type"] == attributes(timed_out)["k8s_jwt_auth.outcome"] == "timeout"
    assert timed_out.status.status_code is StatusCode.ERROR
    assert timed_out.start_time is not None and timed_out.end_time is not None
    assert timed_out.end_time - timed_out.start_time >= 0.25e9  # the real duration, not the time of the report
    assert (attributes(fetched)["k8s_jwt_auth.shared"], attributes(shared)["k8s_jwt_auth.shared"]) == (False, True)
    assert issuer.jwks_fetches == 1


def test_url_credentials_are_redacted() -> None:
    assert _safe_url("https://user:secret@issuer.test:8443/jwks?x=1") == \
        "https://REDACTED:REDACTED@issuer.test:8443/jwks?x=1"
    assert _safe_url("https://issuer.test/a@b") == "https://issuer.test/a@b"
    assert _safe_url(None) is None


def test_the_fetch_span_of_an_observer_given_to_the_key_source_directly(issuer: FakeIssuer, tracing: Tracing,
                                                                        exporter: InMemorySpanExporter) -> None:
    keys = RemoteKeySource(issuer.issuer, observer=tracing)
    verifier = TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences=["test"]), keys=keys)
    verifier.verify(issuer.mint())
    assert [s.name for s in spans(exporter)] == [SPAN_JWKS_FETCH]  # the verifier itself has no observer


# -- TokenReview ---------------------------------------------------------------------------------------


def test_tokenreview_spans_requested_then_cached(issuer: FakeIssuer, tracing: Tracing, reviewer: TokenReviewer,
                                                 exporter: InMemorySpanExporter) -> None:
    verifier = TokenVerifier(static_verifier(issuer).config, reviewer=reviewer, observer=tracing)
    assert reviewer.observer is tracing
    token = issuer.mint("payments", "api", audiences="test", pod="api-1")
    identity = verifier.verify(token)
    assert verifier.verify(token) is identity and identity.reviewed
    asked, verified, cached, verified_again = spans(exporter)
    assert [s.name for s in (asked, cached)] == [SPAN_TOKENREVIEW] * 2
    assert attributes(asked) == {"k8s_jwt_auth.outcome": "valid", "k8s_jwt_auth.reason": "ok",
                                 "k8s_jwt_auth.cache": "miss", "k8s_jwt_auth.requested": True,
                                 "k8s_jwt_auth.fallback": False, "url.full": issuer.url + "/apis/authentication.k8s.io"
                                 "/v1/tokenreviews"}
    assert attributes(cached) == {"k8s_jwt_auth.outcome": "valid", "k8s_jwt_auth.reason": "ok",
                                  "k8s_jwt_auth.cache": "hit", "k8s_jwt_auth.requested": False,
                                  "k8s_jwt_auth.fallback": False}
    assert attributes(verified)["k8s_jwt_auth.reviewed"] is True
    assert (attributes(verified)["k8s_jwt_auth.cache"], attributes(verified_again)["k8s_jwt_auth.cache"]) == \
        ("miss", "hit")
    assert issuer.tokenreviews == 1
    assert_no_secret(exporter, token, identity.token_fingerprint, "reviewer-own-token")


def test_a_revoked_token(issuer: FakeIssuer, tracing: Tracing, reviewer: TokenReviewer,
                         exporter: InMemorySpanExporter) -> None:
    issuer.review_cache_ttl = 0
    verifier = TokenVerifier(static_verifier(issuer).config, reviewer=reviewer, observer=tracing)
    token = issuer.mint("payments", "api", audiences="test")
    issuer.delete_service_account("payments", "api")
    with pytest.raises(InvalidToken):
        asyncio.run(verifier.verify_async(token))
    review, verify = spans(exporter)
    assert attributes(review) == {"k8s_jwt_auth.outcome": "invalid", "k8s_jwt_auth.reason": "token_revoked",
                                  "k8s_jwt_auth.cache": "miss", "k8s_jwt_auth.requested": True,
                                  "k8s_jwt_auth.fallback": False, "url.full": reviewer.review_url}
    assert attributes(verify) == {"k8s_jwt_auth.outcome": "invalid", "k8s_jwt_auth.reason": "token_revoked",
                                  "k8s_jwt_auth.cache": "miss"}  # nothing about a refused workload
    assert {review.status.status_code, verify.status.status_code} == {StatusCode.UNSET}
    assert_no_secret(exporter, token)


def test_an_unavailable_api_server_then_backing_off(issuer: FakeIssuer, tracing: Tracing, reviewer: TokenReviewer,
                                                    exporter: InMemorySpanExporter) -> None:
    verifier = TokenVerifier(static_verifier(issuer).config, reviewer=reviewer, observer=tracing)
    issuer.fail("error", endpoint="tokenreview")
    token = issuer.mint("payments", "api", audiences="test")
    for _ in range(2):
        with pytest.raises(TokenReviewUnavailable):
            verifier.verify(token)
    failed, verify, backing_off, _ = spans(exporter)
    unavailable = {"k8s_jwt_auth.outcome": "unavailable", "k8s_jwt_auth.reason": "review_unavailable",
                   "k8s_jwt_auth.fallback": False, "error.type": "review_unavailable"}
    assert attributes(failed) == {**unavailable, "k8s_jwt_auth.cache": "miss", "k8s_jwt_auth.requested": True,
                                  "url.full": reviewer.review_url}
    assert attributes(backing_off) == {**unavailable, "k8s_jwt_auth.cache": "miss", "k8s_jwt_auth.requested": False}
    assert attributes(verify)["error.type"] == "review_unavailable"
    assert {s.status.status_code for s in (failed, verify, backing_off)} == {StatusCode.ERROR}
    assert issuer.tokenreviews == 1


def test_a_fallback_to_the_local_identity(issuer: FakeIssuer, tracing: Tracing, tmp_path: Path,
                                          exporter: InMemorySpanExporter) -> None:
    (tmp_path / "token").write_text("own")
    reviewer = TokenReviewer(issuer.url, audiences=["test"], token_file=str(tmp_path / "token"), cache_ttl=0,
                             fallback_to_local=True, timeout=1.0)
    verifier = TokenVerifier(static_verifier(issuer).config, reviewer=reviewer, observer=tracing)
    issuer.fail("error", endpoint="tokenreview")
    assert not verifier.verify(issuer.mint("payments", "api", audiences="test")).reviewed
    reviewer.close()
    review, verify = spans(exporter)
    assert attributes(review) == {"k8s_jwt_auth.outcome": "unavailable", "k8s_jwt_auth.reason": "review_unavailable",
                                  "k8s_jwt_auth.cache": "disabled", "k8s_jwt_auth.requested": True,
                                  "k8s_jwt_auth.fallback": True, "url.full": reviewer.review_url,
                                  "error.type": "review_unavailable"}
    assert review.status.status_code is StatusCode.ERROR
    assert (attributes(verify)["k8s_jwt_auth.outcome"], attributes(verify)["k8s_jwt_auth.reviewed"]) == ("valid", False)
    assert verify.status.status_code is StatusCode.UNSET


# -- the request's span is the parent ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_spans_are_children_of_the_current_span(issuer: FakeIssuer, provider: TracerProvider, tracing: Tracing,
                                                reviewer: TokenReviewer, exporter: InMemorySpanExporter,
                                                mode: str) -> None:
    verifier = TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences=["test"]), reviewer=reviewer,
                             observer=tracing)
    token = issuer.mint("payments", "api", audiences="test")
    with provider.get_tracer("a web framework").start_as_current_span("GET /orders") as request:
        if mode == "sync":
            verifier.verify(token)
        else:
            asyncio.run(verifier.verify_async(token))
    *ours, parent = spans(exporter)
    assert parent.name == "GET /orders" and parent.context is not None
    assert sorted(s.name for s in ours) == sorted([SPAN_JWKS_FETCH, SPAN_TOKENREVIEW, SPAN_VERIFY])
    for span in ours:
        assert span.parent is not None and span.context is not None
        assert (span.parent.span_id, span.context.trace_id) == (parent.context.span_id, parent.context.trace_id)
        assert parent.start_time is not None and parent.end_time is not None
        assert span.start_time is not None and span.end_time is not None
        assert parent.start_time <= span.start_time <= span.end_time <= parent.end_time
    assert request.get_span_context().span_id == parent.context.span_id


def test_a_background_refresh_is_a_root_span(issuer: FakeIssuer, provider: TracerProvider, tracing: Tracing,
                                             exporter: InMemorySpanExporter) -> None:
    clock = FakeClock(1000.0)
    keys = RemoteKeySource(issuer.issuer, observer=tracing, clock=clock, cache_max_age=600)
    with provider.get_tracer("test").start_as_current_span("request"):
        keys.refresh()  # in this thread: a child of "request"
        clock.advance(0.9 * 600)  # past REFRESH_AHEAD: the next lookup refreshes in a thread of its own
        keys.get(issuer.key.kid, "RS256")
        wait_for(lambda: len(spans(exporter, SPAN_JWKS_FETCH)) == 2)
    inline, background = spans(exporter, SPAN_JWKS_FETCH)
    (request,) = spans(exporter, "request")
    assert inline.parent is not None and request.context is not None
    assert inline.parent.span_id == request.context.span_id
    assert background.parent is None  # no request is waiting for it
    assert attributes(background)["k8s_jwt_auth.outcome"] == "success"
    assert issuer.jwks_fetches == 2


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


class SpanPerRequest:
    """What OpenTelemetry's ASGI middleware does for Starlette/FastAPI: the request runs in a span of its own
    (the instrumentation packages are not installed here; the context handling is the same)."""

    def __init__(self, app: Any, provider: TracerProvider) -> None:
        self.app, self.tracer = app, provider.get_tracer("asgi")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        with self.tracer.start_as_current_span(f"{scope['method']} {scope['path']}"):
            await self.app(scope, receive, send)


def test_under_a_traced_starlette_app(issuer: FakeIssuer, provider: TracerProvider, tracing: Tracing,
                                      exporter: InMemorySpanExporter) -> None:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from k8s_jwt_auth.integrations.starlette import K8sJWTAuthMiddleware

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    verifier = TokenVerifier(static_verifier(issuer).config, observer=tracing)
    app = Starlette(routes=[Route("/", hello)], middleware=[Middleware(SpanPerRequest, provider=provider),
                                                             Middleware(K8sJWTAuthMiddleware, verifier=verifier)])
    with TestClient(app) as client:
        assert client.get("/", headers=bearer(issuer.mint("payments", "api"))).status_code == 200
        assert client.get("/", headers=bearer("not-a-jwt")).status_code == 401
    ok, ok_request, refused, refused_request = spans(exporter)
    for verify, request in ((ok, ok_request), (refused, refused_request)):
        assert (verify.name, request.name) == (SPAN_VERIFY, "GET /")
        assert verify.parent is not None and request.context is not None
        assert verify.parent.span_id == request.context.span_id
    assert (attributes(ok)["k8s.namespace.name"], attributes(refused)["k8s_jwt_auth.reason"]) == \
        ("payments", "malformed")


def test_under_a_traced_flask_app(issuer: FakeIssuer, provider: TracerProvider, tracing: Tracing,
                                  exporter: InMemorySpanExporter) -> None:
    from flask import Flask

    from k8s_jwt_auth.integrations.flask import K8sJWTAuth, get_current_workload

    app = Flask(__name__)
    app.add_url_rule("/", "hello", lambda: get_current_workload().namespace)  # type: ignore[union-attr]
    K8sJWTAuth(app, verifier=TokenVerifier(static_verifier(issuer).config, observer=tracing))
    wsgi_app, tracer = app.wsgi_app, provider.get_tracer("wsgi")

    def traced(environ: Any, start_response: Any) -> Any:  # as OpenTelemetry's WSGI middleware does
        with tracer.start_as_current_span(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}"):
            return wsgi_app(environ, start_response)

    app.wsgi_app = traced  # type: ignore[method-assign]
    assert app.test_client().get("/", headers=bearer(issuer.mint("payments", "api"))).status_code == 200
    verify, request = spans(exporter)
    assert (verify.name, request.name) == (SPAN_VERIFY, "GET /")
    assert verify.parent is not None and request.context is not None
    assert verify.parent.span_id == request.context.span_id


# -- combining observers -------------------------------------------------------------------------------


class Recorder:
    """An observer written for the two base methods only: it must keep receiving exactly those calls."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def on_verify(self, outcome: str, reason: str, seconds: float, cached: bool | None) -> None:
        self.calls.append(("verify", outcome, reason, cached))

    def on_fetch(self, outcome: str) -> None:
        self.calls.append(("fetch", outcome))


class EventRecorder(Recorder):
    """An observer with the optional event methods: it gets events instead of the base calls."""

    def on_verify_event(self, event: VerifyEvent) -> None:
        self.calls.append(event)

    def on_fetch_event(self, event: FetchEvent) -> None:
        self.calls.append(event)

    def on_review_event(self, event: ReviewEvent) -> None:
        self.calls.append(event)


def test_metrics_traces_and_a_plain_observer_together(issuer: FakeIssuer, tracing: Tracing, reviewer: TokenReviewer,
                                                      exporter: InMemorySpanExporter) -> None:
    registry = CollectorRegistry()
    plain, events = Recorder(), EventRecorder()
    combined = Observers(Metrics(registry), Observers(tracing, plain), events)  # nested: flattened
    assert len(combined.observers) == 4
    verifier = TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences=["test"]), reviewer=reviewer,
                             observer=combined)
    token = issuer.mint("payments", "api", audiences="test")
    identity = verifier.verify(token)
    with pytest.raises(InvalidToken):
        verifier.verify("not-a-jwt")
    assert plain.calls == [("fetch", "success"), ("verify", "valid", "ok", False),
                           ("verify", "invalid", "malformed", False)]
    fetched, reviewed, verified, refused = events.calls
    assert isinstance(fetched, FetchEvent) and fetched.outcome == "success" and fetched.url == issuer.jwks_uri
    assert isinstance(reviewed, ReviewEvent) and reviewed.requested and reviewed.outcome == "valid"
    assert isinstance(verified, VerifyEvent) and verified.identity is identity and identity.reviewed
    assert isinstance(refused, VerifyEvent) and (refused.reason, refused.identity) == ("malformed", None)
    assert [s.name for s in spans(exporter)] == [SPAN_JWKS_FETCH, SPAN_TOKENREVIEW, SPAN_VERIFY, SPAN_VERIFY]
    sample = registry.get_sample_value
    assert sample("k8s_jwt_auth_verifications_total", {"outcome": "valid", "reason": "ok"}) == 1
    assert sample("k8s_jwt_auth_verifications_total", {"outcome": "invalid", "reason": "malformed"}) == 1
    assert sample("k8s_jwt_auth_jwks_fetches_total", {"outcome": "success"}) == 1
    assert_no_secret(exporter, token, identity.token_fingerprint)


def test_the_base_methods_of_tracing_and_observers(tracing: Tracing, exporter: InMemorySpanExporter) -> None:
    plain = Recorder()
    both = Observers(tracing, plain)
    both.on_verify("invalid", "expired", 0.001, True)
    both.on_fetch("tls")
    assert plain.calls == [("verify", "invalid", "expired", True), ("fetch", "tls")]
    verify, fetch = spans(exporter)
    assert attributes(verify) == {"k8s_jwt_auth.outcome": "invalid", "k8s_jwt_auth.reason": "expired",
                                  "k8s_jwt_auth.cache": "hit"}
    assert attributes(fetch) == {"k8s_jwt_auth.outcome": "tls", "error.type": "tls"}
    assert verify.start_time is not None and verify.end_time is not None
    assert 0.5e6 < verify.end_time - verify.start_time < 2e6  # 1 ms, in ns


# -- without the package -------------------------------------------------------------------------------


def test_no_op_without_opentelemetry() -> None:
    # opentelemetry is installed here and already imported by this process; a fresh interpreter with
    # sys.modules["opentelemetry"] = None makes `import opentelemetry...` raise ImportError, as without the extra.
    script = textwrap.dedent("""
        import sys
        sys.modules["opentelemetry"] = None
        from k8s_jwt_auth import TokenVerifier, VerifierConfig
        from k8s_jwt_auth.otel import Observers, Tracing
        from k8s_jwt_auth.testing import SigningKey, build_claims, sign
        key = SigningKey.generate("ES256")
        config = VerifierConfig(issuer="https://i.test", audiences=["test"], jwks={"keys": [key.public_jwk()]})
        tracing = Tracing()
        verifier = TokenVerifier(config, observer=Observers(tracing))
        token = sign(key, build_claims(issuer="https://i.test", audiences=("test",)))
        assert verifier.verify(token).namespace == "default"
        assert verifier.verify(token).namespace == "default"
        tracing.on_fetch("timeout")
        tracing.on_verify("invalid", "expired", 0.1, None)
        loaded = [m for m in sys.modules if m.startswith("opentelemetry.")]
        print(tracing.enabled, repr(tracing), loaded)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "Tracing(enabled=False)", "[]"]


def test_the_core_and_the_metrics_do_not_import_opentelemetry() -> None:
    script = ("import sys, k8s_jwt_auth, k8s_jwt_auth.verifier, k8s_jwt_auth.metrics, k8s_jwt_auth.tokenreview; "
              "print(any(m.split('.')[0] == 'opentelemetry' for m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
