"""The gRPC calling side of `k8s_jwt_auth.client`: send the projected token as `authorization: Bearer <token>`.

Loaded by `k8s_jwt_auth.client` on first use of one of its names, so that the core never needs grpcio:

* `grpc_call_credentials(path)` — a `grpc.CallCredentials`, for TLS channels (gRPC sends call credentials only
  over secure channels, or `grpc.local_channel_credentials()` on loopback);
* `GrpcTokenInterceptor(path)` — one sync client interceptor for the four call types
  (`grpc.intercept_channel(channel, GrpcTokenInterceptor(path))`), for any channel, plaintext included;
* `AioGrpcTokenInterceptor(path)` — the four `grpc.aio` client interceptors, one per call type (a `grpc.aio`
  channel files each interceptor object under one call type only):
  `grpc.aio.insecure_channel(target, interceptors=AioGrpcTokenInterceptor(path))`.

Each reads the token through a `TokenFile`: `stat`ed on every call, read again when the kubelet rotated it, so
the next call sends the new token. A missing or broken file fails the call: with `TokenFileError` (the sync
interceptor), or with an `UNAVAILABLE` status whose details are its message (call credentials, and the aio
interceptors, which raise it as a `grpc.aio.AioRpcError`); none ever holds the token.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, overload

try:
    import grpc
    import grpc.aio
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError('k8s_jwt_auth.client\'s gRPC credentials need grpcio: pip install "k8s-jwt-auth[grpc]"'
                      ) from exc

from .client import TokenFile, TokenFileError, _SendsTokenFile

__all__ = ["AioGrpcTokenInterceptor", "GrpcTokenInterceptor", "grpc_call_credentials"]

_KEY: Final = "authorization"

_Metadata = tuple[tuple[str, "str | bytes"], ...]


def _metadata(token_file: TokenFile, metadata: Iterable[tuple[str, str | bytes]] | None) -> _Metadata:
    """The call's metadata with our `authorization` (replacing any other: the server refuses a repeated one).

    Raises:
        TokenFileError: the token file is missing, unreadable, empty or not a token.
    """
    ours = (_KEY, f"Bearer {token_file.token()}")
    return (*(item for item in metadata or () if item[0] != _KEY), ours)


class _TokenPlugin(grpc.AuthMetadataPlugin):
    """The `AuthMetadataPlugin` behind `grpc_call_credentials` (gRPC calls it on its own threads)."""

    def __init__(self, token_file: TokenFile) -> None:
        self.token_file = token_file

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.token_file.path!r})"

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        try:
            token = self.token_file.token()
        except TokenFileError as exc:  # gRPC fails the call (UNAVAILABLE) with this message in its details
            callback((), exc)
            return
        callback(((_KEY, f"Bearer {token}"),), None)


def grpc_call_credentials(path: str | os.PathLike[str] | None = None) -> grpc.CallCredentials:
    """`grpc.CallCredentials` sending `authorization: Bearer <token>` from a projected token file on every call.

    ```python
    credentials = grpc.composite_channel_credentials(grpc.ssl_channel_credentials(ca), grpc_call_credentials(path))
    channel = grpc.secure_channel("payments-api.payments.svc:443", credentials)   # or grpc.aio.secure_channel
    ```

    gRPC sends call credentials over secure channels only (TLS, or `grpc.local_channel_credentials()` on
    loopback); inside a mesh that encrypts for you, use `GrpcTokenInterceptor` on a plaintext channel.

    Args:
        path: the token file; default the pod's own token (`DEFAULT_TOKEN_PATH`, audience: the API server).

    Returns:
        Call credentials for `grpc.composite_channel_credentials` (or a call's `credentials=`). A missing or
        broken file fails each call with `UNAVAILABLE`, its details naming the file and the fix.
    """
    return grpc.metadata_call_credentials(_TokenPlugin(TokenFile(path)), name="k8s-jwt-auth")


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                            "compression")),
    grpc.ClientCallDetails,
):
    """A sync call's details with new metadata (grpc.ClientCallDetails has no constructor)."""


class GrpcTokenInterceptor(_SendsTokenFile, grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                           grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """A sync gRPC client interceptor for the four call types: `authorization: Bearer <token>` on every call.

    ```python
    channel = grpc.intercept_channel(grpc.insecure_channel("payments-api.payments.svc:50051"),
                                     GrpcTokenInterceptor("/var/run/secrets/tokens/payments-api-token"))
    stub = PaymentsStub(channel)                  # generated stubs and channel.unary_unary(...) alike
    ```

    It works on any channel, plaintext included: use it on loopback or inside a mesh that encrypts traffic
    (a token sent in clear text can be replayed); over TLS, `grpc_call_credentials` is the native way. An
    `authorization` entry of the call's own metadata is replaced.

    Args:
        path: the token file; default the pod's own token (`DEFAULT_TOKEN_PATH`).

    Raises:
        TokenFileError: from the call (not at construction) when the file is missing, unreadable, empty or does
            not hold a token.
    """

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(details.method, details.timeout, _metadata(self.token_file, details.metadata),
                            details.credentials, getattr(details, "wait_for_ready", None),
                            getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation: Any, client_call_details: grpc.ClientCallDetails,
                              request: Any) -> Any:
        """Send a unary-unary call with the token."""
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: grpc.ClientCallDetails,
                               request: Any) -> Any:
        """Send a unary-stream call with the token."""
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation: Any, client_call_details: grpc.ClientCallDetails,
                               request_iterator: Iterator[Any]) -> Any:
        """Send a stream-unary call with the token."""
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, client_call_details: grpc.ClientCallDetails,
                                request_iterator: Iterator[Any]) -> Any:
        """Send a stream-stream call with the token."""
        return continuation(self._details(client_call_details), request_iterator)


class _AioInterceptor:
    """What the four aio interceptors share: the token file, and the call's details with the token."""

    def __init__(self, token_file: TokenFile) -> None:
        self.token_file = token_file

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.token_file.path!r})"

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        """The call's details with the token.

        Raises:
            grpc.aio.AioRpcError: `UNAVAILABLE`, the token file is missing or broken: the details are the
                `TokenFileError`'s message (its `__cause__`). grpc.aio expects an `AioRpcError` from interceptors:
                releases up to at least 1.74 report any other exception again, in `InterceptedCall.__del__`, when
                the call is garbage-collected (grpc/grpc#40964).
        """
        try:
            token_metadata = _metadata(self.token_file, details.metadata)
        except TokenFileError as exc:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                       details=str(exc)) from exc
        return grpc.aio.ClientCallDetails(details.method, details.timeout, grpc.aio.Metadata(*token_metadata),
                                          details.credentials, details.wait_for_ready)


class _AioUnaryUnary(_AioInterceptor, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails,
                                    request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _AioUnaryStream(_AioInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails,
                                     request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _AioStreamUnary(_AioInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails,
                                     request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _AioStreamStream(_AioInterceptor, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails,
                                      request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class AioGrpcTokenInterceptor(_SendsTokenFile, Sequence[grpc.aio.ClientInterceptor]):
    """The `grpc.aio` client interceptors for the four call types: `authorization: Bearer <token>` on every call.

    A `grpc.aio` channel files each interceptor object under one call type only, so this is a sequence of four
    interceptors sharing one token file; pass it as `interceptors=` (or unpack it next to others):

    ```python
    channel = grpc.aio.insecure_channel("payments-api.payments.svc:50051",
                                        interceptors=AioGrpcTokenInterceptor("/var/run/secrets/tokens/api-token"))
    channel = grpc.aio.insecure_channel(target, interceptors=[*AioGrpcTokenInterceptor(path), other])
    ```

    As `GrpcTokenInterceptor`: any channel (use plaintext only on loopback or inside a mesh), the call's own
    `authorization` entry replaced; the file is `stat`ed on the event loop (a few µs, no thread hop).

    Args:
        path: the token file; default the pod's own token (`DEFAULT_TOKEN_PATH`).

    Raises:
        grpc.aio.AioRpcError: from the call (not at construction), `UNAVAILABLE`, when the file is missing,
            unreadable, empty or does not hold a token; the details name the file and the fix, and `__cause__` is
            the `TokenFileError`. (grpc.aio handles an `AioRpcError` from interceptors; many grpcio releases report
            any other exception a second time, when the call is garbage-collected: grpc/grpc#40964.)
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(path)
        self._interceptors: tuple[grpc.aio.ClientInterceptor, ...] = (
            _AioUnaryUnary(self.token_file), _AioUnaryStream(self.token_file), _AioStreamUnary(self.token_file),
            _AioStreamStream(self.token_file))

    @overload
    def __getitem__(self, index: int) -> grpc.aio.ClientInterceptor: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[grpc.aio.ClientInterceptor]: ...

    def __getitem__(self, index: int | slice) -> grpc.aio.ClientInterceptor | Sequence[grpc.aio.ClientInterceptor]:
        return self._interceptors[index]

    def __len__(self) -> int:
        return len(self._interceptors)
