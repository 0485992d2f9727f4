"""Framework-free helpers shared by every adapter (Starlette, FastAPI, Flask, Django).

Nothing here imports a web framework: building the verifier an adapter uses, validating header names,
matching exempt paths, applying a policy (dry run included), and logging every decision (`log_admission`,
`log_rejection`): a line on the adapter's logger and one audit record on `k8s_jwt_auth.audit`, with the
token's fingerprint (never the token).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence

from k8s_jwt_auth import AuthError, Decision, KeySetUnavailable, Policy, TokenVerifier, VerifierConfig
from k8s_jwt_auth._jws import fingerprint
from k8s_jwt_auth.audit import audit_allowed, audit_refused, printable
from k8s_jwt_auth.errors import ConfigurationError
from k8s_jwt_auth.identity import WorkloadIdentity

__all__ = ["PathMatcher", "build_verifier", "check_policy", "header_name", "log_admission", "log_rejection"]

_TOKEN_CHARS = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")  # RFC 9110 field-name characters


def build_verifier(
    verifier: TokenVerifier | VerifierConfig | None,
    default: Callable[[], VerifierConfig] = VerifierConfig.from_env,
) -> TokenVerifier:
    """The verifier an adapter uses: the one given, one built from a config, or one from `default()`.

    Args:
        verifier: what the user gave.
        default: the settings to use when nothing was given (`K8S_JWT_AUTH_*` environment variables).

    Raises:
        ConfigurationError: when the settings are missing or invalid, or `verifier` has a wrong type.
    """
    if verifier is None:
        return TokenVerifier(default())
    if isinstance(verifier, VerifierConfig):
        return TokenVerifier(verifier)
    if isinstance(verifier, TokenVerifier):
        return verifier
    raise ConfigurationError(f"verifier must be a TokenVerifier, a VerifierConfig or None (to read the settings), "
                             f"not {type(verifier).__name__}")


def header_name(name: str) -> bytes:
    """The lower-case ASGI form of a header name.

    Raises:
        ConfigurationError: when `name` is not a valid HTTP field name.
    """
    if not isinstance(name, str) or not _TOKEN_CHARS.fullmatch(name):
        raise ConfigurationError(f"header {name!r} is not a valid HTTP header name (e.g. 'authorization')")
    return name.lower().encode("ascii")


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


def check_policy(workload: WorkloadIdentity, policy: Policy | None, logger: logging.Logger) -> Decision | None:
    """Apply `policy` to `workload`; a dry-run policy logs a would-be denial instead of raising.

    Returns:
        The decision, for `log_admission` (`None` when there is no policy to apply).

    Raises:
        PolicyDenied: the policy denies the workload and is not in dry-run mode.
    """
    if policy is None or policy.is_open:
        return None
    decision = policy.enforce(workload)
    if not decision.allowed:
        logger.warning("policy dry run: %s would be %s (token %s)", workload.username, decision.explanation,
                       workload.token_fingerprint or "-")
    return decision


def log_admission(logger: logging.Logger, workload: WorkloadIdentity, decision: Decision | None, *, path: str,
                  method: str | None = None, kind: str = "http") -> None:
    """Log a request let through: a debug line and one audit record (`allowed` or `dry_run_denied`)."""
    logger.debug("authenticated %s (token %s)", workload.username, workload.token_fingerprint)
    audit_allowed(workload, decision, path=path, method=method, transport=kind)


def log_rejection(logger: logging.Logger, exc: AuthError, *, path: str, kind: str = "http",
                  token: str | None = None, method: str | None = None) -> None:
    """Log why a request was refused: status, reason, path and the token's fingerprint (never the token).

    Also emits the request's one audit record (`denied_policy`, `rejected_token` or `unavailable`).
    """
    level = logging.WARNING if isinstance(exc, KeySetUnavailable) else logging.INFO
    logger.log(level, "rejected %s %s: %s %s: %s (token %s)", kind, printable(path), exc.status_code, exc.reason,
               printable(exc.message), fingerprint(token) if token else "-")
    audit_refused(exc, token=token, path=path, method=method, transport=kind)
