"""Framework-free helpers shared by the ASGI adapters (Starlette, FastAPI).

Everything here works on a raw ASGI `scope`; nothing imports a web framework. The adapters build on
`Authenticator`, which reads the bearer token, calls `TokenVerifier.verify_async`, applies a `Policy`
and logs outcomes with the token's fingerprint (never the token).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from k8s_jwt_auth import AuthError, InvalidToken, KeySetUnavailable, Policy, TokenVerifier, VerifierConfig
from k8s_jwt_auth._http import bearer_token
from k8s_jwt_auth._jws import fingerprint
from k8s_jwt_auth.errors import ConfigurationError
from k8s_jwt_auth.identity import WorkloadIdentity

__all__ = [
    "WS_CLOSE_POLICY_VIOLATION",
    "WS_CLOSE_TRY_AGAIN_LATER",
    "Authenticator",
    "PathMatcher",
    "auth_scopes",
    "build_verifier",
    "check_policy",
    "header_name",
    "log_rejection",
    "read_token",
    "route_path",
    "websocket_close_code",
]

WS_CLOSE_POLICY_VIOLATION = 1008  # RFC 6455: invalid credentials or a denied workload
WS_CLOSE_TRY_AGAIN_LATER = 1013  # IANA registry: keys unavailable, retry later

_TOKEN_CHARS = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")  # RFC 9110 field-name characters


def build_verifier(verifier: TokenVerifier | VerifierConfig | None) -> TokenVerifier:
    """The verifier an adapter uses: the one given, one built from a config, or one from the environment.

    Raises:
        ConfigurationError: when `K8S_JWT_AUTH_*` variables are missing or invalid, or `verifier` has a
            wrong type.
    """
    if verifier is None:
        return TokenVerifier(VerifierConfig.from_env())
    if isinstance(verifier, VerifierConfig):
        return TokenVerifier(verifier)
    if isinstance(verifier, TokenVerifier):
        return verifier
    raise ConfigurationError(f"verifier must be a TokenVerifier, a VerifierConfig or None (read K8S_JWT_AUTH_* "
                             f"variables), not {type(verifier).__name__}")


def header_name(name: str) -> bytes:
    """The lower-case ASGI form of a header name.

    Raises:
        ConfigurationError: when `name` is not a valid HTTP field name.
    """
    if not isinstance(name, str) or not _TOKEN_CHARS.fullmatch(name):
        raise ConfigurationError(f"header {name!r} is not a valid HTTP header name (e.g. 'authorization')")
    return name.lower().encode("ascii")


def route_path(scope: Mapping[str, Any]) -> str:
    """The request path without the app's `root_path` (mount point or proxy prefix), as routers match it."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        return path[len(root):] or "/"
    return path


class PathMatcher:
    """Matches request paths against exact paths (`/healthz`) and prefix patterns (`/public/*`).

    A prefix pattern `/public/*` matches `/public` and everything under `/public/`. Paths are compared
    as the router sees them (decoded, without `root_path`), with no normalisation.

    Raises:
        ConfigurationError: for a path that does not start with `/`, a `*` anywhere but a trailing `/*`,
            or a single string instead of a list.
    """

    __slots__ = ("exact", "prefixes")

    def __init__(self, paths: Sequence[str]) -> None:
        if isinstance(paths, (str, bytes)):
            raise ConfigurationError(f"exempt_paths must be a list of paths, not the string {paths!r}")
        exact: set[str] = set()
        prefixes: list[str] = []
        for path in paths:
            _check_path(path)
            if path.endswith("/*"):
                exact.add(path[:-2] or "/")
                prefixes.append(path[:-1])
            else:
                exact.add(path)
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)

    def __bool__(self) -> bool:
        return bool(self.exact)

    def __call__(self, path: str) -> bool:
        return path in self.exact or path.startswith(self.prefixes)


def _check_path(path: object) -> None:
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigurationError(f"exempt path {path!r} must be a string starting with '/' (e.g. '/healthz')")
    if "*" in path[:-2] or (path.endswith("*") and not path.endswith("/*")):
        raise ConfigurationError(f"exempt path {path!r}: '*' is only allowed as a trailing '/*' (e.g. '/public/*')")


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


def check_policy(workload: WorkloadIdentity, policy: Policy | None, logger: logging.Logger) -> None:
    """Apply `policy` to `workload`; a dry-run policy logs a would-be denial instead of raising.

    Raises:
        PolicyDenied: the policy denies the workload and is not in dry-run mode.
    """
    if policy is None or policy.is_open:
        return
    decision = policy.enforce(workload)
    if not decision.allowed:
        logger.warning("policy dry run: %s would be %s (token %s)", workload.username, decision.explanation,
                       workload.token_fingerprint or "-")


def log_rejection(logger: logging.Logger, scope: Mapping[str, Any], exc: AuthError, token: str | None = None) -> None:
    """Log why a request was refused: status, reason, path and the token's fingerprint (never the token)."""
    level = logging.WARNING if isinstance(exc, KeySetUnavailable) else logging.INFO
    logger.log(level, "rejected %s %s: %s %s: %s (token %s)", scope.get("type", "?"), scope.get("path", ""),
               exc.status_code, exc.reason, exc.message, fingerprint(token) if token else "-")


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
            check_policy(workload, self.policy, self.logger)
        except AuthError as exc:
            log_rejection(self.logger, scope, exc, token)
            raise
        self.logger.debug("authenticated %s (token %s)", workload.username, workload.token_fingerprint)
        return workload
