"""Helpers shared by the ASGI adapters (Starlette, FastAPI), on raw ASGI scopes.

Everything here works on a raw ASGI `scope`; nothing imports a web framework. The adapters build on
`Authenticator`, which reads the bearer token, calls `TokenVerifier.verify_async`, applies a `Policy`
and logs outcomes with the token's fingerprint (never the token).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from k8s_jwt_auth import AuthError, InvalidToken, KeySetUnavailable, Policy, TokenVerifier
from k8s_jwt_auth._http import bearer_token
from k8s_jwt_auth.identity import WorkloadIdentity

from ._common import check_policy, log_admission, log_rejection

__all__ = [
    "STATE_KEY",
    "WS_CLOSE_POLICY_VIOLATION",
    "WS_CLOSE_TRY_AGAIN_LATER",
    "Authenticator",
    "auth_scopes",
    "read_token",
    "route_path",
    "websocket_close_code",
]

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
    ns, sa = workload.namespace, workload.service_account
    scopes = ["authenticated", "workload", f"namespace:{ns}", f"serviceaccount:{ns}:{sa}"]
    scopes.extend(f"audience:{aud}" for aud in workload.audiences)
    if workload.is_pod_bound:
        scopes.append("pod-bound")
    return tuple(scopes)


def websocket_close_code(exc: AuthError) -> int:
    """1013 (try again later) when keys are unavailable, else 1008 (policy violation)."""
    return WS_CLOSE_TRY_AGAIN_LATER if isinstance(exc, KeySetUnavailable) else WS_CLOSE_POLICY_VIOLATION


def read_token(scope: Mapping[str, Any], header: bytes) -> str | None:
    """The bearer token in the `header` of an ASGI scope; `None` when it has no bearer credentials.

    Raises:
        InvalidToken: `malformed` (not `Bearer <token>`, or the header is repeated), `too_large`.
    """
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
    values = [value for key, value in headers if key.lower() == header]
    if len(values) > 1:
        raise InvalidToken("the request has more than one credentials header", reason="malformed")
    return bearer_token(values[0]) if values else None


class Authenticator:
    """Request → verified, policy-checked `WorkloadIdentity`, for one ASGI scope at a time.

    Args:
        verifier: the shared verifier.
        policy: the policy to apply (`None` or an open policy: none).
        header: the lower-case header name holding `Bearer <token>`.
        logger: where outcomes are logged (fingerprints only).
    """

    __slots__ = ("header", "logger", "policy", "verifier")

    def __init__(self, verifier: TokenVerifier, *, policy: Policy | None, header: bytes,
                 logger: logging.Logger) -> None:
        self.verifier = verifier
        self.policy = policy
        self.header = header
        self.logger = logger

    async def authenticate(self, scope: Mapping[str, Any]) -> WorkloadIdentity | None:
        """The verified workload, or `None` when the request has no bearer credentials.

        Raises:
            InvalidToken: the credentials are malformed or the token does not verify (logged).
            PolicyDenied: the policy denies the workload (logged).
            KeySetUnavailable: no keys to verify with (logged).
        """
        token = None
        try:
            token = read_token(scope, self.header)
            if token is None:
                return None
            workload = await self.verifier.verify_async(token)
            decision = check_policy(workload, self.policy, self.logger)
        except AuthError as exc:
            log_rejection(self.logger, exc, path=scope.get("path", ""), kind=scope.get("type", "http"), token=token,
                          method=scope.get("method"))
            raise
        log_admission(self.logger, workload, decision, path=scope.get("path", ""), method=scope.get("method"),
                      kind=scope.get("type", "http"))
        return workload
