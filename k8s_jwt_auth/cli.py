"""The `k8s-jwt-auth` command line.

```
k8s-jwt-auth --version
k8s-jwt-auth verify --issuer URL --audience AUD [--audience AUD]... [--jwks-file PATH | --jwks-uri URL]
                    [--ca-file PATH] [--now UNIX_SECONDS] [--leeway SECONDS] [--allow NS/SA]... [--token-file PATH]
                    [--fetch-token-file PATH]
k8s-jwt-auth inspect [--token-file PATH] [--json] [--now UNIX_SECONDS]
k8s-jwt-auth discover --issuer URL [--ca-file PATH] [--token-file PATH] [--jwks-uri URL] [--timeout SECONDS]
k8s-jwt-auth demo [--token-file PATH] [--other-token-file PATH] [--expired-token-file PATH]
```

`verify` exit codes: 0 verified (stdout: the identity as one JSON object), 1 token rejected, 3 policy
denied, 4 key set unavailable, 2 usage or configuration error. Every error of every command (argparse's
usage errors included) is one JSON object `{"error", "reason", "message"}` on stdout, written by
`_emit_error`; messages name the flag and the file at fault, never a token. No input ever produces a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, NoReturn, TextIO

from . import __version__
from ._discover import check_file, flag_words
from ._jws import decode_payload, parse
from .config import SETTINGS, VerifierConfig
from .errors import AuthError, ConfigurationError, InvalidToken, PolicyDenied, ServiceUnavailable
from .keys import KeySet, StaticKeySource
from .verifier import TokenVerifier

__all__ = ["EXIT_CODES", "main"]

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_DENIED, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4
EXIT_CODES: dict[type[AuthError], int] = {
    InvalidToken: EXIT_REJECTED,
    PolicyDenied: EXIT_DENIED,
    ServiceUnavailable: EXIT_UNAVAILABLE,
    ConfigurationError: EXIT_USAGE,
}
_MAX_INPUT = 1024 * 1024
#: The `verify` flag of each setting suffix a `ConfigurationError` can name.
_FLAGS = {"ISSUER": "--issuer", "AUDIENCES": "--audience", "JWKS_FILE": "--jwks-file", "JWKS_URI": "--jwks-uri",
          "CA_FILE": "--ca-file", "TOKEN_FILE": "--fetch-token-file", "LEEWAY": "--leeway", "ALLOW": "--allow"}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors follow the CLI contract (JSON on stdout, exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        _emit_error(ConfigurationError(f"usage: {message}"), sys.stdout)
        raise SystemExit(EXIT_USAGE)


def _version() -> str:
    """The installed distribution's version; the package's own `__version__` when its metadata is missing."""
    try:
        return metadata.version("k8s-jwt-auth")
    except metadata.PackageNotFoundError:
        return __version__


def _number(text: str) -> float:
    """An argparse type: a finite number (`nan` or `inf` would switch the time checks off)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds, >= 0."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative: give a number of seconds >= 0")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="k8s-jwt-auth", description="Verify Kubernetes service-account tokens.")
    parser.add_argument("--version", action="version", version=f"k8s-jwt-auth {_version()}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    verify = sub.add_parser("verify", help="verify a token and print the workload identity as JSON")
    verify.add_argument("--issuer", required=True, help="the cluster's service-account issuer URL")
    verify.add_argument("--audience", action="append", required=True, dest="audiences", metavar="AUD",
                        help="an accepted audience (repeatable)")
    source = verify.add_mutually_exclusive_group()
    source.add_argument("--jwks-file", metavar="PATH", help="verify against this JWKS document (offline)")
    source.add_argument("--jwks-uri", metavar="URL", help="fetch keys from this URL (skips discovery)")
    verify.add_argument("--ca-file", metavar="PATH", help="CA bundle for HTTPS fetches (the cluster CA)")
    verify.add_argument("--now", type=_number, metavar="UNIX_SECONDS", help="verify as if it were this time")
    verify.add_argument("--leeway", type=_seconds, metavar="SECONDS", help="clock skew allowance (default 60)")
    verify.add_argument("--allow", action="append", default=[], metavar="NS/SA",
                        help="policy rule, [!]NAMESPACE/SERVICEACCOUNT[/POD] (repeatable)")
    verify.add_argument("--token-file", metavar="PATH", help="read the token from this file (default: stdin)")
    verify.add_argument("--fetch-token-file", metavar="PATH",
                        help="bearer token sent on discovery/JWKS fetches (e.g. your own service-account token)")

    inspect = sub.add_parser("inspect", help="decode a token WITHOUT verifying it")
    inspect.add_argument("--token-file", metavar="PATH", help="read the token from this file (default: stdin)")
    inspect.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    inspect.add_argument("--now", type=_number, metavar="UNIX_SECONDS",
                         help="say whether the token has expired as if it were this time")

    discover = sub.add_parser("discover", help="fetch discovery and JWKS from an issuer and diagnose problems")
    discover.add_argument("--issuer", required=True, help="the cluster's service-account issuer URL")
    discover.add_argument("--ca-file", metavar="PATH", help="CA bundle for HTTPS fetches (the cluster CA)")
    discover.add_argument("--token-file", metavar="PATH", help="bearer token for the fetches")
    discover.add_argument("--jwks-uri", metavar="URL", help="fetch keys from this URL instead of discovery")
    discover.add_argument("--timeout", type=_seconds, default=5.0, metavar="SECONDS", help="per-request timeout")

    demo = sub.add_parser("demo", help="run a protected service on loopback and call it with good and bad tokens",
                          description="Without K8S_JWT_AUTH_ISSUER a fake cluster issuer plays the cluster; with "
                          "K8S_JWT_AUTH_* variables set, the service verifies against that issuer and is called "
                          "with the tokens given here.")
    demo.add_argument("--token-file", metavar="PATH", help="real-issuer mode: a token the policy allows")
    demo.add_argument("--other-token-file", metavar="PATH", help="real-issuer mode: a token the policy denies")
    demo.add_argument("--expired-token-file", metavar="PATH", help="real-issuer mode: an expired token")
    return parser


def _emit_error(error: AuthError, out: TextIO) -> int:
    """Write the one error shape of the CLI, `{"error", "reason", "message"}`, and return the exit code."""
    out.write(json.dumps(error.to_dict()) + "\n")
    return next((EXIT_CODES[cls] for cls in type(error).__mro__ if cls in EXIT_CODES), EXIT_REJECTED)


def _read_token(path: str | None, stdin: TextIO) -> str:
    try:
        if path is None:
            text = stdin.read(_MAX_INPUT)
        else:
            with open(path, encoding="ascii", errors="replace") as fh:
                text = fh.read(_MAX_INPUT)
    except OSError as exc:
        raise ConfigurationError(f"--token-file {path!r} cannot be read: {exc.strerror or type(exc).__name__}"
                                 ) from exc
    except UnicodeDecodeError as exc:
        raise InvalidToken("the token is not text", reason="malformed") from exc
    token = text.strip()
    if not token:
        given = "no token given (pass --token-file or pipe the token on stdin)" if path is None \
            else f"--token-file {path!r} is empty: no token given"
        raise InvalidToken(given, reason="missing_token")
    return token


def _static_keys(path: str) -> StaticKeySource:
    """The keys of `--jwks-file`, loaded here so that every problem names the file.

    Raises:
        ConfigurationError: the file is missing, unreadable, empty, not JSON, not a JWKS, or has no usable key.
    """
    check_file("--jwks-file", path)
    try:
        with open(path, "rb") as fh:
            document = json.loads(fh.read())
    except OSError as exc:
        raise ConfigurationError(f"--jwks-file {path!r} cannot be read: {exc.strerror or type(exc).__name__}"
                                 ) from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ConfigurationError(f"--jwks-file {path!r} is not JSON ({exc})") from exc
    try:
        keys = KeySet.from_jwks(document)
    except ValueError as exc:
        raise ConfigurationError(f"--jwks-file {path!r} is not a JWKS: {exc}") from exc
    if not len(keys):
        raise ConfigurationError(f"--jwks-file {path!r} has no usable key ({keys.skipped} skipped; usable: "
                                 "RSA >= 2048 bits, EC P-256/384/521)")
    return StaticKeySource(keys)


def _with_flags(error: ConfigurationError) -> ConfigurationError:
    """`error` reworded for the command line: the flag instead of the setting it names."""
    message = flag_words(error.message, bearer_flag="--fetch-token-file")
    flag = _FLAGS.get(error.setting or "")
    if flag is not None:
        field = SETTINGS.get(error.setting or "", "")
        message = flag + message[len(field):] if message.startswith(f"{field} ") else f"{flag}: {message}"
    return ConfigurationError(message, setting=error.setting)


def _verifier(args: argparse.Namespace) -> TokenVerifier:
    for flag, path in (("--ca-file", args.ca_file), ("--fetch-token-file", args.fetch_token_file)):
        if path is not None:
            check_file(flag, path)
    keys = None if args.jwks_file is None else _static_keys(args.jwks_file)
    overrides: dict[str, Any] = {"issuer": args.issuer, "audiences": args.audiences, "allow": args.allow,
                                 "jwks_file": args.jwks_file, "jwks_uri": args.jwks_uri, "ca_file": args.ca_file,
                                 "token_file": args.fetch_token_file}
    if args.leeway is not None:
        overrides["leeway"] = args.leeway
    now = args.now
    try:
        return TokenVerifier(VerifierConfig(**overrides), keys=keys, clock=None if now is None else (lambda: now))
    except ConfigurationError as exc:
        raise _with_flags(exc) from exc


def _verify(args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:
    verifier = _verifier(args)
    try:
        identity = verifier.verify(_read_token(args.token_file, stdin))
    except ServiceUnavailable as exc:
        raise type(exc)(flag_words(exc.message, bearer_flag="--fetch-token-file"), retry_after=exc.retry_after,
                        reason=exc.reason) from exc
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


def _duration(seconds: float) -> str:
    """`seconds` in words, rounded down to its largest unit: `6 days`, `59 minutes`, `1 second`."""
    whole = int(abs(seconds))
    units = (("day", 86400), ("hour", 3600), ("minute", 60))
    unit, size = next(((unit, size) for unit, size in units if whole >= size), ("second", 1))
    count = whole // size
    return f"{count} {unit}{'' if count == 1 else 's'}"


def _finite(value: object) -> float | None:
    """`value` when it is a finite number (not a bool), else `None`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return value if math.isfinite(value) else None
    except OverflowError:  # an int too large for a float
        return None


def _expiry(claims: dict[str, Any], now: float) -> dict[str, Any]:
    """Whether the token has expired at `now` (no leeway), for `inspect --json` and the `expires:` line.

    `expired` and `expires_in_seconds` are `None` when `exp` is absent or not a finite number; `expires_at`
    is also `None` when `exp` is beyond what a date can show.
    """
    exp = _finite(claims.get("exp"))
    if exp is None:
        return {"expired": None, "expires_at": None, "expires_in_seconds": None}
    at = _human_time(exp)
    return {"expired": now > exp, "expires_at": at if at.endswith("Z") else None,
            "expires_in_seconds": math.floor(exp - now)}


def _expiry_line(claims: dict[str, Any], expiry: dict[str, Any]) -> str:
    if claims.get("exp") is None:
        return "expires: never: the token has no exp claim (verify rejects it: missing_claim)"
    if expiry["expired"] is None:
        return "expires: unknown: the exp claim is not a finite number (verify rejects it: malformed)"
    seconds, expired = expiry["expires_in_seconds"], expiry["expired"]
    if expiry["expires_at"] is None:
        return f"expires: out of range: exp is beyond any date ({'expired' if expired else 'not expired'}; " \
               "verify rejects it)"
    when = "expires within a second" if seconds == 0 and not expired else \
        f"expired {_duration(seconds)} ago" if expired else f"valid for another {_duration(seconds)}"
    return f"expires: {expiry['expires_at']} ({when})"


def _inspect(args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:
    warning = "WARNING: NOT VERIFIED. The signature, issuer, audience and lifetime were NOT checked."
    parsed = parse(_read_token(args.token_file, stdin), max_size=_MAX_INPUT)
    claims = decode_payload(parsed)
    times: dict[str, str] = {c: _human_time(claims[c]) for c in ("iat", "nbf", "exp") if c in claims}
    k8s = claims.get("kubernetes.io")
    if isinstance(k8s, dict) and "warnafter" in k8s:
        times["kubernetes.io.warnafter"] = _human_time(k8s["warnafter"])
    now = float(math.floor(time.time())) if args.now is None else args.now
    expiry = _expiry(claims, now)
    print(warning, file=sys.stderr)
    if args.json:
        out.write(json.dumps({"verified": False, "warning": warning, **expiry, "checked_at": _human_time(now),
                              "header": parsed.header, "claims": claims, "times": times}) + "\n")
        return EXIT_OK
    out.write(f"{warning}\n\nheader:\n{json.dumps(parsed.header, indent=2)}\n\n")
    out.write(f"claims:\n{json.dumps(claims, indent=2)}\n\ntimes (UTC):\n")
    for name, text in times.items():
        out.write(f"  {name:<24} {text}\n")
    out.write(f"\n{_expiry_line(claims, expiry)}\n")
    return EXIT_OK


def _discover(args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:
    from ._discover import run_discover

    return run_discover(args.issuer, ca_file=args.ca_file, token_file=args.token_file, jwks_uri=args.jwks_uri,
                        timeout=args.timeout, out=out)


def _demo(args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:
    for flag in ("--token-file", "--other-token-file", "--expired-token-file"):
        path = getattr(args, flag[2:].replace("-", "_"))
        if path is not None:
            check_file(flag, path)
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
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.error("give a command: verify, inspect, discover or demo")
    except SystemExit as exc:  # --help or --version (0), or a usage error (2, already reported)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return _COMMANDS[args.command](args, sys.stdin, out)
    except AuthError as exc:
        return _emit_error(exc, out)
    except KeyboardInterrupt:
        return 130
