"""`k8s-jwt-auth discover`: fetch an issuer's discovery document and JWKS, and explain failures.

It runs the same fetch code as `RemoteKeySource` (`JwksFetcher`), once, without a cache, and prints
what it found or, on failure, what went wrong in plain words with a hint on how to fix it. It never
prints a traceback, the bearer token or anything secret. Every fix it suggests is a command-line flag:
library messages that name a `VerifierConfig` field are reworded by `flag_words`.
"""

from __future__ import annotations

import math
import os
from typing import TextIO
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import rsa

from ._jwks_fetch import FetchResult, JwksFetcher
from ._keyset import VerificationKey
from ._transport import FetchError, FetchErrorKind, url_problem
from .errors import ConfigurationError

__all__ = ["EXIT_OK", "EXIT_UNAVAILABLE", "check_file", "flag_words", "run_discover"]

EXIT_OK, EXIT_UNAVAILABLE = 0, 4

_SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
_BINDING = ("kubectl create clusterrolebinding service-account-issuer-discovery "
            "--clusterrole=system:service-account-issuer-discovery --serviceaccount=NAMESPACE:NAME")
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}

_HINTS: dict[FetchErrorKind, str] = {
    "issuer_mismatch": "pass --issuer exactly as the cluster's --service-account-issuer (the iss claim of its "
                       "tokens), character for character: scheme, host, port and trailing slash",
    "tls": "the server's certificate is not signed by a CA trusted here: pass --ca-file with the cluster CA "
           f"(in a pod: {_SA_MOUNT}/ca.crt; from a kubeconfig: the cluster's certificate-authority-data, "
           "base64-decoded)",
    "connect": "nothing accepted the connection: check the host, port, DNS and network policies. kube-apiserver "
               "advertises its own address as jwks_uri; if that address is not reachable from here, pass "
               "--jwks-uri (in a pod: https://kubernetes.default.svc/openid/v1/jwks)",
    "timeout": "the server did not answer in time: check firewalls and network policies, or raise --timeout",
    "protocol": "the server closed the connection without an HTTP answer: plain http to an https port (or the "
                "reverse), or a proxy in between?",
    "unauthorized": "the API server wants credentials: pass --token-file with a service-account token (in a pod: "
                    f"{_SA_MOUNT}/token) whose service account may read the issuer's keys: {_BINDING}",
    "forbidden": "RBAC denied the request: bind the service account whose token you send (--token-file) to the "
                 f"system:service-account-issuer-discovery ClusterRole: {_BINDING}",
    "not_found": "check the issuer URL; with --jwks-uri, check its path (kube-apiserver serves /openid/v1/jwks)",
    "not_acceptable": "the server refused the media types asked for (kube-apiserver serves the JWKS only as "
                      "application/jwk-set+json): is a proxy rewriting the Accept header?",
    "http_status": "the server failed: try again, or look at the API server's logs",
    "too_large": "the answer is far larger than any JWKS: is the URL right?",
    "bad_json": "the URL answered with something that is not OIDC JSON: is it the issuer (not a web page, a "
                "login page or a proxy)?",
    "bad_discovery": "the discovery document lacks issuer/jwks_uri: is this a Kubernetes issuer?",
    "no_keys": "the JWKS has no key this library can use (RSA >= 2048 bits, EC P-256/384/521)",
    "redirect": "redirects are not followed: pass the final URL",
    "insecure_url": "keys are only fetched over https (plain http only on loopback): pass an https --jwks-uri",
    "token_file": "check --token-file: it must be readable and hold one token",
}
#: Hints that depend on whether a bearer token was sent: without one, a 403 is RBAC refusing *anonymous*
#: requests (the fix is a token, not a binding); with one, a 401 means that token was not accepted.
_ANONYMOUS_HINTS: dict[FetchErrorKind, str] = {
    "forbidden": "the API server refuses anonymous requests: pass --token-file with a service-account token (in a "
                 f"pod: {_SA_MOUNT}/token) whose service account may read the issuer's keys: {_BINDING}",
}
_WITH_TOKEN_HINTS: dict[FetchErrorKind, str] = {
    "unauthorized": "the API server did not accept the token of --token-file: is it a current service-account "
                    f"token of this cluster (not expired, not from another cluster)? In a pod: {_SA_MOUNT}/token",
}
#: How library messages name a `VerifierConfig` field -> the words for someone at the command line, who has
#: flags and no settings. `{bearer_flag}` is the flag of the bearer token sent on fetches.
_SETTING_WORDS = (
    ("(token_file)", "({bearer_flag})"),
    ("(or jwks_uri)", "(or --jwks-uri)"),
    ("as ca_file", "with --ca-file"),
    (", or with allow_insecure_http=True", ""),  # no flag allows plain http to a remote host
)
_PEEK = 64 * 1024


def flag_words(message: str, *, bearer_flag: str = "--token-file") -> str:
    """`message` with every setting it suggests replaced by the flag that sets it, or dropped when no flag does."""
    for setting, words in _SETTING_WORDS:
        message = message.replace(setting, words.format(bearer_flag=bearer_flag))
    return message


def check_file(flag: str, path: str) -> None:
    """Check that the file given to `flag` is a readable regular file with something in it.

    Raises:
        ConfigurationError: naming the flag, the path and what is wrong; never any of the file's content.
    """
    if os.path.isdir(path):
        raise ConfigurationError(f"{flag} {path!r} is a directory, not a file")
    if not os.path.exists(path):
        raise ConfigurationError(f"{flag} {path!r} does not exist")
    if not os.path.isfile(path):
        raise ConfigurationError(f"{flag} {path!r} is not a regular file")
    try:
        with open(path, "rb") as fh:
            empty = not fh.read(_PEEK).strip()
    except OSError as exc:
        raise ConfigurationError(f"{flag} {path!r} cannot be read: {exc.strerror or type(exc).__name__}") from None
    if empty:
        raise ConfigurationError(f"{flag} {path!r} is empty")


def run_discover(
    issuer: str,
    *,
    ca_file: str | None,
    token_file: str | None,
    jwks_uri: str | None = None,
    allow_insecure_http: bool = False,
    timeout: float = 5.0,
    out: TextIO,
) -> int:
    """Fetch the issuer's discovery document and JWKS once; print the keys or a diagnosis.

    Args:
        issuer: the cluster's service-account issuer URL.
        ca_file: PEM CA bundle for HTTPS (the cluster CA).
        token_file: file holding a bearer token for the fetches (never printed).
        jwks_uri: fetch the JWKS here and skip discovery.
        allow_insecure_http: allow plain http to hosts other than loopback.
        timeout: seconds for connecting and for each read.
        out: where the report goes.

    Returns:
        `EXIT_OK` (0) when usable keys were fetched, `EXIT_UNAVAILABLE` (4) when they could not be.
        Never raises for network or server problems.

    Raises:
        ConfigurationError: for invalid arguments (nothing is printed then), naming the flag at fault.
    """
    fetcher = _fetcher(issuer, ca_file, token_file, jwks_uri, allow_insecure_http, timeout)
    out.write(f"issuer:     {issuer}\n")
    out.write(f"discovery:  {fetcher.discovery_url if jwks_uri is None else 'skipped (jwks_uri given)'}\n")
    try:
        result = fetcher.fetch()
    except FetchError as exc:
        _diagnose(exc, token_file is not None, out)
        return EXIT_UNAVAILABLE
    _report(result, out)
    return EXIT_OK


def _fetcher(issuer: str, ca_file: str | None, token_file: str | None, jwks_uri: str | None,
             allow_insecure_http: bool, timeout: float) -> JwksFetcher:
    if not issuer or issuer != issuer.strip():
        raise ConfigurationError("--issuer is required, without surrounding spaces")
    flag, url = ("--jwks-uri", jwks_uri) if jwks_uri is not None else ("--issuer", issuer)
    problem = url_problem(url, allow_insecure_http)
    if problem is not None:
        raise ConfigurationError(f"{flag} {flag_words(problem)}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ConfigurationError(f"--timeout must be a number of seconds > 0, not {timeout:g}")
    for flag, path in (("--ca-file", ca_file), ("--token-file", token_file)):
        if path is not None:
            check_file(flag, path)
    return JwksFetcher(issuer, jwks_uri=jwks_uri, ca_file=ca_file, token_file=token_file, timeout=timeout,
                       allow_insecure_http=allow_insecure_http)


def _report(result: FetchResult, out: TextIO) -> None:
    out.write(f"jwks_uri:   {result.jwks_uri}\n")
    if result.discovered and urlsplit(result.jwks_uri).netloc != urlsplit(result.issuer).netloc:
        out.write("            (on another host than the issuer, as kube-apiserver advertises its own address; "
                  "if it is unreachable from here, pass --jwks-uri)\n")
    out.write(f"keys:       {len(result.keys)} usable, {result.keys.skipped} skipped\n")
    for key in result.keys:
        out.write(f"  kid={key.kid or '(none)'}  {_describe(key)}  alg={','.join(sorted(key.algorithms))}\n")
    if result.max_age is not None:
        out.write(f"max-age:    {result.max_age:g} s (Cache-Control)\n")
    out.write("OK: tokens signed by these keys can be verified\n")


def _describe(key: VerificationKey) -> str:
    if isinstance(key.key, rsa.RSAPublicKey):
        return f"kty=RSA ({key.key.key_size} bits)"
    return f"kty=EC ({_CURVES.get(key.key.curve.name, key.key.curve.name)})"


def _diagnose(error: FetchError, token_sent: bool, out: TextIO) -> None:
    hints = _WITH_TOKEN_HINTS if token_sent else _ANONYMOUS_HINTS
    out.write(f"FAILED:     {flag_words(error.message)}\n")
    out.write(f"hint:       {hints.get(error.kind, _HINTS[error.kind])}\n")
