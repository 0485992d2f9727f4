"""Write a pip constraints file that pins every dependency to the lower bound pyproject.toml declares for it.

    python tools/min_constraints.py -o constraints-min.txt
    pip install -c constraints-min.txt -e ".[test]"

The pins cover `project.dependencies` and every extra except the tool extras (`test`, `docs`): those hold test and
build tools (pytest, hypothesis, ruff, mypy, mkdocs...) that may float. A framework listed in the `test` extra is
still pinned when a user-facing extra (or the core) declares it; an extra that names the project itself
(`k8s-jwt-auth[bench]`) is followed, so the `test` extra's `bench` libraries are pinned too.

Rules:
- the lower bound comes from `>=`, `==` or `~=`; a requirement with no such bound (`certifi`) is not pinned and is
  listed in a comment, so the file says what it does not cover;
- names are normalised (PEP 503: `prometheus_client` -> `prometheus-client`, `PyJWT` -> `pyjwt`) and extras are
  dropped (pip refuses extras in a constraints file): `pyjwt[crypto]>=2.8` pins `pyjwt==2.8`;
- environment markers are kept (`name==1.0; python_version >= "3.11"`);
- one name declared with different lower bounds in different places is pinned to the highest of them (the bound
  that holds when every extra is installed together), and the file says so in a comment.

A few packages this project does not declare are capped too (`COMPANIONS`): floating tools new enough to
deprecate what the pinned frameworks use would turn the suite's `filterwarnings = error` against them. Each cap
names its reason and holds only while the pin that needs it is below the version that no longer needs it.

Needs `packaging` and, on Python 3.10, `tomli` (pip, pytest and nox all bring both).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["COMPANIONS", "FLOATING_EXTRAS", "Companion", "Constraints", "Pin", "collect", "lower_bound", "main",
           "normalise", "render"]

#: Extras whose own requirements are tools, not dependencies of the library: they float.
FLOATING_EXTRAS = frozenset({"test", "docs"})


@dataclass(frozen=True)
class Companion:
    """A cap on a package we do not declare, needed while `pinned`'s pin is below `until`."""

    requirement: str
    pinned: str
    until: str
    reason: str

    def applies(self, pins: Mapping[str, Pin]) -> bool:
        pin = pins.get(self.pinned)
        return pin is not None and pin.version < Version(self.until)


COMPANIONS = (
    Companion("anyio<4.15", "starlette", "1.7",
              "starlette < 1.7's TestClient uses anyio.abc.BlockingPortal, deprecated in anyio 4.15"),
    Companion("pytest<9.2", "starlette", "1.7",
              "the pytest plugin of anyio < 4.15 imports _pytest.python.CallSpec2, deprecated in pytest 9.2"),
)

ROOT = Path(__file__).resolve().parents[1]


def normalise(name: str) -> str:
    """The PEP 503 normal form of a distribution name: lower case, runs of `-_.` become one `-`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lower_bound(requirement: Requirement) -> Version | None:
    """The lowest version a requirement allows, from its `>=`, `==` or `~=` clauses; None if it declares none.

    Raises:
        ValueError: the requirement's own clauses exclude its lower bound (`>=2,!=2.0`, `>2`): pin it by hand.
    """
    bounds = [Version(spec.version) for spec in requirement.specifier if spec.operator in (">=", "==", "~=")]
    if not bounds:
        if any(spec.operator == ">" for spec in requirement.specifier):
            raise ValueError(f"{requirement}: an exclusive lower bound (>) has no lowest version; write >=")
        return None
    bound = max(bounds)
    if not requirement.specifier.contains(bound, prereleases=True):
        raise ValueError(f"{requirement}: its own clauses exclude its lower bound {bound}")
    return bound


@dataclass
class Pin:
    """One name's pin: the lower bound, the marker, and where the name was declared with which bound."""

    name: str
    version: Version
    marker: str | None
    declared: dict[str, Version] = field(default_factory=dict)

    def line(self) -> str:
        marker = f"; {self.marker}" if self.marker else ""
        return f"{self.name}=={self.version}{marker}"


@dataclass
class Constraints:
    """What `collect` found: the pins, the requirements left floating and those with no lower bound."""

    pins: dict[str, Pin] = field(default_factory=dict)
    floating: dict[str, list[str]] = field(default_factory=dict)
    unbounded: dict[str, list[str]] = field(default_factory=dict)
    companions: list[Companion] = field(default_factory=list)


def _sources(project: Mapping[str, Any], floating_extras: Iterable[str]) -> tuple[
        list[tuple[str, Requirement]], list[tuple[str, Requirement]]]:
    """(pinned, floating) lists of (where, requirement), following self-references into the extras they name."""
    own = normalise(project["name"])
    extras: Mapping[str, Sequence[str]] = project.get("optional-dependencies", {})
    floating_names = {normalise(extra) for extra in floating_extras}
    pinned: list[tuple[str, Requirement]] = []
    loose: list[tuple[str, Requirement]] = []
    todo = [("dependencies", req, False) for req in project.get("dependencies", [])]
    todo += [(f"[{extra}]", req, normalise(extra) in floating_names) for extra, reqs in extras.items() for req in reqs]
    for where, text, floats in todo:
        requirement = Requirement(text)
        if normalise(requirement.name) == own:
            continue  # k8s-jwt-auth[bench]: the bench extra is itself in `todo`, pinned on its own terms
        (loose if floats else pinned).append((where, requirement))
    return pinned, loose


def collect(pyproject: Mapping[str, Any], floating_extras: Iterable[str] = FLOATING_EXTRAS,
            companions: Iterable[Companion] = COMPANIONS) -> Constraints:
    """Pins for every dependency and non-tool extra of a parsed pyproject.toml, and the companion caps they need."""
    pinned, loose = _sources(pyproject["project"], floating_extras)
    result = Constraints()
    for where, requirement in pinned:
        name = normalise(requirement.name)
        bound = lower_bound(requirement)
        if bound is None:
            result.unbounded.setdefault(name, []).append(where)
            continue
        marker = str(requirement.marker) if requirement.marker else None
        pin = result.pins.setdefault(name, Pin(name, bound, marker))
        pin.declared[where] = bound
        if pin.marker != marker:
            pin.marker = None if pin.marker is None or marker is None else f"({pin.marker}) or ({marker})"
        pin.version = max(pin.version, bound)
    for where, requirement in loose:
        name = normalise(requirement.name)
        if name not in result.pins and name not in result.unbounded:
            result.floating.setdefault(name, []).append(where)
    result.unbounded = {name: wheres for name, wheres in result.unbounded.items() if name not in result.pins}
    result.companions = [companion for companion in companions if companion.applies(result.pins)]
    return result


def render(constraints: Constraints) -> str:
    """The constraints file: a header, one `name==version` line per pin (sorted), notes as comments."""
    lines = [
        "# Generated by tools/min_constraints.py from pyproject.toml: every dependency at its declared lower bound.",
        "# Use: pip install -c <this file> -e '.[test]'. Do not edit; change the bounds in pyproject.toml.",
    ]
    for name in sorted(constraints.pins):
        pin = constraints.pins[name]
        if len(set(pin.declared.values())) > 1:
            where = ", ".join(f"{w} >={v}" for w, v in pin.declared.items())
            lines.append(f"# {name}: declared with different lower bounds ({where}); pinned to the highest")
        lines.append(pin.line())
    if constraints.companions:
        lines.append("# not declared by this project, capped while the pins above need it:")
        lines += [f"{c.requirement}  # {c.reason}" for c in constraints.companions]
    if constraints.unbounded:
        lines.append(f"# no lower bound declared, not pinned: {', '.join(sorted(constraints.unbounded))}")
    capped = {normalise(Requirement(c.requirement).name) for c in constraints.companions}
    if floating := sorted(set(constraints.floating) - capped):
        lines.append(f"# tools, left floating: {', '.join(floating)}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", nargs="?", type=Path, default=ROOT / "pyproject.toml",
                        help="the pyproject.toml to read (default: this repository's)")
    parser.add_argument("-o", "--output", type=Path, help="write the constraints here (default: stdout)")
    parser.add_argument("--float-extra", action="append", metavar="EXTRA",
                        help="an extra whose requirements float (repeatable; default: test, docs)")
    args = parser.parse_args(argv)
    with args.pyproject.open("rb") as fh:
        pyproject = tomllib.load(fh)
    try:
        text = render(collect(pyproject, args.float_extra or FLOATING_EXTRAS))
    except ValueError as exc:
        parser.exit(2, f"min_constraints: {exc}\n")
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
