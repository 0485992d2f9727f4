"""Helpers shared by the ASGI adapters (Starlette, FastAPI, generic ASGI), on raw ASGI scopes.

Nothing here imports a web framework. The adapters read the credentials with `header_credentials`, hand them to
`k8s_jwt_auth.gate.Gate` and render its outcome. The ASGI types are Starlette's (`starlette.types`), spelled here so
that the generic middleware needs no framework.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from k8s_jwt_auth import AuthError, ServiceUnavailable
from k8s_jwt_auth.gate import Credentials, IdentityMemo
from k8s_jwt_auth.identity import WorkloadIdentity

__all__ = [
    "ASGIApp",
    "STATE_KEY",
    "WS_CLOSE_POLICY_VIOLATION",
    "WS_CLOSE_TRY_AGAIN_LATER",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "auth_scopes",
    "header_credentials",
    "route_path",
    "websocket_close_code",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATE_KEY = "k8s_jwt_auth"
"""The `app.state` attribute holding the app's `TokenVerifier` (set by `k8s_jwt_auth.integrations.fastapi.install`)."""

WS_CLOSE_POLICY_VIOLATION = 1008  # RFC 6455: invalid credentials or a denied workload
WS_CLOSE_TRY_AGAIN_LATER = 1013  # IANA registry: keys unavailable, retry later


def route_path(scope: Mapping[str, Any]) -> str:
    """The request path without the app's `root_path` (mount point or proxy prefix), as routers match it."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        return path[len(root):] or "/"
    return path


def auth_scopes(workload: WorkloadIdentity) -> tuple[str, ...]:
    """The Starlette auth scopes of a workload.

    `authenticated`, `workload`, `namespace:<ns>`, `serviceaccount:<ns>:<sa>`, one `audience:<aud>` per
    audience, and `pod-bound` for tokens bound to a pod.
    """
    scopes = _SCOPES.get(workload)  # a cached token verifies to the same identity object: built once
    return scopes if scopes is not None else _SCOPES.put(workload, _build_scopes(workload))


_SCOPES: IdentityMemo[tuple[str, ...]] = IdentityMemo()


def _build_scopes(workload: WorkloadIdentity) -> tuple[str, ...]:
    ns, sa = workload.namespace, workload.service_account
    scopes = ["authenticated", "workload", f"namespace:{ns}", f"serviceaccount:{ns}:{sa}"]
    scopes.extend(f"audience:{aud}" for aud in workload.audiences)
    if workload.is_pod_bound:
        scopes.append("pod-bound")
    return tuple(scopes)


def websocket_close_code(exc: AuthError) -> int:
    """1013 (try again later) when the token cannot be checked now, else 1008 (policy violation)."""
    return WS_CLOSE_TRY_AGAIN_LATER if isinstance(exc, ServiceUnavailable) else WS_CLOSE_POLICY_VIOLATION


def header_credentials(scope: Mapping[str, Any], key: bytes) -> Credentials:
    """The header `key` (lower-case bytes) of an ASGI scope as `Gate.admit` takes it: `None` when absent, its value
    as a `str` (Latin-1, as HTTP carries it) when sent once, every value when repeated (refused as `malformed`)."""
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
    size = len(key)  # only a name of the same length can match: no lower() for the others
    found: bytes | None = None
    repeated: list[bytes] | None = None
    for name, value in headers:  # a plain loop: no list for the usual single header
        if len(name) == size and (name == key or name.lower() == key):
            if found is None:
                found = value
            elif repeated is None:
                repeated = [found, value]
            else:
                repeated.append(value)
    if repeated is not None:
        return repeated
    return None if found is None else found.decode("latin-1")
