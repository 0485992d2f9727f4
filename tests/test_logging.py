"""Logging like a library: nothing on stderr until the application configures logging, then the documented
loggers at the documented levels (docs/operations.md, "Loggers and levels")."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import k8s_jwt_auth

REPO = Path(__file__).resolve().parents[1]

# A Flask app on a real fake issuer, driven through every kind of decision: 401 (no token, bad token),
# 403 (the view's rule), 200, and 503 from a second issuer that is down (a key-fetch failure).
SCRIPT = textwrap.dedent("""
    import logging
    import sys

    from flask import Flask

    from k8s_jwt_auth import TokenVerifier, VerifierConfig
    from k8s_jwt_auth.integrations.flask import K8sJWTAuth, current_workload, workload_required
    from k8s_jwt_auth.testing import FakeIssuer

    if len(sys.argv) > 1:  # the application configures logging at this level
        logging.basicConfig(level=sys.argv[1], format="%(levelname)s %(name)s %(message)s")


    def client(issuer):
        app = Flask(__name__)
        K8sJWTAuth(app, verifier=TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences=["test"])))

        @app.get("/whoami")
        @workload_required("payments/*")
        def whoami():
            return current_workload.to_dict()

        return app.test_client()


    with FakeIssuer() as issuer, FakeIssuer() as down:
        down.fail("down")
        up = client(issuer)
        statuses = [
            up.get("/whoami").status_code,
            up.get("/whoami", headers={"Authorization": "Bearer not-a-jwt"}).status_code,
            up.get("/whoami", headers={"Authorization": "Bearer " + issuer.mint("kube-system", "admin")}).status_code,
            up.get("/whoami", headers={"Authorization": "Bearer " + issuer.mint("payments", "api")}).status_code,
            client(down).get("/whoami", headers={"Authorization": "Bearer " + down.mint()}).status_code,
        ]
    print(*statuses)
""")

AUDIT_WARNINGS = [
    "WARNING k8s_jwt_auth.audit rejected_token 401 missing_token GET /whoami - (token -)",
    "WARNING k8s_jwt_auth.audit rejected_token 401 malformed GET /whoami - (token ",
    "WARNING k8s_jwt_auth.audit denied_policy 403 policy_denied GET /whoami kube-system/admin (token ",
    "ERROR k8s_jwt_auth.audit unavailable 503 keys_unavailable GET /whoami - (token ",
    "WARNING k8s_jwt_auth.keys fetching the keys of http://127.0.0.1:",
    "WARNING k8s_jwt_auth.integrations.flask rejected http /whoami: 503 keys_unavailable: ",
]
INFO_LINES = [
    "INFO k8s_jwt_auth.audit allowed - ok GET /whoami payments/api (token ",
    "INFO k8s_jwt_auth.integrations.flask rejected http /whoami: 401 missing_token: ",
    "INFO k8s_jwt_auth.integrations.flask rejected http /whoami: 403 policy_denied: ",
]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("K8S_JWT_AUTH_")}
    proc = subprocess.run([sys.executable, "-W", "error", "-c", SCRIPT, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["401", "401", "403", "200", "503"]
    return proc


def lines_starting(output: str, prefixes: list[str]) -> list[str]:
    return [prefix for prefix in prefixes if not any(line.startswith(prefix) for line in output.splitlines())]


def test_the_package_logger_has_a_null_handler_and_no_level() -> None:
    logger = logging.getLogger(k8s_jwt_auth.__name__)
    assert [type(h) for h in logger.handlers] == [logging.NullHandler]
    assert logger.level == logging.NOTSET and logger.propagate


def test_refusals_print_nothing_without_logging_configured() -> None:
    assert run().stderr == ""


def test_refusals_and_key_failures_are_warnings_once_logging_is_configured() -> None:
    output = run("WARNING").stderr
    assert lines_starting(output, AUDIT_WARNINGS) == []
    assert " allowed " not in output and "INFO " not in output


@pytest.mark.parametrize("level", ["INFO"])
def test_allowed_requests_and_refusal_details_are_info(level: str) -> None:
    output = run(level).stderr
    assert lines_starting(output, AUDIT_WARNINGS + INFO_LINES) == []
    assert "DEBUG " not in output
