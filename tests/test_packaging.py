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
    # import name -> distribution name, where they differ (normalised as _requirement_names does)
    distribution = {"grpc": "grpcio", "opentelemetry": "opentelemetry_api"}
    imported = {distribution.get(name.lower(), name.lower()) for name in _top_level_imports(REPO / "k8s_jwt_auth")}
    # Every runtime dependency is used by the core; anything else the core imports is an optional extra
    # (redis, prometheus_client, grpcio, opentelemetry-api, requests), imported only by the module that needs it.
    assert runtime <= imported, runtime - imported
    assert imported - runtime <= extras, imported - runtime - extras
    assert "pyjwt" not in runtime


def test_licence_text_matches_the_declared_licence() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    for name in ("CHANGELOG.md", "SECURITY.md", "CONTRIBUTING.md"):
        assert (REPO / name).is_file(), name


# -- the core's modules import one way ---------------------------------------------------------------------------


def _core_modules() -> dict[str, Path]:
    """Every module of the core package by dotted name (`k8s_jwt_auth.integrations` is not the core)."""
    modules: dict[str, Path] = {}
    for path in sorted((REPO / "k8s_jwt_auth").rglob("*.py")):
        parts = ["k8s_jwt_auth", *path.relative_to(REPO / "k8s_jwt_auth").with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        if "integrations" not in parts:
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST) -> list[tuple[int, str | None, list[str]]]:
    """`(level, module, names)` of every import, at module level and inside functions, except under
    `if TYPE_CHECKING:` (those imports never run)."""
    found: list[tuple[int, str | None, list[str]]] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.extend((0, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module, [alias.name for alias in node.names]))
        pending.extend(ast.iter_child_nodes(node))
    return found


def _core_import_graph() -> dict[str, set[str]]:
    """Module -> the first-party core modules it imports (`from . import x` counts as importing `x`)."""
    modules = _core_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for level, module, names in _imported_names(ast.parse(path.read_text())):
            base = package.rsplit(".", level - 1)[0] if level else ""
            target = ".".join(p for p in (base, module) if p)
            # `from . import x` imports the module x when there is one, else the name x from the package
            for candidate in [f"{target}.{n}" if f"{target}.{n}" in modules else target for n in names or ["*"]]:
                while candidate and candidate not in modules:  # `import k8s_jwt_auth.x.y` -> the deepest module
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != name:
                    edges.add(candidate)
        graph[name] = edges
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as `[a, b, ..., a]`, or `None` (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle is not None:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle is not None:
                return cycle
    return None


def test_the_import_graph_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    code = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\ndef f():\n    from .b import c\n"
    assert sorted(_imported_names(ast.parse(code)), key=str) == [(0, "typing", ["TYPE_CHECKING"]), (1, "b", ["c"])]


def test_core_modules_have_no_import_cycle() -> None:
    graph = _core_import_graph()
    assert "k8s_jwt_auth._remote" in graph["k8s_jwt_auth.keys"]  # the graph sees imports (sanity check)
    assert "k8s_jwt_auth.tokenreview" in graph["k8s_jwt_auth.verifier"]  # ... also those inside functions
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle among the core modules: " + " -> ".join(cycle or ())


def _integration_modules() -> dict[str, Path]:
    """Every module of `integrations/` by its installed name (`k8s_jwt_auth.integrations.django.conf`)."""
    modules: dict[str, Path] = {}
    for path in sorted((REPO / "integrations").rglob("*.py")):
        parts = ["k8s_jwt_auth", "integrations", *path.relative_to(REPO / "integrations").with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def test_integrations_have_no_import_cycle() -> None:
    modules = _integration_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for level, module, names in _imported_names(ast.parse(path.read_text())):
            if not level:
                continue  # absolute imports: frameworks and the core, which never imports an integration
            target = ".".join(p for p in (package.rsplit(".", level - 1)[0], module) if p)
            for candidate in [f"{target}.{n}" if f"{target}.{n}" in modules else target for n in names or ["*"]]:
                if candidate in modules and candidate != name:
                    edges.add(candidate)
        graph[name] = edges
    assert "k8s_jwt_auth.integrations.django.conf" in graph["k8s_jwt_auth.integrations.django.backends"]
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle among the integrations: " + " -> ".join(cycle or ())


def test_integrations_import_public_core_modules_only() -> None:
    """The lint rule (integrations/ruff.toml, TID251) bans every private core module; this keeps its list whole,
    and checks the code as it stands."""
    banned = set(tomllib.loads((REPO / "integrations" / "ruff.toml").read_text())["lint"]["flake8-tidy-imports"][
        "banned-api"])
    private = {name for name in _core_modules()
               if any(part.startswith("_") and not part.startswith("__") for part in name.split(".")[1:])}
    assert private - banned == set(), "add these private modules to integrations/ruff.toml"
    for name, path in _integration_modules().items():
        for level, module, names in _imported_names(ast.parse(path.read_text())):
            if level == 0 and module and module.startswith("k8s_jwt_auth") and "integrations" not in module:
                imported = {module} | {f"{module}.{n}" for n in names}
                assert not imported & private, f"{name} imports a private core module: {sorted(imported & private)}"
