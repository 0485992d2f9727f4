"""Framework-free helpers shared by every adapter (Starlette, FastAPI, Flask, Django): building the verifier.

The request pipeline itself is `k8s_jwt_auth.gate.Gate`; the options are `k8s_jwt_auth.options.AdapterOptions`.
"""

from __future__ import annotations

from collections.abc import Callable

from k8s_jwt_auth import ConfigurationError, TokenVerifier, VerifierConfig

__all__ = ["build_verifier"]


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
