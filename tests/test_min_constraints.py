"""tools/min_constraints.py: the constraints file that pins every declared dependency to its lower bound."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "min_constraints.py"
TOOLS = {"pytest", "pytest-timeout", "pytest-django", "hypothesis", "ruff", "mypy", "mkdocs", "mkdocstrings",
         "mkdocstrings-python", "pyyaml", "tomli", "httpx2"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _pins(text: str) -> dict[str, str]:
    """name -> pinned version, from the `name==version` lines (comments and caps left out)."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert requirement.name not in pins, f"{requirement.name} pinned twice"
            pins[requirement.name] = spec.version
    return pins


def _declared(project: dict[str, Any]) -> dict[str, list[Requirement]]:
    """where ("dependencies" or an extra) -> its requirements, self-references left out."""
    found = {"dependencies": [Requirement(r) for r in project["dependencies"]]}
    for extra, requirements in project["optional-dependencies"].items():
        found[extra] = [r for r in map(Requirement, requirements) if _normal(r.name) != _normal(project["name"])]
    return found


def _lower(requirement: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
    return max(bounds) if bounds else None


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        data: dict[str, Any] = tomllib.load(fh)["project"]
    return data


@pytest.fixture(scope="module")
def output() -> str:
    return _run()


def test_every_bounded_runtime_and_extra_dependency_is_pinned_to_its_lower_bound(project: dict[str, Any],
                                                                                  output: str) -> None:
    pins = _pins(output)
    expected: dict[str, Version] = {}
    for where, requirements in _declared(project).items():
        if where in ("test", "docs"):
            continue
        for requirement in requirements:
            bound = _lower(requirement)
            if bound is not None:
                name = _normal(requirement.name)
                expected[name] = max(expected.get(name, bound), bound)
    assert expected, "pyproject.toml declares no bounded dependency"
    assert {name: Version(version) for name, version in pins.items()} == expected


def test_the_core_and_every_user_facing_extra_are_covered(project: dict[str, Any], output: str) -> None:
    pins = _pins(output)
    for where, requirements in _declared(project).items():
        if where in ("test", "docs"):
            continue
        for requirement in requirements:
            if _lower(requirement) is not None:
                assert _normal(requirement.name) in pins, f"{requirement} from {where} is not pinned"
    for name in ("cryptography", "httpx", "cachetools", "starlette", "fastapi", "flask", "django",
                 "djangorestframework", "redis", "prometheus-client", "uvicorn"):
        assert name in pins


def test_a_pin_satisfies_every_declaration_of_its_name(project: dict[str, Any], output: str) -> None:
    """One install gets every extra: each pin must be allowed by all the places that name the package."""
    pins = _pins(output)
    for requirements in _declared(project).values():
        for requirement in requirements:
            name = _normal(requirement.name)
            if name in pins:
                assert requirement.specifier.contains(pins[name], prereleases=True), (requirement, pins[name])


def test_names_are_normalised_and_extras_dropped(output: str) -> None:
    for line in output.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name = Requirement(line).name
            assert name == _normal(name), line
            assert "[" not in line, f"pip refuses extras in a constraints file: {line}"
    assert "prometheus-client==" in output and "prometheus_client" not in output.replace("# ", "")


def test_test_and_docs_tools_are_not_pinned(project: dict[str, Any], output: str) -> None:
    pins = _pins(output)
    declared_tools = {_normal(r.name) for where in ("test", "docs") for r in _declared(project).get(where, [])}
    assert TOOLS & declared_tools, "no tool found in the test and docs extras"
    assert not (TOOLS & set(pins)), sorted(TOOLS & set(pins))
    floating = next(line for line in output.splitlines() if line.startswith("# tools, left floating:"))
    assert "pytest-timeout" in floating and "ruff" in floating


def test_companion_caps_are_upper_bounds_on_undeclared_packages(output: str) -> None:
    """Caps keep tools as old as the pinned frameworks need; they never pin a version or touch a declared name."""
    pins = _pins(output)
    caps = [Requirement(line.split("#", 1)[0]) for line in output.splitlines()
            if line and not line.startswith("#") and "==" not in line]
    for cap in caps:
        assert all(spec.operator == "<" for spec in cap.specifier), cap
        assert cap.name not in pins


def test_unbounded_requirements_are_named_not_pinned(project: dict[str, Any], output: str) -> None:
    unbounded = [_normal(r.name) for r in _declared(project)["dependencies"] if _lower(r) is None]
    for name in unbounded:
        assert name not in _pins(output)
        assert re.search(rf"^# no lower bound declared, not pinned: .*\b{re.escape(name)}\b", output, re.M)


def test_pip_can_read_the_file(tmp_path: Path, output: str) -> None:
    """Every non-comment line is a valid requirement with at most a marker (pip's constraints syntax)."""
    path = tmp_path / "constraints.txt"
    assert _run("-o", str(path)) == ""
    assert path.read_text() == output
    for line in output.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            requirement = Requirement(line)
            assert not requirement.extras and not requirement.url
            assert requirement.specifier != SpecifierSet()


def test_a_synthetic_project(tmp_path: Path) -> None:
    """Markers kept, the highest of several bounds wins, self-references followed, exclusive bounds refused."""
    (tmp_path / "pyproject.toml").write_text("""
[project]
name = "Demo_Pkg"
dependencies = ["Foo.Bar[extra]>=1.2", "plain", "exact==2.0", "compat~=3.1"]
[project.optional-dependencies]
one = ["baz>=0.5; python_version >= '3.11'", "foo-bar>=1.4"]
test = ["pytest>=8", "baz>=0.1", "demo-pkg[one]"]
""")
    out = _run(str(tmp_path / "pyproject.toml"))
    lines = [line for line in out.splitlines() if not line.startswith("#")]
    assert lines == ['baz==0.5; python_version >= "3.11"', "compat==3.1", "exact==2.0", "foo-bar==1.4"]
    assert "declared with different lower bounds" in out and "plain" in out
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["y>1"]\n')
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "pyproject.toml")], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "exclusive lower bound" in proc.stderr
