"""Packaging contracts: the core imports no web framework; the public API is complete and typed."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

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


REPO = Path(__file__).resolve().parents[1]
SKIPPED_DIRS = {".git", ".venv", ".nox", "site", "build", "dist", "__pycache__", ".pytest_cache", ".mypy_cache",
                ".ruff_cache", ".hypothesis"}


def _project_text_files() -> list[Path]:
    files = []
    for path in REPO.rglob("*"):
        parts = set(path.relative_to(REPO).parts)
        if path.is_file() and not parts & SKIPPED_DIRS and not any(p.endswith(".egg-info") for p in parts) \
                and path.suffix in {".py", ".md", ".toml", ".yml", ".yaml", ".cfg", ".in", ".txt", ""}:
            files.append(path)
    return files


def test_nothing_in_the_project_reads_outside_its_own_tree() -> None:
    # A user's clone (and the sdist) has nothing beside the repository: tests, docs and examples use
    # tests/fixtures/k8s. The pattern is assembled so that this file does not match it itself.
    shared = "shared"
    outside = re.compile(rf"\.\./{shared}|{shared}/fixtures|parents\[2\]")
    offenders = [str(p.relative_to(REPO)) for p in _project_text_files()
                 if outside.search(p.read_text(errors="replace"))]
    assert offenders == []
    assert (REPO / "tests" / "fixtures" / "k8s" / "jwks.json").is_file()


def _top_level_imports(package: Path) -> set[str]:
    names: set[str] = set()
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"k8s_jwt_auth", "__future__"}


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("-", "_") for r in requirements}


def test_runtime_dependencies_are_exactly_what_the_core_imports() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = _requirement_names(project["dependencies"])
    extras = set().union(*(_requirement_names(r) for r in project["optional-dependencies"].values()))
    imported = {name.lower() for name in _top_level_imports(REPO / "k8s_jwt_auth")}
    # Every runtime dependency is used by the core; anything else the core imports is an optional extra
    # (redis, prometheus_client), imported only by the module that needs it.
    assert runtime <= imported, runtime - imported
    assert imported - runtime <= extras | {"prometheus_client"}, imported - runtime - extras
    assert "pyjwt" not in runtime


def test_licence_text_matches_the_declared_licence() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    for name in ("CHANGELOG.md", "SECURITY.md", "CONTRIBUTING.md"):
        assert (REPO / name).is_file(), name
