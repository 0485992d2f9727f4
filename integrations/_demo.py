"""`k8s-jwt-auth demo`: a protected Starlette service on loopback, called with good and bad tokens.

With no `K8S_JWT_AUTH_ISSUER` in the environment, a `FakeIssuer` from the testing kit plays the cluster:
it serves discovery and JWKS on 127.0.0.1 and mints every token the demo needs. With the variables
set (issuer, audiences, and optionally `K8S_JWT_AUTH_ALLOW`, CA file, ...), the service verifies against
that real issuer and the demo calls it with tokens you give (`--token-file`, `--other-token-file`,
`--expired-token-file`); a tampered copy of `--token-file` and a call without a token are always made.
Every call is real HTTP to a uvicorn server on 127.0.0.1. The exit code is 0 only if every outcome is
the expected one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

try:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError('the demo needs Starlette and uvicorn: pip install "k8s-jwt-auth[demo]"') from exc

import httpx

from k8s_jwt_auth import ConfigurationError, Policy, TokenVerifier, VerifierConfig
from k8s_jwt_auth.audit import AUDIT_LOGGER
from k8s_jwt_auth.testing import FakeIssuer

from .starlette import K8sJWTAuthMiddleware

__all__ = ["Case", "run_demo"]

DEMO_AUDIENCE = "payments-api"
DEMO_POLICY = "payments/*"


@dataclass(frozen=True)
class Case:
    """One call of the demo: what is sent and what must come back."""

    name: str
    token: str | None
    expect_status: int
    expect_reason: str | None = None  # for refusals: the `reason` of the JSON body


def demo_app(verifier: TokenVerifier) -> Starlette:
    """The protected service: `GET /healthz` (open) and `GET /whoami` (the caller's identity)."""

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse(request.user.workload.to_dict())

    middleware = [Middleware(K8sJWTAuthMiddleware, verifier=verifier, exempt_paths=["/healthz"])]
    return Starlette(routes=[Route("/healthz", healthz), Route("/whoami", whoami)], middleware=middleware)


@contextlib.contextmanager
def serve(app: Starlette, startup_timeout: float = 10.0) -> Iterator[str]:
    """Run `app` under uvicorn on a free port of 127.0.0.1 in a thread; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="k8s-jwt-auth-demo", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        if not server.started:
            raise RuntimeError("the demo service did not start on 127.0.0.1")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def tamper(token: str) -> str:
    """The token with one payload character changed: a forged claim under a genuine signature."""
    head, payload, signature = token.split(".")
    middle = len(payload) // 2
    swapped = "A" if payload[middle] != "A" else "B"
    return f"{head}.{payload[:middle]}{swapped}{payload[middle + 1:]}.{signature}"


def fake_cluster_cases(issuer: FakeIssuer) -> list[Case]:
    """Tokens minted by the fake issuer, each shaped like a real TokenRequest token."""
    allowed = issuer.mint("payments", "worker", audiences=DEMO_AUDIENCE, pod="worker-7d9f", node="node-1")
    return [
        Case("allowed workload (payments/worker)", allowed, 200),
        Case("other namespace (frontend/web)", issuer.mint("frontend", "web", audiences=DEMO_AUDIENCE), 403,
             "policy_denied"),
        Case("expired token", issuer.mint("payments", "worker", audiences=DEMO_AUDIENCE,
                                          now=time.time() - 7200, lifetime=3600), 401, "expired"),
        Case("tampered token", tamper(allowed), 401, "bad_signature"),
        Case("token for another audience", issuer.mint("payments", "worker", audiences="vault"), 401,
             "bad_audience"),
        Case("no token", None, 401, "missing_token"),
    ]


def real_cluster_cases(token: str | None, other: str | None, expired: str | None, policy: Policy) -> list[Case]:
    """Cases for a real issuer: the tokens given, a tampered copy of the first, and no token.

    The `--other-token-file` call expects 403, unless the policy cannot deny (no rules) or only reports
    (dry run): then it expects 200.
    """
    cases = [Case("no token", None, 401, "missing_token")]
    if token:
        cases[:0] = [Case("your workload (--token-file)", token, 200),
                     Case("tampered token", tamper(token), 401, "bad_signature")]
    if other and (policy.is_open or policy.dry_run):
        why = "no K8S_JWT_AUTH_ALLOW rules" if policy.is_open else "dry run: denial only logged"
        cases.append(Case(f"other workload (--other-token-file; {why})", other, 200))
    elif other:
        cases.append(Case("workload the policy denies (--other-token-file)", other, 403, "policy_denied"))
    if expired:
        cases.append(Case("expired token (--expired-token-file)", expired, 401, "expired"))
    return cases


def call(client: httpx.Client, base: str, case: Case) -> tuple[int, str, bool]:
    """Make one call; return (status, what came back, whether it was the expected outcome)."""
    headers = {"Authorization": f"Bearer {case.token}"} if case.token is not None else {}
    response = client.get(f"{base}/whoami", headers=headers)
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code == 200:
        seen = f"{body.get('namespace')}/{body.get('service_account')} pod={body.get('pod_name')}"
        return 200, seen, case.expect_status == 200 and bool(body.get("namespace"))
    reason = str(body.get("reason"))
    challenge = response.headers.get("www-authenticate", "")
    ok = response.status_code == case.expect_status and reason == case.expect_reason
    if response.status_code == 401:
        ok = ok and challenge.startswith("Bearer")
    return response.status_code, reason, ok


def print_table(rows: list[tuple[Case, int, str, bool]], out: TextIO) -> None:
    """A readable table of the outcomes."""
    width = max(len(case.name) for case, *_ in rows)
    out.write(f"{'call':<{width}}  expected  got  outcome\n{'-' * (width + 40)}\n")
    for case, status, seen, ok in rows:
        expected = f"{case.expect_status}"
        out.write(f"{case.name:<{width}}  {expected:<8}  {status:<3}  {seen}  {'ok' if ok else 'UNEXPECTED'}\n")


def run_demo(*, token_file: str | None = None, other_token_file: str | None = None,
             expired_token_file: str | None = None, out: TextIO) -> int:
    """Run the demo; 0 when every call had the expected outcome, 1 otherwise."""
    files = (token_file, other_token_file, expired_token_file)
    if os.environ.get("K8S_JWT_AUTH_ISSUER"):
        verifier = TokenVerifier(VerifierConfig.from_env())
        token, other, expired = (_read(path) for path in files)
        out.write(f"issuer: {verifier.config.issuer} (from K8S_JWT_AUTH_* variables)\n")
        return _run(verifier, real_cluster_cases(token, other, expired, verifier.policy), out)
    if any(files):
        raise ConfigurationError("token files are for a real issuer: set K8S_JWT_AUTH_ISSUER and "
                                 "K8S_JWT_AUTH_AUDIENCES (without them the demo mints its own tokens)")
    with FakeIssuer() as issuer:
        config = VerifierConfig(issuer=issuer.issuer, audiences=[DEMO_AUDIENCE], allow=[DEMO_POLICY])
        out.write(f"fake cluster issuer: {issuer.issuer} (discovery + JWKS over HTTP on loopback)\n"
                  f"service policy: allow {DEMO_POLICY}; audience {DEMO_AUDIENCE}\n")
        return _run(TokenVerifier(config), fake_cluster_cases(issuer), out)


@contextlib.contextmanager
def captured_audit() -> Iterator[list[str]]:
    """Collect the service's audit records (one line each) instead of letting them reach stderr."""
    lines: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    previous = AUDIT_LOGGER.propagate, AUDIT_LOGGER.level
    AUDIT_LOGGER.addHandler(handler)
    AUDIT_LOGGER.propagate = False
    AUDIT_LOGGER.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        AUDIT_LOGGER.removeHandler(handler)
        AUDIT_LOGGER.propagate, AUDIT_LOGGER.level = previous


def _run(verifier: TokenVerifier, cases: list[Case], out: TextIO) -> int:
    with captured_audit() as audit, serve(demo_app(verifier)) as base, httpx.Client(timeout=10.0) as client:
        out.write(f"protected service: {base}/whoami\n\n")
        health = client.get(f"{base}/healthz")
        rows = [(case, *call(client, base, case)) for case in cases]
    print_table(rows, out)
    out.write("\naudit log of the service (k8s_jwt_auth.audit; tokens appear only as fingerprints):\n")
    out.writelines(f"  {line}\n" for line in audit)
    failed = [case.name for case, *_, ok in rows if not ok] + ([] if health.status_code == 200 else ["/healthz"])
    out.write("\n" + (f"UNEXPECTED outcomes: {', '.join(failed)}\n" if failed else
                      f"all {len(rows)} calls had the expected outcome\n"))
    if verifier.config.dry_run:
        out.write("note: the policy is in dry-run mode, so denials are only logged\n")
    out.write(json.dumps({"calls": len(rows), "unexpected": len(failed)}) + "\n")
    return 1 if failed else 0


def _read(path: str | None) -> str | None:
    if path is None:
        return None
    with open(path, encoding="ascii") as fh:
        return fh.read().strip() or None
