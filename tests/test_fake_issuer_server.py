"""FakeIssuer's HTTP(S) server: quiet when a client goes away, loud when the server itself breaks."""

from __future__ import annotations

import socket
import socketserver
import ssl
import struct
import threading
from collections.abc import Iterator

import httpx
import pytest

from k8s_jwt_auth.testing import FakeIssuer

HALF_REQUEST = b"GET /openid/v1/jwks HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: appl"


@pytest.fixture(params=["http", "https"])
def server(request: pytest.FixtureRequest) -> Iterator[FakeIssuer]:
    with FakeIssuer(tls=request.param == "https") as issuer:
        yield issuer


class Connections:
    """Counts the connections the server's threads start and finish serving (socketserver's per-connection target)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._started, self._finished = threading.Semaphore(0), threading.Semaphore(0)
        serve = socketserver.ThreadingMixIn.process_request_thread

        def counted(server: socketserver.ThreadingMixIn, request: object, client_address: object) -> None:
            self._started.release()
            try:
                serve(server, request, client_address)  # type: ignore[arg-type]
            finally:
                self._finished.release()

        monkeypatch.setattr(socketserver.ThreadingMixIn, "process_request_thread", counted)

    def started(self) -> None:
        assert self._started.acquire(timeout=10), "the server did not take the connection"

    def finished(self) -> None:
        assert self._finished.acquire(timeout=10), "the server did not finish the connection"


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> Connections:
    return Connections(monkeypatch)


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends a TCP RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def connect(issuer: FakeIssuer, *, handshake: bool = True) -> socket.socket:
    host, port = issuer.url.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    if handshake and issuer.ca_pem is not None:
        context = ssl.create_default_context(cadata=issuer.ca_pem)
        return context.wrap_socket(sock, server_hostname="127.0.0.1")
    return sock


def test_a_client_resetting_mid_request_prints_nothing(server: FakeIssuer, connections: Connections,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    sock = connect(server)
    sock.sendall(HALF_REQUEST)
    connections.started()
    reset(sock)
    connections.finished()
    assert capfd.readouterr().err == ""
    assert httpx.get(f"{server.url}/openid/v1/jwks", verify=_verify(server)).status_code == 200  # still serving


def test_a_client_resetting_before_sending_prints_nothing(server: FakeIssuer, connections: Connections,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    """Plain HTTP: reset before the request line; TLS: reset in the middle of the handshake."""
    sock = connect(server, handshake=False)
    if server.ca_pem is not None:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello
    connections.started()
    reset(sock)
    connections.finished()
    assert capfd.readouterr().err == ""


def test_a_client_gone_before_the_answer_prints_nothing(server: FakeIssuer, connections: Connections,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    """A slow answer (timeouts in tests): the client has reset the connection when the server writes."""
    server.fail("slow", delay=0.3)
    sock = connect(server)
    sock.sendall(b"GET /openid/v1/jwks HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    connections.started()
    reset(sock)
    connections.finished()
    assert capfd.readouterr().err == ""


def test_a_client_that_does_not_trust_the_ca_prints_nothing(connections: Connections,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    with FakeIssuer(tls=True) as issuer:
        sock = connect(issuer, handshake=False)
        with pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(sock, server_hostname="127.0.0.1")
        sock.close()
        connections.finished()
    assert capfd.readouterr().err == ""


def test_a_bug_in_the_server_still_prints_its_traceback(server: FakeIssuer, connections: Connections,
                                                        capfd: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the fake issuer")

    monkeypatch.setattr(server, "_respond", broken)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{server.url}/openid/v1/jwks", verify=_verify(server), timeout=5)
    connections.finished()
    err = capfd.readouterr().err
    assert "Traceback" in err and "RuntimeError: a bug in the fake issuer" in err


def _verify(issuer: FakeIssuer) -> ssl.SSLContext | bool:
    return ssl.create_default_context(cadata=issuer.ca_pem) if issuer.ca_pem is not None else True
