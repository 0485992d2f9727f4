"""Hostile HTTP peers (#14 items 2, 3 and 12): every exchange with the issuer or the API server has ONE deadline
(connect, status line, headers, body), compressed answers are never inflated, and connecting has its own short
limit. Servers are real sockets on 127.0.0.1 (tests/_hostile.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from k8s_jwt_auth import KeySetUnavailable, TokenReviewUnavailable, WorkloadIdentity
from k8s_jwt_auth._remote import RemoteKeySource
from k8s_jwt_auth.testing import FakeIssuer
from k8s_jwt_auth.tokenreview import TokenReviewer

from ._hostile import gzip_server, trickle_server

TIMEOUT = 0.5
BUDGET = 2 * TIMEOUT + 1.0  # one exchange's deadline, plus scheduling slack on a loaded 2-core machine

Call = Callable[[Callable[[], Any], Callable[[], Any]], Any]


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Call:
    """Run the sync or the async form of an operation: `call(sync_fn, async_fn_returning_a_coroutine)`."""
    if request.param == "sync":
        return lambda sync, _: sync()
    return lambda _, make_coroutine: asyncio.run(make_coroutine())


def _source(url: str, **options: Any) -> RemoteKeySource:
    return RemoteKeySource("http://127.0.0.1:1", jwks_uri=url + "/jwks", timeout=TIMEOUT, **options)


def _identity(issuer: FakeIssuer) -> tuple[str, WorkloadIdentity]:
    from k8s_jwt_auth import TokenVerifier, VerifierConfig

    token = issuer.mint("payments", "api", audiences="test")
    verifier = TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences="test", jwks=issuer.jwks()))
    return token, verifier.verify(token)


@pytest.fixture
def trickling() -> Iterator[str]:
    with trickle_server() as url:
        yield url


def test_a_key_fetch_from_a_server_trickling_its_headers_ends_at_the_deadline(trickling: str, call: Call) -> None:
    source = _source(trickling)
    started = time.monotonic()
    with pytest.raises(KeySetUnavailable) as caught:
        call(lambda: source.get("k", "RS256"), lambda: source.get_async("k", "RS256"))
    assert time.monotonic() - started < BUDGET
    assert "timeout" in caught.value.message or "within" in caught.value.message


def test_discovery_from_a_trickling_issuer_ends_at_the_deadline(trickling: str, call: Call) -> None:
    source = RemoteKeySource(trickling, timeout=TIMEOUT)  # discovery, then (never) the JWKS
    started = time.monotonic()
    with pytest.raises(KeySetUnavailable):
        call(lambda: source.get("k", "RS256"), lambda: source.get_async("k", "RS256"))
    assert time.monotonic() - started < BUDGET


def test_a_tokenreview_from_a_trickling_api_server_ends_at_the_deadline(
    k8s_issuer: FakeIssuer, trickling: str, call: Call,
) -> None:
    token, identity = _identity(k8s_issuer)
    reviewer = TokenReviewer(trickling, audiences=["test"], timeout=TIMEOUT)
    started = time.monotonic()
    with pytest.raises(TokenReviewUnavailable):
        call(lambda: reviewer.review(token, identity), lambda: reviewer.review_async(token, identity))
    assert time.monotonic() - started < BUDGET


def test_a_trickled_body_is_cut_at_the_same_deadline(call: Call) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n"
    with trickle_server(head + b" " * 4000, interval=0.01) as url:
        source = _source(url)
        started = time.monotonic()
        with pytest.raises(KeySetUnavailable):
            call(lambda: source.get("k", "RS256"), lambda: source.get_async("k", "RS256"))
    assert time.monotonic() - started < BUDGET


@pytest.mark.parametrize("encoding", ["gzip", "gzip, gzip", "deflate", "br"])
def test_a_compressed_jwks_is_refused_not_inflated(k8s_issuer: FakeIssuer, call: Call, encoding: str) -> None:
    plain = json.dumps(k8s_issuer.jwks()).encode()
    with gzip_server(plain, encoding) as url:
        source = _source(url)
        with pytest.raises(KeySetUnavailable) as caught:
            call(lambda: source.get(k8s_issuer.key.kid, "RS256"),
                 lambda: source.get_async(k8s_issuer.key.kid, "RS256"))
    assert "Content-Encoding" in caught.value.message and "identity" in caught.value.message


def test_a_gzip_bomb_costs_no_memory(call: Call) -> None:
    # ~50 KB on the wire, 50 MiB once inflated: refused before a byte is decoded.
    with gzip_server(b"\0" * (50 * 1024 * 1024)) as url:
        source = _source(url)
        tracemalloc.start()
        try:
            with pytest.raises(KeySetUnavailable):
                call(lambda: source.get("k", "RS256"), lambda: source.get_async("k", "RS256"))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


def test_a_compressed_tokenreview_answer_is_refused(k8s_issuer: FakeIssuer, call: Call) -> None:
    token, identity = _identity(k8s_issuer)
    answer = json.dumps(k8s_issuer.review(token, ["test"])).encode()
    with gzip_server(answer) as url:
        reviewer = TokenReviewer(url, audiences=["test"], timeout=TIMEOUT)
        with pytest.raises(TokenReviewUnavailable, match="Content-Encoding"):
            call(lambda: reviewer.review(token, identity), lambda: reviewer.review_async(token, identity))


@pytest.fixture
def full_backlog() -> Iterator[str]:
    """A listening socket that never accepts, its backlog filled: new connections hang in SYN_SENT (Linux
    drops SYNs to a full accept queue), as they do towards an unreachable host."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_an_unreachable_api_server_fails_after_the_connect_timeout_not_the_read_timeout(
    k8s_issuer: FakeIssuer, full_backlog: str, call: Call,
) -> None:
    token, identity = _identity(k8s_issuer)
    reviewer = TokenReviewer(full_backlog, audiences=["test"], timeout=5.0, connect_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(TokenReviewUnavailable):
        call(lambda: reviewer.review(token, identity), lambda: reviewer.review_async(token, identity))
    assert time.monotonic() - started < 2.5  # far below the 5 s read timeout
