"""ServiceAccountTokenAuth, RequestsTokenAuth and read_token: real httpx, httpx2 and requests clients (sync and
async) to servers on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import httpx2
import pytest
import requests
import requests.auth
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from k8s_jwt_auth import TokenVerifier, VerifierConfig
from k8s_jwt_auth.client import (
    DEFAULT_TOKEN_PATH,
    RequestsTokenAuth,
    ServiceAccountTokenAuth,
    TokenFile,
    TokenFileError,
    read_token,
)
from k8s_jwt_auth.integrations.starlette import K8sJWTAuthMiddleware
from k8s_jwt_auth.testing import FakeIssuer

from ._threaded import JsonHandler, echo_server, handler_server, uvicorn_server

TOKEN_A = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlLWE"
TOKEN_B = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiIn0.c2lnbmF0dXJlLWI"
TOKEN_C = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjIn0.c2lnbmF0dXJlLWM"


@pytest.fixture(scope="module")
def echo() -> Iterator[str]:
    with echo_server() as url:
        yield url


def write_atomic(path: Path, token: str) -> None:
    """Replace `path` the way careful writers do: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(token + "\n")
    os.replace(tmp, path)


class KubeletVolume:
    """A projected volume laid out as the kubelet's AtomicWriter does: `token -> ..data/token`, `..data -> ..<ts>`."""

    def __init__(self, root: Path, token: str) -> None:
        self.root = root
        self.generation = 0
        self.write(token)
        (root / "token").symlink_to("..data/token")

    @property
    def path(self) -> Path:
        return self.root / "token"

    def write(self, token: str) -> None:
        self.generation += 1
        data_dir = self.root / f"..2026_11_23_12_00_{self.generation:02d}"
        data_dir.mkdir()
        (data_dir / "token").write_text(token)
        new_link = self.root / "..data_tmp"
        new_link.symlink_to(data_dir.name)
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        os.replace(new_link, self.root / "..data")  # the atomic swap
        if old is not None:
            for child in (self.root / old).iterdir():
                child.unlink()
            (self.root / old).rmdir()


def sent(client: httpx.Client, url: str) -> str | None:
    response = client.get(url)
    assert response.status_code == 200
    header: str | None = response.json()["authorization"]
    return header


# -- sending the header --------------------------------------------------------------------------


def test_sync_client_sends_the_token(tmp_path: Path, echo: str) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN_A + "\n")
    with httpx.Client(auth=ServiceAccountTokenAuth(path), timeout=5) as client:
        assert sent(client, echo) == f"Bearer {TOKEN_A}"


@pytest.mark.anyio
async def test_async_client_sends_the_token(tmp_path: Path, echo: str) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN_A)
    async with httpx.AsyncClient(auth=ServiceAccountTokenAuth(str(path)), timeout=5) as client:
        response = await client.get(echo)
    assert response.json() == {"authorization": f"Bearer {TOKEN_A}"}


def test_default_path_is_the_pod_token() -> None:
    assert ServiceAccountTokenAuth().path == DEFAULT_TOKEN_PATH == "/var/run/secrets/kubernetes.io/serviceaccount/token"


def test_unchanged_file_is_read_once(tmp_path: Path, echo: str) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN_A)
    auth = ServiceAccountTokenAuth(path)
    with httpx.Client(auth=auth, timeout=5) as client:
        for _ in range(5):
            assert sent(client, echo) == f"Bearer {TOKEN_A}"
    assert auth.token_file.reads == 1


# -- rotation --------------------------------------------------------------------------------------


def test_atomic_replace_is_sent_on_the_next_request(tmp_path: Path, echo: str) -> None:
    path = tmp_path / "token"
    write_atomic(path, TOKEN_A)
    auth = ServiceAccountTokenAuth(path)
    with httpx.Client(auth=auth, timeout=5) as client:
        assert sent(client, echo) == f"Bearer {TOKEN_A}"
        write_atomic(path, TOKEN_B)
        assert sent(client, echo) == f"Bearer {TOKEN_B}"  # no sleep: the next request already has it
        assert sent(client, echo) == f"Bearer {TOKEN_B}"
    assert auth.token_file.reads == 2


def test_kubelet_symlink_swap_is_followed(tmp_path: Path, echo: str) -> None:
    volume = KubeletVolume(tmp_path, TOKEN_A)
    auth = ServiceAccountTokenAuth(volume.path)
    with httpx.Client(auth=auth, timeout=5) as client:
        assert sent(client, echo) == f"Bearer {TOKEN_A}"
        volume.write(TOKEN_B)
        assert sent(client, echo) == f"Bearer {TOKEN_B}"
        volume.write(TOKEN_C)
        assert sent(client, echo) == f"Bearer {TOKEN_C}"
    assert auth.token_file.reads == 3


@pytest.mark.anyio
async def test_async_client_follows_rotation(tmp_path: Path, echo: str) -> None:
    volume = KubeletVolume(tmp_path, TOKEN_A)
    async with httpx.AsyncClient(auth=ServiceAccountTokenAuth(volume.path), timeout=5) as client:
        assert (await client.get(echo)).json()["authorization"] == f"Bearer {TOKEN_A}"
        volume.write(TOKEN_B)
        assert (await client.get(echo)).json()["authorization"] == f"Bearer {TOKEN_B}"


def test_same_size_rewrite_in_place_is_noticed(tmp_path: Path) -> None:
    """Even a rewrite in place (same inode, same size) is seen, through the nanosecond mtime."""
    path = tmp_path / "token"
    path.write_text(TOKEN_A)
    token_file = TokenFile(path)
    assert token_file.token() == TOKEN_A
    path.write_text(TOKEN_B)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # coarse-clock filesystems
    assert token_file.token() == TOKEN_B


# -- errors ----------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path, echo: str) -> None:
    path = tmp_path / "absent" / "token"
    with httpx.Client(auth=ServiceAccountTokenAuth(path), timeout=5) as client:
        with pytest.raises(TokenFileError) as info:
            client.get(echo)
    assert isinstance(info.value, OSError)
    assert info.value.filename == str(path)
    assert str(path) in str(info.value)
    assert "serviceAccountToken" in str(info.value)


@pytest.mark.anyio
async def test_empty_file(tmp_path: Path, echo: str) -> None:
    path = tmp_path / "token"
    path.write_text("\n")
    async with httpx.AsyncClient(auth=ServiceAccountTokenAuth(path), timeout=5) as client:
        with pytest.raises(TokenFileError, match="is empty") as info:
            await client.get(echo)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [f"{TOKEN_A} {TOKEN_B}", f"{TOKEN_A}\r\nX-Injected: 1", "tökén"])
def test_not_a_token(tmp_path: Path, content: str) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(TokenFileError, match="does not hold a token") as info:
        TokenFile(path).token()
    assert TOKEN_A not in str(info.value) and TOKEN_A not in repr(info.value)


def test_file_removed_after_use_raises(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN_A)
    token_file = TokenFile(path)
    assert token_file.token() == TOKEN_A
    path.unlink()
    with pytest.raises(TokenFileError) as info:
        token_file.token()
    assert TOKEN_A not in str(info.value)


def test_token_never_in_repr(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN_A)
    auth = ServiceAccountTokenAuth(path)
    auth.token_file.token()
    for text in (repr(auth), str(auth), repr(auth.token_file), repr(vars(auth))):
        assert TOKEN_A not in text
    assert repr(auth) == f"ServiceAccountTokenAuth(path={str(path)!r})"


# -- concurrency and read_token -------------------------------------------------------------------


def test_threads_share_one_auth_during_rotation(tmp_path: Path, echo: str) -> None:
    volume = KubeletVolume(tmp_path, TOKEN_A)
    auth = ServiceAccountTokenAuth(volume.path)
    ready, rotated = threading.Barrier(9, timeout=10), threading.Event()
    allowed = {f"Bearer {TOKEN_A}", f"Bearer {TOKEN_B}"}

    def worker(_: int) -> list[str | None]:
        with httpx.Client(auth=auth, timeout=5) as client:
            seen = [sent(client, echo) for _ in range(5)]
            ready.wait()  # every thread has sent the first token
            seen += [sent(client, echo) for _ in range(5)]  # racing the rotation
            assert rotated.wait(5)
            seen.append(sent(client, echo))  # after the rotation: must be the new token
        return seen

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(worker, i) for i in range(8)]
        ready.wait()
        volume.write(TOKEN_B)
        rotated.set()
        results = [f.result(timeout=30) for f in futures]
    for seen in results:
        assert seen[0] == f"Bearer {TOKEN_A}"
        assert set(seen) <= allowed
        assert seen[-1] == f"Bearer {TOKEN_B}"
    assert 2 <= auth.token_file.reads <= 2 * 8  # a few racing first reads at most, never one per request


def test_read_token_follows_rotation(tmp_path: Path) -> None:
    volume = KubeletVolume(tmp_path, TOKEN_A)
    assert read_token(volume.path) == TOKEN_A
    assert read_token(str(volume.path)) == TOKEN_A
    volume.write(TOKEN_B)
    assert read_token(volume.path) == TOKEN_B


def test_read_token_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="absent"):
        read_token(tmp_path / "absent")


# -- httpx2 ----------------------------------------------------------------------------------------


def test_httpx2_auth_is_another_class() -> None:
    """Why `ServiceAccountTokenAuth` is also callable: httpx2 clients take only their own `Auth`, or a callable."""
    assert httpx2.Auth is not httpx.Auth and not isinstance(ServiceAccountTokenAuth(), httpx2.Auth)
    assert isinstance(httpx2.Client(auth=ServiceAccountTokenAuth()).auth, httpx2.FunctionAuth)


def test_httpx2_stays_optional() -> None:
    """Installed or not, the core never imports httpx2: its runtime dependency is httpx."""
    code = "import sys, k8s_jwt_auth, k8s_jwt_auth.client; print(sorted(m for m in sys.modules if 'httpx' in m))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "httpx2" not in proc.stdout and "'httpx'" in proc.stdout


def test_httpx2_client_sends_the_token_and_follows_rotation(tmp_path: Path, echo: str) -> None:
    volume = KubeletVolume(tmp_path, TOKEN_A)
    auth = ServiceAccountTokenAuth(volume.path)
    with httpx2.Client(auth=auth, timeout=5) as client:
        assert client.get(echo).json() == {"authorization": f"Bearer {TOKEN_A}"}
        assert client.get(echo).json() == {"authorization": f"Bearer {TOKEN_A}"}
        volume.write(TOKEN_B)
        assert client.get(echo).json() == {"authorization": f"Bearer {TOKEN_B}"}
    assert auth.token_file.reads == 2


@pytest.mark.anyio
async def test_httpx2_async_client_sends_the_token_and_follows_rotation(tmp_path: Path, echo: str) -> None:
    volume = KubeletVolume(tmp_path, TOKEN_A)
    auth = ServiceAccountTokenAuth(volume.path)
    async with httpx2.AsyncClient(auth=auth, timeout=5) as client:
        assert (await client.get(echo)).json() == {"authorization": f"Bearer {TOKEN_A}"}
        volume.write(TOKEN_B)
        assert (await client.get(echo)).json() == {"authorization": f"Bearer {TOKEN_B}"}
    assert auth.token_file.reads == 2


@pytest.mark.anyio
async def test_httpx2_clients_pass_token_file_errors_through(tmp_path: Path, echo: str) -> None:
    auth = ServiceAccountTokenAuth(tmp_path / "absent")
    with httpx2.Client(auth=auth, timeout=5) as client, pytest.raises(TokenFileError, match="absent"):
        client.get(echo)
    async with httpx2.AsyncClient(auth=auth, timeout=5) as aclient:
        with pytest.raises(TokenFileError, match="absent"):
            await aclient.get(echo)


def test_one_auth_serves_httpx_and_httpx2_clients(tmp_path: Path, echo: str) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN_A)
    auth = ServiceAccountTokenAuth(path)
    with httpx.Client(auth=auth, timeout=5) as old, httpx2.Client(auth=auth, timeout=5) as new:
        assert sent(old, echo) == new.get(echo).json()["authorization"] == f"Bearer {TOKEN_A}"
    assert auth.token_file.reads == 1


def test_the_whole_library_runs_on_httpx2_after_alias_httpx(tmp_path: Path, echo: str) -> None:
    """`httpx2.alias_httpx()` before the first `import httpx`: the core's fetches and the auth use httpx2."""
    path = tmp_path / "token"
    path.write_text(TOKEN_A)
    script = textwrap.dedent(f"""
        import sys
        import httpx2
        httpx2.alias_httpx()

        from k8s_jwt_auth import TokenVerifier, VerifierConfig
        from k8s_jwt_auth.client import ServiceAccountTokenAuth
        from k8s_jwt_auth.testing import FakeIssuer

        assert sys.modules["httpx"] is httpx2 and issubclass(ServiceAccountTokenAuth, httpx2.Auth)
        with httpx2.Client(auth=ServiceAccountTokenAuth({str(path)!r}), timeout=5) as client:
            print(client.get({echo!r}).json()["authorization"])
        with FakeIssuer() as issuer:
            verifier = TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences=["test"]))
            print(verifier.verify(issuer.mint("payments", "api")).username, issuer.jwks_fetches)
    """)
    proc = subprocess.run([sys.executable, "-W", "error", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"Bearer {TOKEN_A}", "system:serviceaccount:payments:api 1"]


# -- requests --------------------------------------------------------------------------------------


def requests_sent(session: requests.Session, url: str) -> str | None:
    response = session.get(url, timeout=5)
    assert response.status_code == 200
    header: str | None = response.json()["authorization"]
    return header


def test_requests_session_sends_the_token_and_follows_rotation(tmp_path: Path, echo: str) -> None:
    volume = KubeletVolume(tmp_path, TOKEN_A)
    auth = RequestsTokenAuth(volume.path)
    assert isinstance(auth, requests.auth.AuthBase)
    with requests.Session() as session:
        session.auth = auth
        assert requests_sent(session, echo) == f"Bearer {TOKEN_A}"
        assert requests_sent(session, echo) == f"Bearer {TOKEN_A}"
        volume.write(TOKEN_B)  # no sleep: the next request sends the new token
        assert requests_sent(session, echo) == f"Bearer {TOKEN_B}"
        write_atomic(volume.path.resolve(), TOKEN_C)  # a rewrite of the file itself is seen too
        assert requests_sent(session, echo) == f"Bearer {TOKEN_C}"
    assert auth.token_file.reads == 3
    assert requests.get(echo, auth=auth, timeout=5).json() == {"authorization": f"Bearer {TOKEN_C}"}  # per request


def test_requests_missing_file_fails_the_request_clearly(tmp_path: Path, echo: str) -> None:
    path = tmp_path / "absent" / "token"
    with requests.Session() as session, pytest.raises(TokenFileError) as info:
        session.get(echo, auth=RequestsTokenAuth(path), timeout=5)
    assert info.value.filename == str(path) and "serviceAccountToken" in str(info.value)


def test_requests_never_sends_the_token_to_another_host_on_redirect(tmp_path: Path, echo: str) -> None:
    """A redirect from 127.0.0.1 to localhost: requests drops the header, and our auth is not applied again."""
    port = echo.rsplit(":", 1)[1]

    class Redirect(JsonHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{port}/")
            self.send_header("Content-Length", "0")
            self.end_headers()

    path = tmp_path / "token"
    path.write_text(TOKEN_A)
    with handler_server(Redirect) as (_, url), requests.Session() as session:
        response = session.get(url, auth=RequestsTokenAuth(path), timeout=5)
    assert response.history[0].status_code == 302
    assert response.json() == {"authorization": None}


def test_requests_auth_repr_holds_no_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN_A)
    auth = RequestsTokenAuth(path)
    auth.token_file.token()
    assert repr(auth) == f"RequestsTokenAuth(path={str(path)!r})" and TOKEN_A not in repr(vars(auth))
    assert RequestsTokenAuth().path == DEFAULT_TOKEN_PATH


def test_requests_threads_share_one_auth(tmp_path: Path, echo: str) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN_A)
    auth = RequestsTokenAuth(path)

    def worker(_: int) -> set[str | None]:
        with requests.Session() as session:
            session.auth = auth
            return {requests_sent(session, echo) for _ in range(5)}

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert set().union(*pool.map(worker, range(8))) == {f"Bearer {TOKEN_A}"}
    assert auth.token_file.reads <= 4


# -- end to end ------------------------------------------------------------------------------------


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse(request.user.workload.to_dict())


def test_end_to_end_to_a_protected_service(issuer: FakeIssuer, tmp_path: Path) -> None:
    """A FakeIssuer token, sent by ServiceAccountTokenAuth, to K8sJWTAuthMiddleware finding keys by discovery."""
    verifier = TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences="callee", allow="apps/caller"))
    app = Starlette(routes=[Route("/whoami", whoami)], middleware=[Middleware(K8sJWTAuthMiddleware, verifier=verifier)])
    volume = KubeletVolume(tmp_path, issuer.mint("apps", "caller", audiences="callee", pod="caller-1"))
    with uvicorn_server(app) as url, httpx.Client(auth=ServiceAccountTokenAuth(volume.path), timeout=10) as client:
        response = client.get(f"{url}/whoami")
        assert response.status_code == 200
        body = response.json()
        assert (body["namespace"], body["service_account"], body["pod_name"]) == ("apps", "caller", "caller-1")
        volume.write(issuer.mint("apps", "caller", audiences="someone-else"))
        response = client.get(f"{url}/whoami")
        assert response.status_code == 401
        assert response.json()["reason"] == "bad_audience"
