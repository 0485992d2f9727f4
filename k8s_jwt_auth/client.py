"""The calling side: send the pod's projected service-account token on outgoing requests.

```python
import httpx
from k8s_jwt_auth.client import ServiceAccountTokenAuth, read_token

auth = ServiceAccountTokenAuth("/var/run/secrets/tokens/payments-api-token")
with httpx.Client(auth=auth) as client:            # or httpx.AsyncClient, httpx2.Client, httpx2.AsyncClient
    client.get("http://payments-api.payments.svc/charge")

headers = {"Authorization": f"Bearer {read_token('/var/run/secrets/tokens/payments-api-token')}"}  # any client
```

The token comes from a file the kubelet keeps fresh: a projected `serviceAccountToken` volume (with the
`audience` the callee verifies), or, without a path, the pod's default token at
`/var/run/secrets/kubernetes.io/serviceaccount/token` (its audience is the API server, so most callees
refuse it: prefer a projected token per callee).

How rotation is followed: the kubelet rewrites the token well before it expires by swapping the volume's
`..data` symlink to a new directory, so the token file gets a new inode. Before every request the file is
`os.stat`ed (following symlinks); only when `(st_dev, st_ino, st_size, st_mtime_ns)` differs from the file
last read is it read again. A `stat` costs about 2 µs, well under 1 % of an HTTP request, so there is no
check interval: a rotated token is sent from the very next request. The file is read (a few hundred bytes,
once per rotation) on the calling thread, also under `httpx.AsyncClient`: a local `stat` is cheaper than a
hop to a worker thread, so the async flow does not use one.

httpx2 (the Pydantic-maintained fork of httpx 0.28.1) has its own `httpx2.Auth` class, not `httpx.Auth`, and its
clients refuse any other object as `auth=` except a callable `(request) -> request`, which they wrap in
`httpx2.FunctionAuth` (run by both `Client` and `AsyncClient`). So `ServiceAccountTokenAuth` is such a callable
as well, and this module never imports httpx2. (After `httpx2.alias_httpx()`, `httpx` *is* httpx2 and it is an
`httpx2.Auth` subclass.)

Other clients, from the same `TokenFile` logic (each loaded on first use, so the core needs neither grpcio nor
requests; the module's `__getattr__` raises an `ImportError` naming the extra to install when it is missing):

* `RequestsTokenAuth(path)` — a `requests.auth.AuthBase` for `requests` sessions (extra `requests`);
* `grpc_call_credentials(path)` — `grpc.CallCredentials` for TLS channels (extra `grpc`);
* `GrpcTokenInterceptor(path)` — a sync gRPC client interceptor for the four call types, for any channel;
* `AioGrpcTokenInterceptor(path)` — the four `grpc.aio` client interceptors, as one `interceptors=` sequence.

```python
session.auth = RequestsTokenAuth(path)
channel = grpc.intercept_channel(grpc.insecure_channel(target), GrpcTokenInterceptor(path))
channel = grpc.aio.insecure_channel(target, interceptors=AioGrpcTokenInterceptor(path))
```

Errors: `TokenFileError` (an `OSError`) when the file is missing, unreadable, empty or does not hold a
token. Its message names the path and the fix; the token itself is never in a message, a log or a `repr`.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Generator, MutableMapping
from typing import TYPE_CHECKING, Protocol, TypeVar

import httpx

if TYPE_CHECKING:  # loaded on first use by __getattr__: grpcio and requests are optional
    from ._grpc_client import AioGrpcTokenInterceptor as AioGrpcTokenInterceptor
    from ._grpc_client import GrpcTokenInterceptor as GrpcTokenInterceptor
    from ._grpc_client import grpc_call_credentials as grpc_call_credentials
    from ._requests_auth import RequestsTokenAuth as RequestsTokenAuth

__all__ = ["DEFAULT_TOKEN_PATH", "ServiceAccountTokenAuth", "TokenFile", "TokenFileError", "read_token"]
# not in __all__: `from k8s_jwt_auth.client import *` must work without grpcio or requests installed
_LAZY = {"AioGrpcTokenInterceptor": "_grpc_client", "GrpcTokenInterceptor": "_grpc_client",
         "grpc_call_credentials": "_grpc_client", "RequestsTokenAuth": "_requests_auth"}

DEFAULT_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
"""The pod's default service-account token, used when no path is given."""

_FIX = ("mount a projected serviceAccountToken volume (with the audience the callee verifies) at this path, "
        "or pass the path of the mounted token")
_MAX_TOKEN_FILE = 64 * 1024  # real tokens are ~1 KiB; anything this large is not a token

_Signature = tuple[int, int, int, int]


class _HasHeaders(Protocol):
    @property
    def headers(self) -> MutableMapping[str, str]: ...


_R = TypeVar("_R", bound=_HasHeaders)


class TokenFileError(OSError):
    """The token file is missing, unreadable, empty or does not hold a token.

    `filename` (as on every `OSError`) is the path. The message names the path and how to fix it, never the
    file's contents.
    """

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.filename = path

    def __str__(self) -> str:
        return str(self.args[0])


class TokenFile:
    """A token file, read again only when it changes (see the module docstring). Thread-safe.

    Args:
        path: the token file; default `DEFAULT_TOKEN_PATH`.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = os.fspath(path) if path is not None else DEFAULT_TOKEN_PATH
        self._lock = threading.Lock()
        self._signature: _Signature | None = None
        self._token = ""
        self.reads = 0
        """How many times the file was read (not just `stat`ed): observable, for tests and diagnostics."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r})"

    def token(self) -> str:
        """The current token: cached while the file's `stat` is unchanged, read again when it changes.

        Raises:
            TokenFileError: the file is missing, unreadable, empty or not a token.
        """
        signature = _signature(self._stat())
        with self._lock:
            if signature == self._signature:
                return self._token
        token, signature = self._read()
        with self._lock:  # a slower reader may store an older pair; the next stat differs and fixes it
            self._signature, self._token = signature, token
            self.reads += 1
        return token

    def _stat(self) -> os.stat_result:
        try:
            return os.stat(self.path)
        except OSError as exc:
            raise self._error(f"cannot read the token file {self.path!r}: {exc.strerror}") from exc

    def _read(self) -> tuple[str, _Signature]:
        """Read the file, with the `stat` of exactly the file read (the path may be swapped meanwhile)."""
        try:
            with open(self.path, "rb") as fh:
                signature = _signature(os.fstat(fh.fileno()))
                data = fh.read(_MAX_TOKEN_FILE + 1)
        except OSError as exc:
            raise self._error(f"cannot read the token file {self.path!r}: {exc.strerror}") from exc
        token = data.strip()
        if not token:
            raise self._error(f"the token file {self.path!r} is empty")
        if len(data) > _MAX_TOKEN_FILE or not _is_token(token):
            raise self._error(f"the token file {self.path!r} does not hold a token")
        return token.decode("ascii"), signature

    def _error(self, message: str) -> TokenFileError:
        return TokenFileError(f"{message}; {_FIX}", self.path)


class _SendsTokenFile:
    """What every calling-side helper holds: the projected token file, `stat`ed per call and re-read on rotation.

    `ServiceAccountTokenAuth`, `RequestsTokenAuth`, `GrpcTokenInterceptor` and `AioGrpcTokenInterceptor` are built
    on it (`path=None`: `DEFAULT_TOKEN_PATH`).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.token_file = TokenFile(path)

    @property
    def path(self) -> str:
        """The token file."""
        return self.token_file.path

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r})"


class ServiceAccountTokenAuth(_SendsTokenFile, httpx.Auth):
    """httpx authentication: `Authorization: Bearer <token>` from a projected service-account token file.

    Works with `httpx.Client` and `httpx.AsyncClient` (as an `httpx.Auth`), and with `httpx2.Client` and
    `httpx2.AsyncClient` (as a callable that sets the header); one instance may be shared by threads and
    clients. The file is `stat`ed on every request and read again only when the kubelet rotated it.

    Args:
        path: the token file; default `DEFAULT_TOKEN_PATH` (the pod's own API-server token).

    Raises:
        TokenFileError: on a request (not at construction), when the file is missing, unreadable, empty
            or does not hold a token. httpx passes it through unwrapped.
    """

    def __call__(self, request: _R) -> _R:
        """Set `Authorization: Bearer <token>` on `request` and return it: the callable form of `auth=` that
        httpx2 clients accept (they wrap it in `httpx2.FunctionAuth`).

        Raises:
            TokenFileError: the file is missing, unreadable, empty or not a token.
        """
        request.headers["Authorization"] = f"Bearer {self.token_file.token()}"
        return request

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        yield self(request)


_files: dict[str, TokenFile] = {}
_files_lock = threading.Lock()


def read_token(path: str | os.PathLike[str] | None = None) -> str:
    """The current token in `path` (default `DEFAULT_TOKEN_PATH`), for clients other than httpx.

    Cached with the same change check as `ServiceAccountTokenAuth`: call it on every request
    (`requests`, `aiohttp`, gRPC metadata `("authorization", f"Bearer {read_token(path)}")`). The cache holds
    one `TokenFile` per absolute path, and only file contents: no network state.

    Raises:
        TokenFileError: the file is missing, unreadable, empty or does not hold a token.
    """
    key = os.path.abspath(os.fspath(path) if path is not None else DEFAULT_TOKEN_PATH)
    with _files_lock:
        token_file = _files.get(key)
        if token_file is None:
            token_file = _files[key] = TokenFile(key)
    return token_file.token()


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _is_token(token: bytes) -> bool:
    """Printable ASCII without spaces: anything else cannot go into an `Authorization` header."""
    return all(0x21 <= byte <= 0x7E for byte in token)


def __getattr__(name: str) -> object:
    """Load the clients that need an optional package (grpcio, requests) on first use.

    Raises:
        ImportError: the package is not installed; the message names the extra (`pip install "k8s-jwt-auth[grpc]"`).
        AttributeError: no such name.
    """
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value: object = getattr(importlib.import_module(f"{__package__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
