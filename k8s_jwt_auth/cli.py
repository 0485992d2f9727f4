"""The `k8s-jwt-auth` command line.

```
k8s-jwt-auth verify --issuer URL --audience AUD [--audience AUD]... [--jwks-file PATH | --jwks-uri URL]
                    [--ca-file PATH] [--now UNIX_SECONDS] [--leeway SECONDS] [--allow NS/SA]... [--token-file PATH]
k8s-jwt-auth inspect [--token-file PATH] [--json]
k8s-jwt-auth discover --issuer URL [--ca-file PATH] [--token-file PATH] [--jwks-uri URL]
k8s-jwt-auth demo [--token-file PATH] [--other-token-file PATH] [--expired-token-file PATH]
```

`verify` exit codes: 0 verified (stdout: the identity as one JSON object), 1 token rejected, 3 policy
denied, 4 key set unavailable, 2 usage or configuration error; on failure stdout is one JSON object
`{"error", "reason", "message"}`. No input ever produces a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, NoReturn, TextIO

from ._jws import decode_payload, parse
from .config import VerifierConfig
from .errors import AuthError, ConfigurationError, InvalidToken, KeySetUnavailable, PolicyDenied
from .verifier import TokenVerifier

__all__ = ["EXIT_CODES", "main"]

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_DENIED, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4
EXIT_CODES: dict[type[AuthError], int] = {
    InvalidToken: EXIT_REJECTED,
    PolicyDenied: EXIT_DENIED,
    KeySetUnavailable: EXIT_UNAVAILABLE,
    ConfigurationError: EXIT_USAGE,
}
_MAX_INPUT = 1024 * 1024


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors follow the CLI contract (JSON on stdout, exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        _emit_error(ConfigurationError(f"usage: {message}"), sys.stdout)
        raise SystemExit(EXIT_USAGE)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="k8s-jwt-auth", description="Verify Kubernetes service-account tokens.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    verify = sub.add_parser("verify", help="verify a token and print the workload identity as JSON")
    verify.add_argument("--issuer", required=True, help="the cluster's service-account issuer URL")
    verify.add_argument("--audience", action="append", required=True, dest="audiences", metavar="AUD",
                        help="an accepted audience (repeatable)")
    source = verify.add_mutually_exclusive_group()
    source.add_argument("--jwks-file", metavar="PATH", help="verify against this JWKS document (offline)")
    source.add_argument("--jwks-uri", metavar="URL", help="fetch keys from this URL (skips discovery)")
    verify.add_argument("--ca-file", metavar="PATH", help="CA bundle for HTTPS fetches (the cluster CA)")
    verify.add_argument("--now", type=float, metavar="UNIX_SECONDS", help="verify as if it were this time")
    verify.add_argument("--leeway", type=float, metavar="SECONDS", help="clock skew allowance (default 60)")
    verify.add_argument("--allow", action="append", default=[], metavar="NS/SA",
                        help="policy rule, [!]NAMESPACE/SERVICEACCOUNT[/POD] (repeatable)")
    verify.add_argument("--token-file", metavar="PATH", help="read the token from this file (default: stdin)")
    verify.add_argument("--fetch-token-file", metavar="PATH",
                        help="bearer token sent on discovery/JWKS fetches (e.g. your own service-account token)")

    inspect = sub.add_parser("inspect", help="decode a token WITHOUT verifying it")
    inspect.add_argument("--token-file", metavar="PATH", help="read the token from this file (default: stdin)")
    inspect.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    discover = sub.add_parser("discover", help="fetch discovery and JWKS from an issuer and diagnose problems")
    discover.add_argument("--issuer", required=True, help="the cluster's service-account issuer URL")
    discover.add_argument("--ca-file", metavar="PATH", help="CA bundle for HTTPS fetches (the cluster CA)")
    discover.add_argument("--token-file", metavar="PATH", help="bearer token for the fetches")
    discover.add_argument("--jwks-uri", metavar="URL", help="fetch keys from this URL instead of discovery")
    discover.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="per-request timeout")

    demo = sub.add_parser("demo", help="run a protected service on loopback and call it with good and bad tokens",
                          description="Without K8S_JWT_AUTH_ISSUER a fake cluster issuer plays the cluster; with "
                          "K8S_JWT_AUTH_* variables set, the service verifies against that issuer and is called "
                          "with the tokens given here.")
    demo.add_argument("--token-file", metavar="PATH", help="real-issuer mode: a token the policy allows")
    demo.add_argument("--other-token-file", metavar="PATH", help="real-issuer mode: a token the policy denies")
    demo.add_argument("--expired-token-file", metavar="PATH", help="real-issuer mode: an expired token")
    return parser


def _emit_error(error: AuthError, out: TextIO) -> int:
    out.write(json.dumps(error.to_dict()) + "\n")
    return EXIT_CODES.get(type(error), EXIT_REJECTED)


def _read_token(path: str | None, stdin: TextIO) -> str:
    try:
        if path is None:
            text = stdin.read(_MAX_INPUT)
        else:
            with open(path, encoding="ascii", errors="replace") as fh:
                text = fh.read(_MAX_INPUT)
    except OSError as exc:
        raise ConfigurationError(f"cannot read the token: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidToken("the token is not text", reason="malformed") from exc
    token = text.strip()
    if not token:
        raise InvalidToken("no token given (pass --token-file or pipe the token on stdin)", reason="missing_token")
    return token


def _verify(args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:
    overrides: dict[str, Any] = {"issuer": args.issuer, "audiences": args.audiences, "allow": args.allow,
                                 "jwks_file": args.jwks_file, "jwks_uri": args.jwks_uri, "ca_file": args.ca_file,
                                 "token_file": args.fetch_token_file}
    if args.leeway is not None:
        overrides["leeway"] = args.leeway
    if args.fetch_token_file is not None and not os.path.isfile(args.fetch_token_file):
        raise ConfigurationError(f"--fetch-token-file {args.fetch_token_file!r} does not exist or is not a file")
    config = VerifierConfig(**overrides)
    now = args.now
    verifier = TokenVerifier(config, clock=None if now is None else (lambda: now))
    identity = verifier.verify(_read_token(args.token_file, stdin))
    verifier.policy.enforce(identity)
    out.write(json.dumps(identity.to_dict()) + "\n")
    return EXIT_OK


def _human_time(value: object) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, tz=timezone.utc).isoformat().replace("+00:00", "Z")
        except (OverflowError, OSError, ValueError):
            return "out of range"
    return "not a number"


def _inspect(args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:
    warning = "WARNING: NOT VERIFIED. The signature, issuer, audience and lifetime were NOT checked."
    parsed = parse(_read_token(args.token_file, stdin), max_size=_MAX_INPUT)
    claims = decode_payload(parsed)
    times: dict[str, str] = {c: _human_time(claims[c]) for c in ("iat", "nbf", "exp") if c in claims}
    k8s = claims.get("kubernetes.io")
    if isinstance(k8s, dict) and "warnafter" in k8s:
        times["kubernetes.io.warnafter"] = _human_time(k8s["warnafter"])
    print(warning, file=sys.stderr)
    if args.json:
        out.write(json.dumps({"verified": False, "warning": warning, "header": parsed.header,
                              "claims": claims, "times": times}) + "\n")
        return EXIT_OK
    out.write(f"{warning}\n\nheader:\n{json.dumps(parsed.header, indent=2)}\n\n")
    out.write(f"claims:\n{json.dumps(claims, indent=2)}\n\ntimes (UTC):\n")
    for name, text in times.items():
        out.write(f"  {name:<24} {text}\n")
    return EXIT_OK


def _discover(args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:
    from ._discover import run_discover

    return run_discover(args.issuer, ca_file=args.ca_file, token_file=args.token_file, jwks_uri=args.jwks_uri,
                        timeout=args.timeout, out=out)


def _demo(args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:
    try:  # imported by name: the demo needs the [demo] extra, and the core never imports a framework
        demo = importlib.import_module("k8s_jwt_auth.integrations._demo")
    except ImportError as exc:
        raise ConfigurationError(str(exc)) from exc
    try:
        return int(demo.run_demo(token_file=args.token_file, other_token_file=args.other_token_file,
                                 expired_token_file=args.expired_token_file, out=out))
    except OSError as exc:
        raise ConfigurationError(f"cannot read a token file: {exc.strerror or exc} ({exc.filename})") from exc


_COMMANDS = {"verify": _verify, "inspect": _inspect, "discover": _discover, "demo": _demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on `argv` (default: `sys.argv[1:]`) and return its exit code."""
    out = sys.stdout
    try:
        args = _build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already reported)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return _COMMANDS[args.command](args, sys.stdin, out)
    except AuthError as exc:
        return _emit_error(exc, out)
    except KeyboardInterrupt:
        return 130
