"""The gRPC calling side of `k8s_jwt_auth.client`: `GrpcTokenInterceptor`, `AioGrpcTokenInterceptor` and
`grpc_call_credentials`, against real gRPC servers on 127.0.0.1.

An echo service answers, for each of the four call types, the `authorization` values it received; the rotation
tests rewrite the token file between calls (a kubelet-style symlink swap). The end-to-end tests send FakeIssuer
tokens to a server protected by our own interceptor.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from k8s_jwt_auth.client import (
    AioGrpcTokenInterceptor,
    GrpcTokenInterceptor,
    TokenFileError,
    grpc_call_credentials,
)
from k8s_jwt_auth.integrations.grpc import AioK8sJWTAuthInterceptor, K8sJWTAuthInterceptor
from k8s_jwt_auth.testing import FakeIssuer

from ._asgi import static_verifier
from ._grpc import KINDS, call, decode, encode, method, serve_sync, sync_handlers
from .test_client import TOKEN_A, TOKEN_B, TOKEN_C, KubeletVolume

ECHO = "test.Metadata"
LOCAL_TCP = grpc.LocalConnectionType.LOCAL_TCP


def _sent(context: grpc.ServicerContext) -> list[str | bytes]:
    return [value for key, value in context.invocation_metadata() if key == "authorization"]


def _uu(request: Any, context: grpc.ServicerContext) -> Any:
    return _sent(context)


def _us(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
    yield _sent(context)


def _su(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
    list(requests)
    return _sent(context)


def _ss(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    list(requests)
    yield _sent(context)


def metadata_echo() -> grpc.GenericRpcHandler:
    """Every method answers the list of `authorization` values its call carried."""
    factories = (grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler,
                 grpc.stream_unary_rpc_method_handler, grpc.stream_stream_rpc_method_handler)
    return grpc.method_handlers_generic_handler(ECHO, {
        method(kind).rsplit("/", 1)[1]: factory(behaviour, request_deserializer=decode, response_serializer=encode)
        for kind, factory, behaviour in zip(KINDS, factories, (_uu, _us, _su, _ss), strict=True)})


def sent(channel: grpc.Channel, kind: str, **options: Any) -> list[str]:
    """The `authorization` values the server got for one call of `kind`."""
    result = call(channel, kind, name=method(kind, ECHO), **options)
    values: list[str] = result[0] if kind.endswith("stream") else result
    return values


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    with serve_sync([], metadata_echo()) as address:
        yield address


@pytest.fixture(scope="module")
def local_target() -> Iterator[str]:
    """A server with local credentials: gRPC sends call credentials over it (as over TLS)."""
    pool = futures.ThreadPoolExecutor(2)
    server = grpc.server(pool, handlers=[metadata_echo()])
    port = server.add_secure_port("127.0.0.1:0", grpc.local_server_credentials(LOCAL_TCP))
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait(10)
        pool.shutdown(wait=True)


@pytest.fixture
def volume(tmp_path: Path) -> KubeletVolume:
    return KubeletVolume(tmp_path, TOKEN_A)


# -- GrpcTokenInterceptor (sync) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_sync_interceptor_sends_the_token_and_follows_rotation(target: str, volume: KubeletVolume,
                                                               kind: str) -> None:
    interceptor = GrpcTokenInterceptor(volume.path)
    with grpc.insecure_channel(target) as plain:
        channel = grpc.intercept_channel(plain, interceptor)
        assert sent(channel, kind) == [f"Bearer {TOKEN_A}"]
        assert sent(channel, kind) == [f"Bearer {TOKEN_A}"]
        volume.write(TOKEN_B)  # the kubelet rotates: the very next call sends the new token
        assert sent(channel, kind) == [f"Bearer {TOKEN_B}"]
    assert interceptor.token_file.reads == 2


def test_sync_interceptor_replaces_the_calls_own_authorization(target: str, volume: KubeletVolume) -> None:
    with grpc.insecure_channel(target) as plain:
        channel = grpc.intercept_channel(plain, GrpcTokenInterceptor(volume.path))
        for kind in KINDS:
            assert sent(channel, kind, metadata=[("authorization", "Bearer stale"), ("x-trace", "1")]) == [
                f"Bearer {TOKEN_A}"]


@pytest.mark.parametrize("kind", KINDS)
def test_sync_interceptor_missing_file_fails_the_call_clearly(target: str, tmp_path: Path, kind: str) -> None:
    path = tmp_path / "absent" / "token"
    with grpc.insecure_channel(target) as plain:
        channel = grpc.intercept_channel(plain, GrpcTokenInterceptor(path))
        with pytest.raises(TokenFileError) as info:
            sent(channel, kind)
    assert info.value.filename == str(path) and "serviceAccountToken" in str(info.value)


def test_sync_interceptor_repr_and_default_path(volume: KubeletVolume) -> None:
    interceptor = GrpcTokenInterceptor(volume.path)
    interceptor.token_file.token()
    assert repr(interceptor) == f"GrpcTokenInterceptor(path={str(volume.path)!r})"
    assert TOKEN_A not in repr(interceptor) and TOKEN_A not in repr(vars(interceptor))
    assert GrpcTokenInterceptor().path == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert isinstance(interceptor, grpc.StreamStreamClientInterceptor)


# -- AioGrpcTokenInterceptor -------------------------------------------------------------------------------------


async def aio_sent(channel: grpc.aio.Channel, kind: str, **options: Any) -> list[str]:
    multicallable = getattr(channel, kind)(method(kind, ECHO), request_serializer=encode,
                                           response_deserializer=decode)

    async def requests() -> AsyncIterator[int]:
        for i in range(2):
            yield i

    argument: Any = requests() if kind.startswith("stream") else 1
    result = multicallable(argument, timeout=10, **options)
    if kind.endswith("stream"):
        values: list[str] = [r async for r in result][0]
        return values
    answer: list[str] = await result
    return answer


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_aio_interceptors_send_the_token_and_follow_rotation(target: str, volume: KubeletVolume,
                                                                   kind: str) -> None:
    interceptors = AioGrpcTokenInterceptor(volume.path)
    async with grpc.aio.insecure_channel(target, interceptors=interceptors) as channel:
        assert await aio_sent(channel, kind) == [f"Bearer {TOKEN_A}"]
        volume.write(TOKEN_B)
        assert await aio_sent(channel, kind) == [f"Bearer {TOKEN_B}"]
        assert await aio_sent(channel, kind, metadata=(("authorization", "Bearer stale"),)) == [f"Bearer {TOKEN_B}"]
    assert interceptors.token_file.reads == 2


@pytest.mark.anyio
async def test_aio_interceptors_unpack_next_to_others(target: str, volume: KubeletVolume) -> None:
    seen: list[str] = []

    class Spy(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            seen.append(details.method)
            return await continuation(details, request)

    interceptors = AioGrpcTokenInterceptor(volume.path)
    assert len(interceptors) == 4 and len({type(i) for i in interceptors}) == 4
    async with grpc.aio.insecure_channel(target, interceptors=[*interceptors, Spy()]) as channel:
        for kind in KINDS:
            assert await aio_sent(channel, kind) == [f"Bearer {TOKEN_A}"]
    assert len(seen) == 1


def test_aio_interceptors_as_one_object_is_refused_by_grpc(volume: KubeletVolume) -> None:
    """Passed inside a list, it is no interceptor: grpc refuses it loudly, never sends some calls without a token."""
    async def build() -> None:
        grpc.aio.insecure_channel("127.0.0.1:1", interceptors=[AioGrpcTokenInterceptor(volume.path)])  # type: ignore[list-item]

    with pytest.raises(ValueError, match="AioGrpcTokenInterceptor"):
        asyncio.run(build())


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_aio_interceptors_missing_file_fails_the_call_clearly(target: str, tmp_path: Path, kind: str) -> None:
    """An `AioRpcError` (UNAVAILABLE, as call credentials answer): grpc.aio handles no other exception from an
    interceptor cleanly (grpc/grpc#40964: reported again at garbage collection, an error under this suite)."""
    path = tmp_path / "token"
    async with grpc.aio.insecure_channel(target, interceptors=AioGrpcTokenInterceptor(path)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await aio_sent(channel, kind)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (details := info.value.details()) is not None
    assert details.startswith(f"cannot read the token file {str(path)!r}") and "serviceAccountToken" in details
    assert isinstance(info.value.__cause__, TokenFileError) and info.value.__cause__.filename == str(path)


# -- grpc_call_credentials ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_call_credentials_send_the_token_and_follow_rotation(local_target: str, volume: KubeletVolume,
                                                             kind: str) -> None:
    credentials = grpc.composite_channel_credentials(grpc.local_channel_credentials(LOCAL_TCP),
                                                     grpc_call_credentials(volume.path))
    with grpc.secure_channel(local_target, credentials) as channel:
        assert sent(channel, kind) == [f"Bearer {TOKEN_A}"]
        volume.write(TOKEN_B)
        assert sent(channel, kind) == [f"Bearer {TOKEN_B}"]
        volume.write(TOKEN_C)
        assert sent(channel, kind) == [f"Bearer {TOKEN_C}"]


def test_call_credentials_missing_file_is_unavailable_with_the_fix(local_target: str, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN_A)
    credentials = grpc.composite_channel_credentials(grpc.local_channel_credentials(LOCAL_TCP),
                                                     grpc_call_credentials(path))
    with grpc.secure_channel(local_target, credentials) as channel:
        assert sent(channel, "unary_unary") == [f"Bearer {TOKEN_A}"]
        path.unlink()
        with pytest.raises(grpc.RpcError) as info:
            sent(channel, "unary_unary")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert str(path) in info.value.details() and "serviceAccountToken" in info.value.details()
    assert TOKEN_A not in info.value.details()


def test_call_credentials_are_never_sent_in_clear_text(target: str, volume: KubeletVolume) -> None:
    """gRPC itself refuses call credentials on an insecure channel: the token never leaves in clear text."""
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(method("unary_unary", ECHO), request_serializer=encode, response_deserializer=decode)(
            1, timeout=10, credentials=grpc_call_credentials(volume.path))
    assert "security level" in info.value.details()  # refused by the client's gRPC: no call was sent


@pytest.mark.anyio
async def test_call_credentials_on_an_aio_channel(local_target: str, volume: KubeletVolume) -> None:
    credentials = grpc.composite_channel_credentials(grpc.local_channel_credentials(LOCAL_TCP),
                                                     grpc_call_credentials(volume.path))
    async with grpc.aio.secure_channel(local_target, credentials) as channel:
        for kind in KINDS:
            assert await aio_sent(channel, kind) == [f"Bearer {TOKEN_A}"]


# -- end to end: our client, our server, FakeIssuer tokens --------------------------------------------------------


def test_end_to_end_sync(issuer: FakeIssuer, tmp_path: Path) -> None:
    verifier = static_verifier(issuer, audiences=["callee"], allow=["apps/caller"])
    volume = KubeletVolume(tmp_path, issuer.mint("apps", "caller", audiences="callee", pod="caller-1"))
    with serve_sync([K8sJWTAuthInterceptor(verifier)], sync_handlers()) as address, \
            grpc.insecure_channel(address) as plain:
        channel = grpc.intercept_channel(plain, GrpcTokenInterceptor(volume.path))
        for kind in KINDS:
            result = call(channel, kind, requests=1)
            assert (result[0] if isinstance(result, list) else result)["who"] == "system:serviceaccount:apps:caller"
        volume.write(issuer.mint("apps", "caller", audiences="someone-else"))
        with pytest.raises(grpc.RpcError) as info:
            call(channel, "unary_unary")
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert info.value.details().startswith("bad_audience: ")


@pytest.mark.anyio
async def test_end_to_end_aio(issuer: FakeIssuer, tmp_path: Path) -> None:
    """The aio server and the aio client on one event loop: with grpcio 1.62 (the lower bound), grpc.aio on two
    loops in two threads of one process fails (BlockingIOError in its completion-queue poller)."""
    verifier = static_verifier(issuer, audiences=["callee"], allow=["apps/caller"])
    volume = KubeletVolume(tmp_path, issuer.mint("apps", "caller", audiences="callee"))
    server = grpc.aio.server(interceptors=[AioK8sJWTAuthInterceptor(verifier)], handlers=[sync_handlers()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                             interceptors=AioGrpcTokenInterceptor(volume.path)) as channel:
            hello = channel.unary_unary(method("unary_unary"), request_serializer=encode, response_deserializer=decode)
            assert (await hello(1, timeout=10))["who"] == "system:serviceaccount:apps:caller"
            volume.write(issuer.mint("orders", "api", audiences="callee"))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await hello(1, timeout=10)
    finally:
        await server.stop(None)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


# -- grpcio stays optional ---------------------------------------------------------------------------------------


def test_the_client_module_imports_neither_grpc_nor_requests() -> None:
    code = ("import sys, k8s_jwt_auth, k8s_jwt_auth.client\n"
            "from k8s_jwt_auth.client import *\n"
            "print(json.dumps(sorted(m for m in ('grpc', 'requests') if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-W", "error", "-c", "import json\n" + code], capture_output=True,
                          text=True, timeout=60, check=True)
    assert json.loads(proc.stdout) == []


@pytest.mark.parametrize(("name", "missing", "extra"), [
    ("GrpcTokenInterceptor", "grpc", "grpc"),
    ("grpc_call_credentials", "grpc", "grpc"),
    ("AioGrpcTokenInterceptor", "grpc", "grpc"),
    ("RequestsTokenAuth", "requests", "requests"),
])
def test_a_missing_package_names_its_extra(name: str, missing: str, extra: str) -> None:
    code = (f"import sys; sys.modules[{missing!r}] = None\n"
            "import k8s_jwt_auth.client\n"
            "try:\n"
            f"    from k8s_jwt_auth.client import {name}\n"
            "except ImportError as exc:\n"
            "    print(exc)\n")
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60,
                          check=True)
    assert f'pip install "k8s-jwt-auth[{extra}]"' in proc.stdout


def test_unknown_names_are_attribute_errors() -> None:
    import k8s_jwt_auth.client as client

    with pytest.raises(AttributeError, match="no attribute 'GrpcTokenInterceptr'"):
        client.GrpcTokenInterceptr  # noqa: B018
    assert {"GrpcTokenInterceptor", "RequestsTokenAuth"} <= set(dir(client))
