"""Framework-free helpers shared by every adapter (Starlette, FastAPI, Flask, Django): building the verifier, and
the read-only view of an adapter's gate and options its state object offers.

The request pipeline itself is `k8s_jwt_auth.gate.Gate`; the options are `k8s_jwt_auth.options.AdapterOptions`.
"""

from __future__ import annotations

from collections.abc import Callable

from k8s_jwt_auth import ConfigurationError, Policy, TokenVerifier, VerifierConfig
from k8s_jwt_auth.gate import Gate
from k8s_jwt_auth.options import AdapterOptions, PathMatcher

__all__ = ["GateView", "build_verifier", "keyword_options"]


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


class GateView:
    """The names an adapter's state object (Flask's `K8sJWTAuthState`, Django's `LoadedSettings`) has always
    offered, read from its `gate` and `options`."""

    __slots__ = ()
    gate: Gate
    options: AdapterOptions

    @property
    def verifier(self) -> TokenVerifier:
        """The shared verifier."""
        return self.gate.verifier

    @property
    def policy(self) -> Policy:
        """The service policy (`ALLOW`, `DRY_RUN`), applied to every authenticated request."""
        return self.gate.policy

    @property
    def header(self) -> str:
        """The header holding `Bearer <token>`, as configured."""
        return self.options.header

    @property
    def realm(self) -> str | None:
        """The `realm` of `WWW-Authenticate` challenges."""
        return self.options.realm

    @property
    def optional(self) -> bool:
        """Whether requests without bearer credentials go through anonymously (the enforcing layer)."""
        return self.options.optional

    @property
    def exempt_paths(self) -> PathMatcher:
        """The request paths the enforcing layer lets through."""
        return self.options.exempt_paths


def keyword_options(*, header: object = None, exempt_paths: object = None, optional: object = None,
                    realm: object = None) -> AdapterOptions:
    """The shared adapter options given as keywords (`header=`...), parsed as every adapter parses them.

    Raises:
        ConfigurationError: an invalid value, naming the keyword.
    """
    return AdapterOptions.parse({"HEADER": header, "EXEMPT_PATHS": exempt_paths, "OPTIONAL": optional,
                                 "REALM": realm}, lambda suffix: f"{suffix.lower()}=")
