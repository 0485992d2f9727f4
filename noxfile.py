"""Sessions for every supported Python, lint, types, docs and the declared minimum versions.

    nox                               # lint, types, then the suite on every supported Python
    nox -s tests-3.13 -- -x -k redis  # arguments after -- go to pytest
    nox -s minimum_versions           # every dependency at its declared lower bound, on the oldest Python
    nox -s docs                       # mkdocs build --strict
    nox -l                            # the sessions

The Redis tests need `redis-server` on PATH (.ci/run installs it). Under pyenv, every installed CPython of
PYTHONS is found even when only one is active (PYENV_VERSION is set for nox when it is not set already).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import nox
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]  # requires-python >= 3.10, and the classifiers
OLDEST, NEWEST = PYTHONS[0], PYTHONS[-1]

nox.options.sessions = ["lint", "types", "tests"]
nox.options.reuse_existing_virtualenvs = True


def _pyenv_versions() -> str | None:
    """The active pyenv version(s), then every installed CPython of PYTHONS: nox finds pyenv's interpreters
    through its shims, which answer only for active versions."""
    root = os.environ.get("PYENV_ROOT")
    if not root or "PYENV_VERSION" in os.environ or not (versions := Path(root, "versions")).is_dir():
        return None
    active = Path(root, "version").read_text().split() if Path(root, "version").is_file() else []
    installed = sorted((p.name for p in versions.iterdir() if re.fullmatch(r"3\.\d+\.\d+", p.name)
                        and p.name.rsplit(".", 1)[0] in PYTHONS), key=lambda v: [int(n) for n in v.split(".")])
    return ":".join(dict.fromkeys([*active, *reversed(installed)])) or None


if pyenv_versions := _pyenv_versions():
    os.environ["PYENV_VERSION"] = pyenv_versions


def _test_requirement(name: str) -> str:
    """The test extra's requirement for one tool (`ruff>=0.5`), so lint installs the version the suite does."""
    extras = nox.project.load_toml(ROOT / "pyproject.toml")["project"]["optional-dependencies"]
    for text in extras["test"]:
        if Requirement(text).name == name:
            return str(text)
    raise LookupError(f"the test extra does not list {name}")


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole suite on one Python (with the newest framework releases pip finds for it)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=NEWEST)
def lint(session: nox.Session) -> None:
    """ruff, with the configuration in pyproject.toml."""
    session.install(_test_requirement("ruff"))
    session.run("ruff", "check", ".", *session.posargs)


@nox.session(python=NEWEST)
def types(session: nox.Session) -> None:
    """mypy --strict on the core and the integrations (files and options in pyproject.toml)."""
    session.install("-e", ".[test]")  # mypy and the frameworks whose types the integrations use
    session.run("mypy", *session.posargs)


@nox.session(python=NEWEST)
def docs(session: nox.Session) -> None:
    """The documentation site, with every warning an error (mkdocs.yml)."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session(python=OLDEST)
def minimum_versions(session: nox.Session) -> None:
    """The suite with every dependency at the lower bound pyproject.toml declares, on the oldest Python.

    tools/min_constraints.py writes the pins (test and docs tools float); a bound that does not hold fails here.
    """
    constraints = Path(session.create_tmp()) / "constraints-min.txt"
    # nox's own interpreter has what the script needs (packaging, and tomli before 3.11)
    session.run(sys.executable, str(ROOT / "tools" / "min_constraints.py"), "-o", str(constraints), external=True)
    session.log("constraints:\n%s", constraints.read_text())
    session.install("-c", str(constraints), "-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)
