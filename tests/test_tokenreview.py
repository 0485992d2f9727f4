"""TokenReview mode against the fake API server on loopback: review counts come from the server.

Time is an injected wall clock shared by the fake API server, the verifier and the reviewer: no test sleeps
past a cache TTL or a backoff. The recorded exchanges in `tests/fixtures/k8s/tokenreview/` are parsed as
they are and served by a canned server to check the mapping of real answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from k8s_jwt_auth import (
    ConfigurationError,
    InvalidToken,
    KeySetUnavailable,
    ServiceUnavailable,
    TokenReviewUnavailable,
    TokenVerifier,
    VerifierConfig,
    WorkloadIdentity,
)
from k8s_jwt_auth._shared import SharedStore
from k8s_jwt_auth.http import error_response
from k8s_jwt_auth.integrations.starlette import K8sJWTAuthMiddleware
from k8s_jwt_auth.testing import FakeClock, FakeIssuer
from k8s_jwt_auth.tokenreview import REVIEW_PATH, TokenReviewer, TokenReviewResult

from ._asgi import TestClient, bearer
from ._stores import MemoryStore
from ._threaded import JsonHandler, handler_server
from .conftest import FIXTURES, NOW
from .test_fuzz import assert_holds_no_token

LOGGER = "k8s_jwt_auth.tokenreview"
RECORDED = FIXTURES / "tokenreview"
INDEX = json.loads((RECORDED / "index.json").read_text())
OWN_TOKEN = "reviewer-own-token"
UNAVAILABLE_MODES = ["down", "slow", "error", "garbage", "oversized", "unauthorized", "forbidden"]


Review = Callable[[TokenReviewer, str, WorkloadIdentity], WorkloadIdentity]


@pytest.fixture(params=["sync", "async"])
def review(request: pytest.FixtureRequest) -> Review:
    """`reviewer.review(...)`, or `review_async(...)` on an event loop of its own."""
    if request.param == "sync":
        return lambda reviewer, token, identity: reviewer.review(token, identity)
    return lambda reviewer, token, identity: asyncio.run(reviewer.review_async(token, identity))


@pytest.fixture
def clock(issuer: FakeIssuer) -> FakeClock:
    """The test clock, also the fake API server's (reset() gives the issuer its own clock back)."""
    shared = FakeClock(NOW)
    issuer.clock = shared
    return shared


@pytest.fixture
def own_token_file(tmp_path: Path) -> str:
    path = tmp_path / "token"
    path.write_text(OWN_TOKEN + "\n")
    return str(path)


@pytest.fixture
def verifier(issuer: FakeIssuer, clock: FakeClock) -> TokenVerifier:
    """Local verification only (static keys), audience "test"."""
    return TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences=["test"], jwks=issuer.jwks()), clock=clock)


@pytest.fixture
def make_reviewer(issuer: FakeIssuer, clock: FakeClock, own_token_file: str) -> Iterator[Callable[..., TokenReviewer]]:
    def factory(**overrides: Any) -> TokenReviewer:
        settings: dict[str, Any] = {"audiences": ["test"], "token_file": own_token_file, "clock": clock}
        settings.update(overrides)
        return TokenReviewer(settings.pop("url", issuer.url), **settings)

    yield factory
    issuer.fail(None)  # release answers held by the slow mode


def pod_token(issuer: FakeIssuer, pod: str = "api-1", **options: Any) -> str:
    return issuer.mint("payments", "api", audiences=options.pop("audiences", "test"), pod=pod, node="node-1",
                       **options)


# -- the recorded answers -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", INDEX, ids=[c["name"] for c in INDEX])
def test_recorded_answers_parse(case: dict[str, Any]) -> None:
    document = json.loads((RECORDED / case["response_file"]).read_text())
    result = TokenReviewResult.from_response(document)
    assert result.authenticated is case["authenticated"]
    assert result.error == case["error"]
    if not case["authenticated"]:
        assert (result.username, result.uid, result.groups, dict(result.extra), result.audiences) == \
            (None, None, (), {}, ())


def test_recorded_pod_bound_answer_has_user_and_pod_extras() -> None:
    result = TokenReviewResult.from_response(json.loads((RECORDED / "tr-02-valid-pod-bound.response.json").read_text()))
    assert result.username == "system:serviceaccount:payments:api"
    assert result.uid == "08edba32-b502-4ab9-9bcf-4a8516605fe2"
    assert result.groups == ("system:serviceaccounts", "system:serviceaccounts:payments", "system:authenticated")
    assert result.audiences == ("payments-api",)
    assert (result.pod_name, result.pod_uid) == ("api-7d9f", "8bbc15ad-cd44-4c94-aab6-1c9a8afd2d47")
    assert (result.node_name, result.node_uid) == ("node-1", "932f1bd4-632b-4097-bde3-f4c9d3a01645")
    assert result.token_id == "d2937de2-4a33-4afa-8d02-c208c442f69c"
    assert result.extra["authentication.kubernetes.io/credential-id"] == ("JTI=d2937de2-4a33-4afa-8d02-c208c442f69c",)
    with pytest.raises(TypeError):
        result.extra["x"] = ("y",)  # type: ignore[index]
    assert TokenReviewResult.from_response({"status": result.to_status()}) == result
    assert hash(result) == hash(TokenReviewResult.from_response({"status": result.to_status()}))


@pytest.mark.parametrize("document", [
    [], "TokenReview", {"kind": "TokenReview"}, {"kind": "Status", "status": {"user": {}}}, {"status": "ok"},
    {"status": {"authenticated": "true", "user": {"username": "u"}}},
    {"status": {"authenticated": True, "user": {}}},
    {"status": {"authenticated": True, "user": {"username": 7}}},
    {"status": {"user": []}},
    {"status": {"user": {"groups": "system:authenticated"}}},
    {"status": {"user": {"groups": [1]}}},
    {"status": {"user": {"extra": ["a"]}}},
    {"status": {"user": {"extra": {"a": "b"}}}},
    {"status": {"user": {}, "audiences": "test"}},
    {"status": {"user": {}, "error": ["x"]}},
], ids=repr)
def test_malformed_documents_are_unavailable(document: object) -> None:
    with pytest.raises(TokenReviewUnavailable) as info:
        TokenReviewResult.from_response(document)
    assert (info.value.status_code, info.value.reason) == (503, "review_unavailable")
    assert isinstance(info.value, ServiceUnavailable) and info.value.retry_after >= 1
    assert not isinstance(info.value, KeySetUnavailable)  # an API-server outage, not the issuer's keys
    assert "API server" in error_response(info.value).body["message"]


# The recorded answers, served by a canned API server, mapped for a matching identity.
RECORDED_OUTCOMES = {"tr-02-valid-pod-bound": None, "tr-04-wrong-aud": "bad_audience",
                     "tr-06-garbage": "token_revoked", "tr-07-bad-signature": "token_revoked",
                     "tr-14b-pod-doomed-after-delete": "token_revoked", "tr-21-expired-past-leeway": "expired"}
RECORDED_IDENTITY = WorkloadIdentity(
    issuer="https://kubernetes.default.svc.cluster.local", subject="system:serviceaccount:payments:api",
    namespace="payments", service_account="api", pod_name="api-7d9f", pod_uid="8bbc15ad-cd44-4c94-aab6-1c9a8afd2d47",
    audiences=("payments-api",), token_id="d2937de2-4a33-4afa-8d02-c208c442f69c",
    expires_at=datetime.fromtimestamp(1795431557, timezone.utc))


class _Canned(JsonHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.reply(*self.server.answer)  # type: ignore[attr-defined]


@contextlib.contextmanager
def canned_server() -> Iterator[tuple[str, Callable[[int, Any], None]]]:
    """A server answering every POST with a set status and JSON document; yields (url, set_answer)."""
    with handler_server(_Canned) as (server, url):

        def set_answer(status: int, document: Any) -> None:
            server.answer = (status, document if isinstance(document, bytes) else json.dumps(document).encode())  # type: ignore[attr-defined]

        set_answer(201, {})
        yield url, set_answer


@pytest.fixture
def canned() -> Iterator[tuple[str, Callable[[int, Any], None]]]:
    with canned_server() as served:
        yield served


@pytest.mark.parametrize("name", RECORDED_OUTCOMES)
def test_recorded_answers_map_to_outcomes(canned: tuple[str, Callable[[int, Any], None]], name: str,
                                          review: Review) -> None:
    url, set_answer = canned
    set_answer(201, json.loads((RECORDED / f"{name}.response.json").read_text()))
    reviewer = TokenReviewer(url, audiences=["payments-api"], clock=lambda: 1795427957.0)
    expected = RECORDED_OUTCOMES[name]
    if expected is None:
        reviewed = review(reviewer, "a.b.c", RECORDED_IDENTITY)
        assert reviewed.reviewed and reviewed == RECORDED_IDENTITY
        assert reviewed.groups == ("system:serviceaccounts", "system:serviceaccounts:payments", "system:authenticated")
        return
    with pytest.raises(InvalidToken) as info:
        review(reviewer, "a.b.c", RECORDED_IDENTITY)
    assert (info.value.status_code, info.value.reason) == (401, expected)
    assert INDEX[[c["name"] for c in INDEX].index(name)]["error"] in info.value.message


def _recorded_success(**user: Any) -> dict[str, Any]:
    document = json.loads((RECORDED / "tr-02-valid-pod-bound.response.json").read_text())
    document["status"]["user"].update(user)
    return document


@pytest.mark.parametrize(("change", "claim"), [
    ({"username": "system:serviceaccount:payments:other"}, "sub"),
    ({"extra": {"authentication.kubernetes.io/pod-uid": ["another-pod-uid"]}}, "kubernetes.io.pod.uid"),
    ({"extra": {"authentication.kubernetes.io/credential-id": ["JTI=another-jti"]}}, "jti"),
])
def test_an_answer_about_another_user_pod_or_credential_is_claim_mismatch(
    canned: tuple[str, Callable[[int, Any], None]], change: dict[str, Any], claim: str, review: Review,
) -> None:
    url, set_answer = canned
    set_answer(201, _recorded_success(**change))
    with pytest.raises(InvalidToken) as info:
        review(TokenReviewer(url, audiences=["payments-api"]), "a.b.c", RECORDED_IDENTITY)
    assert (info.value.reason, info.value.claim) == ("claim_mismatch", claim)


def test_extras_missing_on_either_side_are_not_compared(canned: tuple[str, Callable[[int, Any], None]]) -> None:
    url, set_answer = canned
    set_answer(201, _recorded_success(extra={}))
    reviewer = TokenReviewer(url, audiences=["payments-api"], cache_ttl=0)
    assert reviewer.review("a.b.c", RECORDED_IDENTITY).reviewed
    set_answer(201, _recorded_success())
    unbound = WorkloadIdentity(issuer="x", subject="system:serviceaccount:payments:api", namespace="payments",
                               service_account="api")
    assert reviewer.review("a.b.c", unbound).reviewed


@pytest.mark.parametrize("audiences", [[], ["billing-api"]])
def test_authenticated_for_none_of_our_audiences_is_bad_audience(
    canned: tuple[str, Callable[[int, Any], None]], audiences: list[str],
) -> None:
    url, set_answer = canned
    document = _recorded_success()
    document["status"]["audiences"] = audiences
    set_answer(201, document)
    with pytest.raises(InvalidToken) as info:
        TokenReviewer(url, audiences=["payments-api"]).review("a.b.c", RECORDED_IDENTITY)
    assert (info.value.reason, info.value.claim) == ("bad_audience", "aud")


@pytest.mark.parametrize(("status", "body", "words"), [
    (401, {"kind": "Status", "code": 401}, "token_file"),
    (403, {"kind": "Status", "code": 403, "message": "forbidden"}, "system:auth-delegator"),
    (404, {"kind": "Status", "code": 404}, "tokenreview_url"),
    (302, {}, "redirect"),
    (500, {"kind": "Status", "code": 500}, "HTTP 500"),
    (201, b"not json", "not JSON"),
    (201, {"kind": "TokenReview"}, "malformed"),
])
def test_http_failures_are_unavailable_and_name_the_fix(
    canned: tuple[str, Callable[[int, Any], None]], status: int, body: Any, words: str, review: Review,
) -> None:
    url, set_answer = canned
    set_answer(status, body)
    with pytest.raises(TokenReviewUnavailable) as info:
        review(TokenReviewer(url, audiences=["payments-api"]), "a.b.c", RECORDED_IDENTITY)
    assert (info.value.status_code, info.value.reason) == (503, "review_unavailable")
    assert info.value.retry_after >= 1
    assert words in info.value.message


def test_retry_after_of_a_rate_limiting_api_server_is_honoured(canned: tuple[str, Callable[[int, Any], None]]) -> None:
    url, set_answer = canned
    set_answer(429, {"kind": "Status", "code": 429})
    with pytest.raises(TokenReviewUnavailable) as info:
        TokenReviewer(url, audiences=["payments-api"]).review("a.b.c", RECORDED_IDENTITY)
    assert info.value.retry_after == 1  # no Retry-After header: the first backoff step


# -- against the fake API server ------------------------------------------------------------------------


def test_valid_token_is_reviewed_with_groups(issuer: FakeIssuer, verifier: TokenVerifier,
                                            make_reviewer: Callable[..., TokenReviewer], review: Review) -> None:
    token = pod_token(issuer)
    identity = verifier.verify(token)
    reviewed = review(make_reviewer(), token, identity)
    assert reviewed.reviewed and not identity.reviewed
    assert reviewed == identity and reviewed.pod_name == "api-1"
    assert reviewed.groups == ("system:serviceaccounts", "system:serviceaccounts:payments", "system:authenticated")
    assert issuer.tokenreviews == 1
    assert issuer.review_requests == [{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                       "spec": {"token": token, "audiences": ["test"]}}]
    sent = issuer.requests[-1]
    assert (sent["path"], sent["method"]) == (REVIEW_PATH, "POST")
    assert (sent["authorization"], sent["content-type"], sent["accept"]) == \
        (f"Bearer {OWN_TOKEN}", "application/json", "application/json")


def test_the_fake_api_server_answers_like_the_recorded_one(issuer: FakeIssuer, clock: FakeClock) -> None:
    token = pod_token(issuer)
    status = issuer.review(token, ["test", "billing-api"])
    recorded = json.loads((RECORDED / "tr-02-valid-pod-bound.response.json").read_text())["status"]
    assert status.keys() == recorded.keys() and status["user"].keys() == recorded["user"].keys()
    assert status["user"]["extra"].keys() == recorded["user"]["extra"].keys()
    assert status["audiences"] == ["test"]
    wrong = issuer.review(token, ["billing-api"])
    assert wrong == {"user": {}, "error": '[invalid bearer token, token audiences ["test"] is invalid for the target '
                                          'audiences ["billing-api"]]'}
    assert issuer.review("garbage") == {"user": {}, "error": "invalid bearer token"}
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-3]}AAA"
    assert issuer.review(forged, ["test"])["error"] == \
        "[invalid bearer token, go-jose/go-jose: error in cryptographic primitive]"
    assert "error" in issuer.review(token)  # no spec.audiences: the API server's own audience (its issuer)
    assert issuer.review(issuer.mint(audiences=issuer.issuer))["audiences"] == [issuer.issuer]


def test_the_fake_api_server_verifies_ec_tokens_and_honours_60s_of_leeway(issuer: FakeIssuer, clock: FakeClock) -> None:
    issuer.rotate("ES256", drop_old=False)
    token = issuer.mint(audiences="test", lifetime=600)
    clock.advance(600 + 59)
    assert issuer.review(token, ["test"])["authenticated"] is True
    issuer.review_cache_ttl = 0
    clock.advance(2)
    assert issuer.review(token, ["test"])["error"] == "[invalid bearer token, service account token has expired]"


def test_the_fake_api_server_requires_a_bearer_token(issuer: FakeIssuer) -> None:
    reviewer = TokenReviewer(issuer.url, audiences=["test"])  # no token_file: no Authorization header
    with pytest.raises(TokenReviewUnavailable) as info:
        reviewer.review(issuer.mint(), WorkloadIdentity(issuer="i", subject="s", namespace="default",
                                                        service_account="default"))
    assert "HTTP 401" in info.value.message and "token_file" in info.value.message


def test_a_configured_reviewer_token_must_match(issuer: FakeIssuer, verifier: TokenVerifier,
                                               make_reviewer: Callable[..., TokenReviewer], tmp_path: Path) -> None:
    issuer.reviewer_token = OWN_TOKEN
    token = pod_token(issuer)
    assert make_reviewer().review(token, verifier.verify(token)).reviewed
    other = tmp_path / "other"
    other.write_text("someone-else")
    with pytest.raises(TokenReviewUnavailable, match="HTTP 401"):
        make_reviewer(token_file=str(other)).review(token, verifier.verify(token))


def test_deleted_pod_is_authenticated_within_the_api_servers_cache_then_revoked(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], clock: FakeClock,
    review: Review,
) -> None:
    reviewer = make_reviewer(cache_ttl=0)  # only the API server's cache (10 s) in the way
    token = pod_token(issuer)
    identity = verifier.verify(token)
    assert review(reviewer, token, identity).reviewed
    issuer.delete_pod("api-1")
    clock.advance(5)
    assert review(reviewer, token, identity).reviewed  # the API server still remembers its success
    clock.advance(6)
    with pytest.raises(InvalidToken) as info:
        review(reviewer, token, identity)
    assert (info.value.status_code, info.value.reason) == (401, "token_revoked")
    assert "service account token has been invalidated" in info.value.message
    assert issuer.tokenreviews == 3
    other = pod_token(issuer, pod="api-2")
    assert review(reviewer, other, verifier.verify(other)).reviewed  # only that pod's tokens


def test_revocation_window_is_our_cache_ttl_plus_the_api_servers(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], clock: FakeClock,
) -> None:
    reviewer = make_reviewer(cache_ttl=5)
    token = pod_token(issuer)
    identity = verifier.verify(token)
    assert reviewer.review(token, identity).reviewed
    issuer.delete_pod("api-1", namespace="payments")
    clock.advance(4.9)
    assert reviewer.review(token, identity).reviewed  # our cache
    clock.advance(0.2)
    assert reviewer.review(token, identity).reviewed  # the API server's cache (reviewed 5.1 s ago)
    clock.advance(10)
    with pytest.raises(InvalidToken, match="invalidated"):
        reviewer.review(token, identity)
    assert issuer.tokenreviews == 3


def test_a_cache_hit_for_the_same_identity_returns_the_same_reviewed_identity(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], clock: FakeClock,
) -> None:
    reviewer = make_reviewer(cache_ttl=5)
    token = pod_token(issuer)
    identity = verifier.verify(token)
    first = reviewer.review(token, identity)
    assert reviewer.review(token, identity) is first and first.reviewed
    again = verifier.verify(token)  # the verifier's cache hands the same identity object
    assert again is identity and reviewer.review(token, again) is first
    clock.advance(5)  # the answer expired: asked again, and a new reviewed identity is built
    second = reviewer.review(token, identity)
    assert second is not first and second == first and issuer.tokenreviews == 2
    assert reviewer.cache_info().hits == 2


def test_deleted_service_account_is_revoked(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], review: Review,
) -> None:
    issuer.review_cache_ttl = 0
    token = issuer.mint("payments", "api", audiences="test")  # not pod-bound
    identity = verifier.verify(token)
    assert review(make_reviewer(cache_ttl=0), token, identity).reviewed
    issuer.delete_service_account("payments", "api")
    with pytest.raises(InvalidToken) as info:
        review(make_reviewer(), token, identity)
    assert info.value.reason == "token_revoked"
    still = issuer.mint("payments", "worker", audiences="test")
    assert review(make_reviewer(), still, verifier.verify(still)).reviewed


def test_wrong_audience_at_the_api_server_is_bad_audience(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], review: Review,
) -> None:
    token = pod_token(issuer, audiences=["test", "payments-api"])
    with pytest.raises(InvalidToken) as info:
        review(make_reviewer(audiences=["billing-api"]), token, verifier.verify(token))
    assert (info.value.reason, info.value.claim) == ("bad_audience", "aud")
    assert issuer.review_requests[-1]["spec"]["audiences"] == ["billing-api"]


def test_expired_at_the_api_server_is_expired(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], clock: FakeClock,
    review: Review,
) -> None:
    token = pod_token(issuer, lifetime=600)
    identity = verifier.verify(token)  # verified locally while valid ...
    clock.advance(600 + 75)  # ... reviewed past the API server's leeway
    with pytest.raises(InvalidToken) as info:
        review(make_reviewer(), token, identity)
    assert (info.value.reason, info.value.claim) == ("expired", "exp")


# -- each refusal, worded as kube-apiserver v1.36.2 words it -------------------------------------------

RECORDED_ERROR = {case["name"]: case["error"] for case in INDEX}
# What a case does to the fake cluster: (issuer, clock, token, identity) -> (spec.audiences, status.error).
Refusal = Callable[[FakeIssuer, FakeClock, str, WorkloadIdentity], tuple[list[str], str]]


def _deleted_pod(issuer: FakeIssuer, clock: FakeClock, token: str, identity: WorkloadIdentity) -> tuple[list[str], str]:
    issuer.delete_pod("api-1", namespace="payments")
    return ["payments-api"], RECORDED_ERROR["tr-14b-pod-doomed-after-delete"]


def _recreated_pod(issuer: FakeIssuer, clock: FakeClock, token: str, identity: WorkloadIdentity
                   ) -> tuple[list[str], str]:
    new = issuer.recreate_pod("api-1", namespace="payments")
    return ["payments-api"], f"[invalid bearer token, pod UID ({new}) does not match service account pod ref claim " \
                     f"({identity.pod_uid})]"


def _deleted_account(issuer: FakeIssuer, clock: FakeClock, token: str, identity: WorkloadIdentity
                     ) -> tuple[list[str], str]:
    issuer.delete_service_account("payments", "api")
    return ["payments-api"], '[invalid bearer token, serviceaccounts "api" not found]'


def _recreated_account(issuer: FakeIssuer, clock: FakeClock, token: str, identity: WorkloadIdentity
                       ) -> tuple[list[str], str]:
    new = issuer.recreate_service_account("payments", "api")
    return ["payments-api"], f"[invalid bearer token, service account UID ({new}) does not match claim " \
                     f"({identity.service_account_uid})]"


def _expired(issuer: FakeIssuer, clock: FakeClock, token: str, identity: WorkloadIdentity) -> tuple[list[str], str]:
    clock.advance(3600 + 75)  # past exp and the API server's 60 s of leeway, as in the recording
    return ["payments-api"], RECORDED_ERROR["tr-21-expired-past-leeway"]


def _wrong_audience(issuer: FakeIssuer, clock: FakeClock, token: str, identity: WorkloadIdentity
                    ) -> tuple[list[str], str]:
    return ["billing-api"], RECORDED_ERROR["tr-04-wrong-aud"]  # the token's aud is ["payments-api"], as recorded


REFUSALS: dict[str, tuple[Refusal, str]] = {
    "deleted-pod": (_deleted_pod, "token_revoked"),
    "recreated-pod": (_recreated_pod, "token_revoked"),
    "deleted-service-account": (_deleted_account, "token_revoked"),
    "recreated-service-account": (_recreated_account, "token_revoked"),
    "expired": (_expired, "expired"),
    "wrong-audience": (_wrong_audience, "bad_audience"),
}


def _post_review(issuer: FakeIssuer, token: str, audiences: list[str]) -> tuple[int, Any]:
    """One TokenReview over HTTP, as any client would send it: the status code and the JSON answer."""
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
               "spec": {"token": token, "audiences": audiences}}
    response = httpx.post(f"{issuer.url}{REVIEW_PATH}", json=request, headers={"Authorization": f"Bearer {OWN_TOKEN}"},
                          timeout=5)
    return response.status_code, response.json()


@pytest.mark.parametrize("case", REFUSALS)
def test_the_fake_api_server_refuses_like_kube_apiserver(
    issuer: FakeIssuer, make_reviewer: Callable[..., TokenReviewer], clock: FakeClock, case: str, review: Review,
) -> None:
    refuse, reason = REFUSALS[case]
    token = pod_token(issuer, audiences="payments-api")
    local = VerifierConfig(issuer=issuer.issuer, audiences=["payments-api"], jwks=issuer.jwks())
    identity = TokenVerifier(local, clock=clock).verify(token)
    audiences, error = refuse(issuer, clock, token, identity)
    assert issuer.review(token, audiences) == {"user": {}, "error": error}
    status, answer = _post_review(issuer, token, audiences)
    recorded = json.loads((RECORDED / "tr-14b-pod-doomed-after-delete.response.json").read_text())
    assert status == 201 and answer.keys() == recorded.keys()  # the recorded failure's shape
    assert answer["spec"] == {"token": token, "audiences": audiences}
    assert answer["status"] == {"user": {}, "error": error}  # no "authenticated", no "audiences"
    with pytest.raises(InvalidToken) as info:
        review(make_reviewer(audiences=audiences), token, identity)
    assert (info.value.status_code, info.value.reason) == (401, reason)
    assert info.value.message.endswith(f": {error}")


@pytest.mark.parametrize("case", [name for name, (_, reason) in REFUSALS.items() if reason != "bad_audience"])
def test_the_verifier_maps_each_refusal_sync_and_async(
    issuer: FakeIssuer, reviewing_verifier: Callable[..., TokenVerifier], clock: FakeClock, case: str,
) -> None:
    refuse, reason = REFUSALS[case]
    verifier = reviewing_verifier(tokenreview_cache_ttl=0, leeway=120)  # locally valid a while past exp
    token = pod_token(issuer)
    identity = verifier.verify(token)
    assert identity.reviewed
    refuse(issuer, clock, token, identity)
    clock.advance(10)  # past the API server's cache of its earlier success
    for call in (lambda: verifier.verify(token), lambda: asyncio.run(verifier.verify_async(token))):
        with pytest.raises(InvalidToken) as info:
            call()
        assert (info.value.status_code, info.value.reason) == (401, reason)
    assert issuer.tokenreviews == 3  # each call asked the API server
    if case.startswith("recreated"):  # the new object's tokens are fine
        fresh = pod_token(issuer)
        assert verifier.verify(fresh).reviewed and asyncio.run(verifier.verify_async(fresh)).reviewed


def test_quoted_names_and_audiences_do_not_change_the_reason(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], review: Review,
) -> None:
    token = issuer.mint("payments", "audience-gateway", audiences="test")
    identity = verifier.verify(token)
    issuer.delete_service_account("payments", "audience-gateway")
    with pytest.raises(InvalidToken) as info:  # serviceaccounts "audience-gateway" not found
        review(make_reviewer(), token, identity)
    assert (info.value.reason, info.value.claim) == ("token_revoked", None)
    odd = issuer.mint("payments", "api", audiences="token has expired")
    with pytest.raises(InvalidToken) as info:  # token audiences ["token has expired"] is invalid for ... ["test"]
        review(make_reviewer(), odd, identity)
    assert (info.value.reason, info.value.claim) == ("bad_audience", "aud")


def test_recreated_and_deleted_objects_follow_each_other_and_reset_forgets_them(
    issuer: FakeIssuer, clock: FakeClock,
) -> None:
    issuer.review_cache_ttl = 0
    first = pod_token(issuer)
    issuer.delete_pod("api-1")  # in every namespace
    uid = issuer.recreate_pod("api-1", namespace="payments")  # back, with a new UID
    second = pod_token(issuer)
    assert issuer.review(second, ["test"])["user"]["extra"]["authentication.kubernetes.io/pod-uid"] == [uid]
    assert "does not match service account pod ref claim" in issuer.review(first, ["test"])["error"]
    assert issuer.review(issuer.mint("shop", "api", audiences="test", pod="api-1"), ["test"])["error"] == \
        RECORDED_ERROR["tr-14b-pod-doomed-after-delete"]  # still deleted in the other namespaces
    issuer.delete_pod("api-1", namespace="payments")
    assert issuer.review(second, ["test"])["error"] == RECORDED_ERROR["tr-14b-pod-doomed-after-delete"]
    issuer.delete_service_account("payments", "api")  # the service account is checked before the pod
    assert issuer.review(second, ["test"])["error"] == '[invalid bearer token, serviceaccounts "api" not found]'
    account_uid = issuer.recreate_service_account("payments", "api")
    assert "service account UID" in issuer.review(second, ["test"])["error"]
    assert issuer.review(issuer.mint("payments", "api", audiences="test"), ["test"])["user"]["uid"] == account_uid
    issuer.reset()
    assert (issuer.deleted_pods, issuer.deleted_service_accounts, issuer.pod_uids, issuer.service_account_uids) == \
        (set(), set(), {}, {})
    issuer.clock = clock  # reset() gave the issuer its own clock back
    assert issuer.review(first, ["test"])["authenticated"] is True


@pytest.mark.parametrize("mode", UNAVAILABLE_MODES)
def test_unavailable_api_server_is_503_with_retry_after(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], mode: str,
    review: Review,
) -> None:
    token = pod_token(issuer)
    identity = verifier.verify(token)
    issuer.fail(mode, endpoint="tokenreview", delay=3)  # type: ignore[arg-type]
    reviewer = make_reviewer(timeout=0.3)
    with pytest.raises(TokenReviewUnavailable) as info:
        review(reviewer, token, identity)
    assert (info.value.status_code, info.value.reason, info.value.error) == \
        (503, "review_unavailable", "temporarily_unavailable")
    assert info.value.retry_after >= 1
    assert verifier.verify(token) == identity  # discovery/JWKS are not involved
    assert reviewer.cache_info().available is False


def test_the_messages_name_the_rbac_and_token_fixes(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer],
) -> None:
    token = pod_token(issuer)
    identity = verifier.verify(token)
    issuer.fail("forbidden", endpoint="tokenreview")
    with pytest.raises(TokenReviewUnavailable, match="ClusterRole system:auth-delegator"):
        make_reviewer().review(token, identity)
    issuer.fail("unauthorized")
    with pytest.raises(TokenReviewUnavailable, match="token_file"):
        make_reviewer().review(token, identity)


def test_unreachable_api_server_and_unreadable_token_file_are_unavailable(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], tmp_path: Path,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    token = pod_token(issuer)
    identity = verifier.verify(token)
    with pytest.raises(TokenReviewUnavailable, match="cannot connect"):
        make_reviewer(url=closed).review(token, identity)
    with pytest.raises(TokenReviewUnavailable, match="cannot read"):
        make_reviewer(token_file=str(tmp_path / "missing")).review(token, identity)
    assert issuer.tokenreviews == 0


def test_failed_reviews_back_off_then_retry(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], clock: FakeClock,
) -> None:
    reviewer = make_reviewer()
    token = pod_token(issuer)
    identity = verifier.verify(token)
    issuer.fail("error", endpoint="tokenreview")
    retry_afters = []
    for _ in range(4):
        with pytest.raises(TokenReviewUnavailable) as info:
            reviewer.review(token, identity)
        retry_afters.append(info.value.retry_after)
        with pytest.raises(TokenReviewUnavailable):  # answered at once while backing off
            reviewer.review(token, identity)
        clock.advance(info.value.retry_after)
    assert retry_afters == [1, 2, 4, 8]
    assert issuer.tokenreviews == 4
    issuer.fail(None)
    assert reviewer.review(token, identity).reviewed
    assert reviewer.cache_info().available


def test_fallback_returns_the_local_identity_and_warns_once_per_outage(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], clock: FakeClock,
    caplog: pytest.LogCaptureFixture, review: Review,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    reviewer = make_reviewer(fallback_to_local=True, cache_ttl=0)
    token = pod_token(issuer)
    identity = verifier.verify(token)
    issuer.fail("down", endpoint="tokenreview")
    for _ in range(5):
        answer = review(reviewer, token, identity)
        assert answer is identity and not answer.reviewed
        clock.advance(40)  # past any backoff: every call tries again
    assert issuer.tokenreviews == 5
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [r.levelno for r in records] == [logging.WARNING]
    assert "locally verified identity" in records[0].getMessage()
    issuer.fail(None)
    assert review(reviewer, token, identity).reviewed
    assert review(reviewer, token, identity).reviewed
    issuer.fail("error", endpoint="tokenreview")
    assert not review(reviewer, token, identity).reviewed
    levels = [r.levelno for r in caplog.records if r.name == LOGGER]
    assert levels == [logging.WARNING, logging.INFO, logging.WARNING]
    assert "works again" in [r for r in caplog.records if r.name == LOGGER][1].getMessage()


def test_fallback_still_refuses_revoked_tokens(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer],
) -> None:
    issuer.review_cache_ttl = 0
    token = pod_token(issuer)
    identity = verifier.verify(token)
    issuer.delete_pod("api-1")
    with pytest.raises(InvalidToken, match="invalidated"):
        make_reviewer(fallback_to_local=True).review(token, identity)


# -- caching --------------------------------------------------------------------------------------------


def test_answers_are_cached_for_cache_ttl(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], clock: FakeClock,
    review: Review,
) -> None:
    reviewer = make_reviewer(cache_ttl=5)
    token = pod_token(issuer)
    identity = verifier.verify(token)
    for _ in range(3):
        assert review(reviewer, token, identity).reviewed
        clock.advance(2.4)
    assert issuer.tokenreviews == 1  # 4.8 s after the review
    clock.advance(0.3)
    assert review(reviewer, token, identity).reviewed
    assert issuer.tokenreviews == 2
    info = reviewer.cache_info()
    assert (info.reviews, info.requests, info.hits, info.currsize, info.maxsize) == (4, 2, 2, 1, 10_000)


def test_answers_are_never_cached_beyond_the_tokens_expiry(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], clock: FakeClock,
) -> None:
    reviewer = make_reviewer(cache_ttl=60)
    token = pod_token(issuer, lifetime=3)
    identity = verifier.verify(token)
    assert reviewer.review(token, identity).reviewed
    clock.advance(2.9)
    assert reviewer.review(token, identity).reviewed
    assert issuer.tokenreviews == 1
    clock.advance(0.2)  # past exp (within both leeways)
    assert reviewer.review(token, identity).reviewed
    assert issuer.tokenreviews == 2


def test_negative_answers_are_cached_unavailable_ones_are_not(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], clock: FakeClock,
) -> None:
    reviewer = make_reviewer(cache_ttl=5)
    revoked, fine = pod_token(issuer), pod_token(issuer, pod="api-2")
    issuer.delete_pod("api-1")
    for _ in range(2):
        with pytest.raises(InvalidToken, match="invalidated"):
            reviewer.review(revoked, verifier.verify(revoked))
    assert issuer.tokenreviews == 1
    issuer.fail("error", endpoint="tokenreview")
    with pytest.raises(TokenReviewUnavailable):
        reviewer.review(fine, verifier.verify(fine))
    issuer.fail(None)
    clock.advance(1)  # the backoff
    assert reviewer.review(fine, verifier.verify(fine)).reviewed
    assert issuer.tokenreviews == 3


def test_cache_ttl_zero_reviews_every_call(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], review: Review,
) -> None:
    reviewer = make_reviewer(cache_ttl=0, shared=MemoryStore(FakeClock(NOW)))
    token = pod_token(issuer)
    identity = verifier.verify(token)
    for _ in range(3):
        assert review(reviewer, token, identity).reviewed
    assert issuer.tokenreviews == 3 and reviewer.cache_info().currsize == 0


def test_answers_are_per_audience_set(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], clock: FakeClock,
) -> None:
    store = MemoryStore(clock)
    token = pod_token(issuer, audiences=["test", "billing-api"])
    identity = verifier.verify(token)
    assert make_reviewer(shared=store).review(token, identity).reviewed
    with pytest.raises(InvalidToken):
        make_reviewer(shared=store, audiences=["other"]).review(token, identity)
    assert issuer.tokenreviews == 2 and len(store.data) == 2


@pytest.mark.anyio
async def test_concurrent_reviews_of_one_token_send_one_request(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer],
) -> None:
    reviewer = make_reviewer()
    token = pod_token(issuer)
    identity = verifier.verify(token)
    issuer.fail("slow", endpoint="tokenreview", delay=0.5)
    results: list[WorkloadIdentity] = []
    threads = [threading.Thread(target=lambda: results.append(reviewer.review(token, identity))) for _ in range(10)]
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            for thread in threads:
                thread.start()
            for _ in range(10):
                group.start_soon(lambda: _append(results, reviewer.review_async(token, identity)))
        await anyio.to_thread.run_sync(lambda: [t.join(10) for t in threads])
    assert len(results) == 20 and all(r.reviewed for r in results)
    assert issuer.tokenreviews == 1
    assert reviewer.cache_info().hits == 19


async def _append(results: list[WorkloadIdentity], review: Any) -> None:
    results.append(await review)


@pytest.mark.anyio
async def test_a_cancelled_review_releases_its_waiters(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer],
) -> None:
    reviewer = make_reviewer()
    token = pod_token(issuer)
    identity = verifier.verify(token)
    issuer.fail("slow", endpoint="tokenreview", delay=30)
    with anyio.move_on_after(0.3):
        await reviewer.review_async(token, identity)
    issuer.fail(None)
    with anyio.fail_after(10):
        assert (await reviewer.review_async(token, identity)).reviewed


# -- the shared store ----------------------------------------------------------------------------------


def test_replicas_share_answers_through_the_store(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], clock: FakeClock,
    review: Review,
) -> None:
    store = MemoryStore(clock)
    assert isinstance(store, SharedStore)
    token = pod_token(issuer)
    identity = verifier.verify(token)
    first, second = make_reviewer(shared=store, cache_ttl=5), make_reviewer(shared=store, cache_ttl=5)
    assert review(first, token, identity).reviewed
    answer = review(second, token, identity)
    assert answer.reviewed and answer.groups[-1] == "system:authenticated"
    assert issuer.tokenreviews == 1 and second.cache_info().shared_hits == 1
    [(namespace, key, value, ttl)] = store.sets
    assert namespace == "tr" and len(key) == 32 and ttl == 5
    assert token.encode() not in value and token.split(".")[2].encode() not in value
    assert json.loads(value)["s"]["user"]["username"] == "system:serviceaccount:payments:api"
    clock.advance(5)
    assert review(make_reviewer(shared=store), token, identity).reviewed
    assert issuer.tokenreviews == 2  # the shared entry expired too


def test_shared_entries_expire_with_the_token_and_bad_ones_are_ignored(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], clock: FakeClock,
) -> None:
    store = MemoryStore(clock)
    token = pod_token(issuer, lifetime=2)
    identity = verifier.verify(token)
    assert make_reviewer(shared=store, cache_ttl=30).review(token, identity).reviewed
    [(_, key, _, ttl)] = store.sets
    assert ttl == 2
    for bad in (b"garbage", b'{"v":1,"t":1e12,"s":{"authenticated":true,"user":{}}}', b'{"v":2}'):
        store.data[("tr", key)] = (bad, clock() + 60)
        assert make_reviewer(shared=store).review(token, identity).reviewed
    assert issuer.tokenreviews == 4


def test_a_negative_answer_is_shared_too(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], clock: FakeClock,
    review: Review,
) -> None:
    store = MemoryStore(clock)
    issuer.review_cache_ttl = 0
    token = pod_token(issuer)
    identity = verifier.verify(token)
    issuer.delete_pod("api-1")
    for _ in range(2):
        with pytest.raises(InvalidToken) as info:
            review(make_reviewer(shared=store), token, identity)
        assert info.value.reason == "token_revoked"
    assert issuer.tokenreviews == 1


# -- no token in logs or messages -------------------------------------------------------------------


def test_no_token_in_logs_or_error_messages(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], clock: FakeClock,
    caplog: pytest.LogCaptureFixture, canned: tuple[str, Callable[[int, Any], None]],
) -> None:
    caplog.set_level(logging.DEBUG)
    token = pod_token(issuer)
    identity = verifier.verify(token)
    url, set_answer = canned
    set_answer(201, {"status": {"user": {}, "error": f"[invalid bearer token, echoing {token}]"}})
    messages = []
    for run in (
        lambda: make_reviewer(url=url).review(token, identity),
        lambda: make_reviewer(audiences=["other"]).review(token, identity),
        lambda: (issuer.delete_pod("api-1"), issuer.fail("garbage", endpoint="tokenreview"),
                 make_reviewer().review(token, identity)),
        lambda: (issuer.fail("unauthorized"), make_reviewer().review(token, identity)),
        lambda: (issuer.fail(None), clock.advance(30), make_reviewer().review(token, identity)),
    ):
        with pytest.raises((InvalidToken, TokenReviewUnavailable)) as info:
            run()
        messages += [info.value.message, str(info.value), repr(info.value), json.dumps(info.value.to_dict())]
    assert "<token>" in messages[0]
    logged = [r.getMessage() for r in caplog.records] + [str(r.args) for r in caplog.records]
    for text in messages + logged:
        assert token not in text and token.split(".")[2] not in text and OWN_TOKEN not in text
    assert any(r.name == LOGGER for r in caplog.records)
    assert OWN_TOKEN not in repr(make_reviewer())


# -- configuration ----------------------------------------------------------------------------------


def test_from_config_reads_the_tokenreview_settings(issuer: FakeIssuer, own_token_file: str, clock: FakeClock) -> None:
    config = VerifierConfig(issuer=issuer.issuer, audiences=["test", "b"], jwks=issuer.jwks(), tokenreview=True,
                            tokenreview_url=issuer.url + "/", token_file=own_token_file, timeout=2.5,
                            tokenreview_cache_ttl=7, tokenreview_fallback=True)
    store = MemoryStore(clock)
    reviewer = TokenReviewer.from_config(config, clock=clock, shared=store)
    assert (reviewer.url, reviewer.audiences, reviewer.token_file, reviewer.timeout, reviewer.cache_ttl,
            reviewer.fallback_to_local, reviewer.shared) == \
        (issuer.url, ("test", "b"), own_token_file, 2.5, 7.0, True, store)
    assert reviewer.review_url == issuer.url + REVIEW_PATH
    assert "TokenReviewer(url=" in repr(reviewer)


@pytest.mark.parametrize(("arguments", "setting"), [
    ({"url": "http://api.example:6443"}, "TOKENREVIEW_URL"),
    ({"url": "ftp://127.0.0.1"}, "TOKENREVIEW_URL"),
    ({"audiences": []}, "AUDIENCES"),
    ({"audiences": [""]}, "AUDIENCES"),
    ({"timeout": 0}, "TIMEOUT"),
    ({"cache_ttl": -1}, "TOKENREVIEW_CACHE_TTL"),
    ({"cache_size": -1}, None),
    ({"ca_file": "/nonexistent/ca.crt"}, None),
])
def test_bad_settings_are_configuration_errors(arguments: dict[str, Any], setting: str | None) -> None:
    settings: dict[str, Any] = {"url": "https://kubernetes.default.svc", "audiences": ["test"], **arguments}
    with pytest.raises(ConfigurationError) as info:
        TokenReviewer(settings.pop("url"), **settings)
    assert info.value.setting == setting


def test_a_non_ascii_token_is_malformed() -> None:
    with pytest.raises(InvalidToken) as info:
        TokenReviewer(audiences="test").review("tökén", RECORDED_IDENTITY)
    assert info.value.reason == "malformed"


# -- through the verifier and a framework -----------------------------------------------------------


@pytest.fixture
def reviewing_verifier(issuer: FakeIssuer, clock: FakeClock, own_token_file: str) -> Callable[..., TokenVerifier]:
    def factory(**overrides: Any) -> TokenVerifier:
        settings: dict[str, Any] = {"issuer": issuer.issuer, "audiences": ["test"], "jwks": issuer.jwks(),
                                    "tokenreview": True, "tokenreview_url": issuer.url, "token_file": own_token_file}
        settings.update(overrides)
        return TokenVerifier(VerifierConfig(**settings), clock=clock)

    return factory


def test_the_verifier_reviews_after_local_verification(
    issuer: FakeIssuer, reviewing_verifier: Callable[..., TokenVerifier], clock: FakeClock,
) -> None:
    verifier = reviewing_verifier()
    assert isinstance(verifier.reviewer, TokenReviewer)
    token = pod_token(issuer)
    assert verifier.verify(token).reviewed
    assert asyncio.run(verifier.verify_async(token)).reviewed
    assert issuer.tokenreviews == 1  # our 5 s cache
    with pytest.raises(InvalidToken) as info:
        verifier.verify(pod_token(issuer, audiences="other"))
    assert info.value.reason == "bad_audience" and issuer.tokenreviews == 1  # refused locally: never reviewed
    issuer.delete_pod("api-1")
    clock.advance(5)
    assert verifier.verify(token).reviewed  # the API server's cache (10 s)
    clock.advance(10)
    for call in (lambda: verifier.verify(token), lambda: asyncio.run(verifier.verify_async(token))):
        with pytest.raises(InvalidToken) as info:
            call()
        assert info.value.reason == "token_revoked"
    assert issuer.tokenreviews == 3


def test_the_verifier_falls_back_when_configured(
    issuer: FakeIssuer, reviewing_verifier: Callable[..., TokenVerifier],
) -> None:
    issuer.fail("down", endpoint="tokenreview")
    token = pod_token(issuer)
    with pytest.raises(TokenReviewUnavailable):
        reviewing_verifier().verify(token)
    local = reviewing_verifier(tokenreview_fallback=True).verify(token)
    assert not local.reviewed and local.pod_name == "api-1"


async def whoami(request: Request) -> JSONResponse:
    workload = request.user.workload
    return JSONResponse({"user": workload.username, "reviewed": workload.reviewed, "groups": list(workload.groups)})


def test_starlette_app_answers_401_token_revoked_and_503_review_unavailable(
    issuer: FakeIssuer, reviewing_verifier: Callable[..., TokenVerifier], clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    verifier = reviewing_verifier(tokenreview_cache_ttl=0)
    app = Starlette(routes=[Route("/whoami", whoami)], middleware=[Middleware(K8sJWTAuthMiddleware, verifier=verifier)])
    good, doomed = pod_token(issuer), pod_token(issuer, pod="doomed")
    issuer.delete_pod("doomed")
    issuer.review_cache_ttl = 0
    with TestClient(app) as client:
        ok = client.get("/whoami", headers=bearer(good))
        revoked = client.get("/whoami", headers=bearer(doomed))
        issuer.fail("down", endpoint="tokenreview")
        unavailable = client.get("/whoami", headers=bearer(good))
    assert ok.status_code == 200
    groups = ["system:serviceaccounts", "system:serviceaccounts:payments", "system:authenticated"]
    assert ok.json() == {"user": "system:serviceaccount:payments:api", "reviewed": True, "groups": groups}
    assert revoked.status_code == 401
    assert (revoked.json()["error"], revoked.json()["reason"]) == ("invalid_token", "token_revoked")
    assert revoked.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert unavailable.status_code == 503
    assert (unavailable.json()["error"], unavailable.json()["reason"]) == \
        ("temporarily_unavailable", "review_unavailable")
    assert int(unavailable.headers["retry-after"]) >= 1
    for text in [r.text for r in (ok, revoked, unavailable)] + [r.getMessage() for r in caplog.records]:
        assert good not in text and doomed not in text


def test_the_latency_benchmark_runs() -> None:
    script = Path(__file__).resolve().parents[1] / "bench" / "tokenreview.py"
    proc = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if not k.startswith("K8S_JWT_AUTH_")})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"local_verify_cached", "local_verify_uncached", "tokenreview_cache_hit", "tokenreview_uncached_sync",
            "tokenreview_uncached_async"} <= set(summary)
    for mode in ("new_client", "no_keep_alive", "pooled"):  # fresh vs kept-alive connections, sync and async
        assert {f"{server}_{mode}_{kind}_{q}" for server in ("stock", "nodelay") for kind in ("sync", "async")
                for q in ("median", "p90")} <= set(summary)
    assert all(value > 0 for value in summary.values())


@pytest.mark.parametrize("mode", ["closed", "down", "error", "garbage", "oversized"])
def test_an_unavailable_review_carries_no_token_in_its_error_chain(
    issuer: FakeIssuer, verifier: TokenVerifier, make_reviewer: Callable[..., TokenReviewer], review: Review,
    mode: str,
) -> None:
    # The review request's body is the caller's token: a chained transport error (which holds the request)
    # would carry it into tracebacks and error reports.
    token = pod_token(issuer)
    identity = verifier.verify(token)
    url = issuer.url
    if mode == "closed":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    else:
        issuer.fail(mode, endpoint="tokenreview")
    with pytest.raises(TokenReviewUnavailable) as caught:
        review(make_reviewer(url=url), token, identity)
    assert caught.value.reason == "review_unavailable"
    assert_holds_no_token(caught.value, token)
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_a_failed_exchange_is_not_chained_to_the_request_it_sent() -> None:
    from k8s_jwt_auth._deadline import AsyncSession, Session
    from k8s_jwt_auth._transport import FetchError, exchange, exchange_async

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/apis"
    body = b'{"spec":{"token":"eyJhbGciOiJSUzI1NiJ9.secret-payload.signature"}}'

    async def post_async() -> None:
        async with AsyncSession(verify=ssl.create_default_context(), timeout=1.0) as session:
            await exchange_async(session, "POST", url, headers={}, content=body, limit=1024, timeout=1.0)

    with pytest.raises(FetchError) as sync_error, Session(verify=ssl.create_default_context(), timeout=1.0) as session:
        exchange(session, "POST", url, headers={}, content=body, limit=1024, timeout=1.0)
    with pytest.raises(FetchError) as async_error:
        asyncio.run(post_async())
    for caught in (sync_error, async_error):
        assert caught.value.kind == "connect"
        assert caught.value.__cause__ is None and caught.value.__context__ is None
