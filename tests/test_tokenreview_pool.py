"""TokenReview over kept-alive connections (#16 item 7): connection counts come from the server.

The server is a real `http.server` on 127.0.0.1 that records the client port of every connection it accepts,
the requests it receives and the connections that ended, and can close idle connections (its own timeout) or
hang up on a request that arrives over a kept-alive connection (the race between a client reusing a connection
and a server closing it).
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from k8s_jwt_auth import TokenReviewUnavailable
from k8s_jwt_auth._deadline import AsyncSession, Session
from k8s_jwt_auth.tokenreview import REVIEW_PATH, TokenReviewer

from ._threaded import JsonHandler, handler_server
from .test_tokenreview import RECORDED, RECORDED_IDENTITY

ANSWER = (RECORDED / "tr-02-valid-pod-bound.response.json").read_bytes()
NOW = 1795427957.0  # the recorded answer's token is valid then
WAIT = 5.0  # the longest a test waits for the server to notice something


class _Recording(JsonHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout  # type: ignore[attr-defined,misc]  # None: keep connections open
        super().setup()
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.ports.append(self.client_address[1])  # type: ignore[attr-defined]
        self.served = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        server: Any = self.server
        self.served += 1
        with server.lock:
            server.requests += 1
            server.tokens.append(self.headers.get("Authorization"))
        if server.hang_up is not None and (self.served > 1 or server.hang_up == "every"):
            if server.hang_up != "reset":  # a reset: the unread request makes the kernel answer with RST
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.close_connection = True  # no answer
            return
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.reply(201, ANSWER)

    def finish(self) -> None:
        super().finish()
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.ended += 1  # type: ignore[attr-defined]


@pytest.fixture
def server() -> Iterator[Any]:
    with handler_server(_Recording) as (srv, url):
        srv.lock = threading.Lock()  # type: ignore[attr-defined]
        srv.ports, srv.tokens, srv.requests, srv.ended = [], [], 0, 0  # type: ignore[attr-defined]
        srv.idle_timeout, srv.hang_up = None, None  # type: ignore[attr-defined]
        srv.url = url  # type: ignore[attr-defined]
        yield srv


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("own-token-1\n")
    return path


@pytest.fixture
def make(server: Any, token_file: Path) -> Iterator[Callable[..., TokenReviewer]]:
    made: list[TokenReviewer] = []

    def factory(**options: Any) -> TokenReviewer:
        settings: dict[str, Any] = {"audiences": ["payments-api"], "token_file": str(token_file), "cache_ttl": 0,
                                    "clock": lambda: NOW, "timeout": 2.0}
        settings.update(options)
        reviewer = TokenReviewer(server.url, **settings)
        made.append(reviewer)
        return reviewer

    yield factory
    for reviewer in made:
        reviewer.close()


def review(reviewer: TokenReviewer) -> bool:
    return reviewer.review("a.b.c", RECORDED_IDENTITY).reviewed


async def areview(reviewer: TokenReviewer) -> bool:
    return (await reviewer.review_async("a.b.c", RECORDED_IDENTITY)).reviewed


def eventually(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# -- reuse ---------------------------------------------------------------------------------------------


def test_sync_reviews_reuse_one_connection(server: Any, make: Callable[..., TokenReviewer]) -> None:
    reviewer = make()
    assert all(review(reviewer) for _ in range(5))
    assert (server.requests, len(server.ports)) == (5, 1)
    assert reviewer.cache_info().requests == 5


def test_async_reviews_reuse_one_connection_per_loop(server: Any, make: Callable[..., TokenReviewer]) -> None:
    reviewer = make()

    async def five() -> list[bool]:
        return [await areview(reviewer) for _ in range(5)]

    assert all(asyncio.run(five()))
    assert (server.requests, len(server.ports)) == (5, 1)


def test_without_keep_alive_every_review_opens_a_connection(server: Any, make: Callable[..., TokenReviewer]) -> None:
    reviewer = make(keep_alive=False)
    assert all(review(reviewer) for _ in range(3))
    assert asyncio.run(areview(reviewer))
    assert (server.requests, len(set(server.ports))) == (4, 4)


def test_threads_share_a_bounded_pool(server: Any, make: Callable[..., TokenReviewer]) -> None:
    reviewer = make(max_connections=2)
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.extend(review(reviewer) for _ in range(5))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert results == [True] * 30
    assert server.requests == 30 and 1 <= len(server.ports) <= 2


def test_each_event_loop_has_its_own_connections_and_closes_them_at_shutdown(
    server: Any, make: Callable[..., TokenReviewer],
) -> None:
    reviewer = make()
    results: list[bool] = []

    async def twice() -> None:
        results.extend([await areview(reviewer), await areview(reviewer)])

    threads = [threading.Thread(target=asyncio.run, args=(twice(),)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert results == [True] * 6
    assert (server.requests, len(server.ports)) == (6, 3)  # one connection per loop, none shared
    assert reviewer._pool.loops() == 0  # every loop closed its client when asyncio.run ended
    assert eventually(lambda: server.ended == 3)


def test_asyncio_run_twice_with_one_reviewer_leaves_nothing_unclosed(
    server: Any, make: Callable[..., TokenReviewer],
) -> None:
    reviewer = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert asyncio.run(areview(reviewer))
        assert asyncio.run(areview(reviewer))
        gc.collect()
    assert [str(w.message) for w in caught] == []
    assert len(server.ports) == 2 and eventually(lambda: server.ended == 2)


def test_a_dropped_reviewer_closes_its_connections(server: Any, token_file: Path) -> None:
    reviewer = TokenReviewer(server.url, audiences=["payments-api"], token_file=str(token_file), cache_ttl=0,
                             clock=lambda: NOW)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert review(reviewer)
        del reviewer
        gc.collect()
    assert [str(w.message) for w in caught] == []
    assert eventually(lambda: server.ended == 1)


def test_close_and_aclose_close_the_connections_and_the_reviewer_stays_usable(
    server: Any, make: Callable[..., TokenReviewer],
) -> None:
    reviewer = make()
    assert review(reviewer)
    reviewer.close()
    assert eventually(lambda: server.ended == 1)
    assert review(reviewer)

    async def use_then_aclose() -> None:
        assert await areview(reviewer)
        await reviewer.aclose()  # this loop's connection and the blocking client's, before returning
        assert reviewer._pool.loops() == 0

    asyncio.run(use_then_aclose())
    assert eventually(lambda: server.ended == 3)
    assert len(server.ports) == 3


# -- the reviewer's own token ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_rotated_token_file_is_sent_over_the_kept_alive_connection(
    server: Any, make: Callable[..., TokenReviewer], token_file: Path, mode: str,
) -> None:
    reviewer = make()

    async def rotate_async() -> None:
        assert await areview(reviewer)
        token_file.write_text("own-token-2\n")
        assert await areview(reviewer)

    if mode == "sync":
        assert review(reviewer)
        token_file.write_text("own-token-2\n")
        assert review(reviewer)
    else:
        asyncio.run(rotate_async())
    assert server.tokens == ["Bearer own-token-1", "Bearer own-token-2"]
    assert len(server.ports) == 1


# -- a server that closes kept-alive connections ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_connection_the_server_closed_while_idle_is_replaced(
    server: Any, make: Callable[..., TokenReviewer], mode: str,
) -> None:
    server.idle_timeout = 0.1
    reviewer = make()

    async def around_the_idle_close() -> None:
        assert await areview(reviewer)
        assert await asyncio.to_thread(eventually, lambda: server.ended == 1)
        assert await areview(reviewer)

    if mode == "sync":
        assert review(reviewer)
        assert eventually(lambda: server.ended == 1)  # the server timed the idle connection out
        assert review(reviewer)
    else:
        asyncio.run(around_the_idle_close())
    assert (server.requests, len(server.ports)) == (2, 2)  # httpcore saw the close: no failed request
    assert reviewer.cache_info().failures == 0


@pytest.mark.parametrize("hang_up", ["eof", "reset"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_request_racing_the_servers_close_is_sent_again_on_a_new_connection(
    server: Any, make: Callable[..., TokenReviewer], mode: str, hang_up: str,
) -> None:
    reviewer = make()

    async def both() -> None:
        assert await areview(reviewer)
        server.hang_up = hang_up
        assert await areview(reviewer)

    if mode == "sync":
        assert review(reviewer)
        server.hang_up = hang_up  # from now on, a second request on a connection is met by a hang-up
        assert review(reviewer)
    else:
        asyncio.run(both())
    # the first review, the request the server hung up on, and its repetition on a new connection
    assert (server.requests, len(server.ports)) == (3, 2)
    assert reviewer.cache_info().failures == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_new_connection_that_is_hung_up_on_is_not_retried(
    server: Any, make: Callable[..., TokenReviewer], mode: str,
) -> None:
    server.hang_up = "every"
    reviewer = make()
    with pytest.raises(TokenReviewUnavailable):
        review(reviewer) if mode == "sync" else asyncio.run(areview(reviewer))
    assert (server.requests, len(server.ports)) == (1, 1)


def test_a_kept_alive_connection_obeys_the_deadline_of_the_exchange_using_it() -> None:
    # The first request is answered at once; on the same connection, the second one's answer trickles.
    class Trickle(JsonHandler):
        protocol_version = "HTTP/1.1"
        count = 0

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            Trickle.count += 1
            if Trickle.count == 1:
                self.reply(201, ANSWER)
                return
            try:
                for byte in b"HTTP/1.1 201 Created\r\nX-Slow: " + b"a" * 200:
                    self.wfile.write(bytes([byte]))
                    time.sleep(0.05)
            except OSError:
                pass
            self.close_connection = True

    timeout = 0.3
    with handler_server(Trickle) as (_, url):
        reviewer = TokenReviewer(url, audiences=["payments-api"], cache_ttl=0, clock=lambda: NOW, timeout=timeout)
        try:
            assert review(reviewer)
            started = time.monotonic()
            with pytest.raises(TokenReviewUnavailable):
                review(reviewer)
            assert time.monotonic() - started < 2 * timeout + 1.0
        finally:
            reviewer.close()


# -- TCP_NODELAY ----------------------------------------------------------------------------------------


def test_the_clients_sockets_have_tcp_nodelay(server: Any) -> None:
    # httpcore sets TCP_NODELAY (sync backend) and asyncio sets it on every TCP transport: a request written in
    # two segments (headers, then body) is never held back by Nagle's algorithm waiting for a delayed ACK.
    import ssl

    url = server.url + REVIEW_PATH

    def nodelay(response: Any) -> int:
        sock = response.extensions["network_stream"].get_extra_info("socket")
        return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    with Session(verify=ssl.create_default_context(), timeout=2.0) as session, \
            session.client.stream("POST", url, content=b"{}") as response:
        assert nodelay(response) != 0

    async def check_async() -> int:
        async with AsyncSession(verify=ssl.create_default_context(), timeout=2.0) as session, \
                session.client.stream("POST", url, content=b"{}") as response:
            return nodelay(response)

    assert asyncio.run(check_async()) != 0
    assert json.loads(ANSWER)["kind"] == "TokenReview"


def test_the_verifier_closes_its_reviewers_connections(server: Any, make: Callable[..., TokenReviewer]) -> None:
    """`TokenVerifier.close()`/`aclose()` close the reviewer's kept-alive connections (and do nothing without one)."""
    from k8s_jwt_auth import TokenVerifier, VerifierConfig
    from k8s_jwt_auth.testing import SigningKey

    config = VerifierConfig(issuer="https://issuer.test", audiences=["payments-api"],
                            jwks={"keys": [SigningKey.generate("ES256").public_jwk()]})
    plain = TokenVerifier(config)
    plain.close()
    asyncio.run(plain.aclose())
    reviewing = TokenVerifier(config, reviewer=make())
    assert review(reviewing.reviewer)  # type: ignore[arg-type]
    reviewing.close()
    assert eventually(lambda: server.ended == 1)

    async def use_then_aclose() -> None:
        assert await areview(reviewing.reviewer)  # type: ignore[arg-type]
        await reviewing.aclose()

    asyncio.run(use_then_aclose())
    assert eventually(lambda: server.ended == 2)
