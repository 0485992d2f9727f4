"""Packaging contracts: the core imports no web framework; the public API is complete and typed."""

from __future__ import annotations

import json
import subprocess
import sys

import k8s_jwt_auth
from k8s_jwt_auth import errors

FRAMEWORKS = ("starlette", "fastapi", "flask", "django", "rest_framework")


def test_core_imports_no_web_framework() -> None:
    code = (
        "import json, sys\n"
        "import k8s_jwt_auth, k8s_jwt_auth.cli, k8s_jwt_auth.testing, k8s_jwt_auth.keys\n"
        "import k8s_jwt_auth.testing.pytest_plugin\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(proc.stdout) == []


def test_public_api_is_exported_with_clean_module_names() -> None:
    for name in k8s_jwt_auth.__all__:
        obj = getattr(k8s_jwt_auth, name)
        if isinstance(obj, type):
            assert obj.__module__ == "k8s_jwt_auth", name
    assert {"TokenVerifier", "VerifierConfig", "WorkloadIdentity", "Policy", "AuthError", "InvalidToken",
            "PolicyDenied", "KeySetUnavailable", "ConfigurationError"} <= set(k8s_jwt_auth.__all__)


def test_error_hierarchy_and_statuses() -> None:
    assert issubclass(errors.InvalidToken, errors.AuthError)
    assert issubclass(errors.ConfigurationError, ValueError)
    assert (errors.InvalidToken.status_code, errors.PolicyDenied.status_code,
            errors.KeySetUnavailable.status_code) == (401, 403, 503)
    assert errors.KeySetUnavailable("x", retry_after=0).retry_after == 1
    assert repr(errors.InvalidToken("bad", reason="expired", claim="exp")) == (
        "InvalidToken('bad', reason='expired', claim='exp')")


def test_py_typed_marker_is_shipped() -> None:
    from importlib.resources import files

    assert files("k8s_jwt_auth").joinpath("py.typed").is_file()
