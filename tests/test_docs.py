"""The docs stay whole: every page is in the mkdocs nav, the README's list and docs/index.md; demo output is real."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from k8s_jwt_auth.cli import main

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md"))


def nav_pages(entries: object) -> list[str]:
    """The page files of a mkdocs `nav` (nested sections included)."""
    if isinstance(entries, str):
        return [entries]
    if isinstance(entries, list):
        return [page for entry in entries for page in nav_pages(entry)]
    if isinstance(entries, dict):
        return [page for value in entries.values() for page in nav_pages(value)]
    return []


def section(text: str, heading: str) -> str:
    """The text of one `## heading` section of a Markdown document."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end == -1 else text[start:end]


def linked(text: str, prefix: str = "") -> set[str]:
    """The Markdown pages a text links to, relative to the docs directory, anchors dropped."""
    return {match.split("#")[0] for match in re.findall(rf"\]\({re.escape(prefix)}([\w/.-]+\.md)(?:#[\w-]+)?\)", text)}


def test_there_are_pages() -> None:
    assert {"index.md", "testing.md", "api/core.md"} <= set(PAGES)


def test_every_page_is_in_the_mkdocs_nav_and_every_nav_entry_exists() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = nav_pages(config["nav"])
    assert sorted(nav) == PAGES
    assert len(nav) == len(set(nav)), "a page is in the nav twice"


def test_the_readme_lists_every_page() -> None:
    documentation = section((ROOT / "README.md").read_text(encoding="utf-8"), "Documentation")
    missing = set(PAGES) - {"index.md"} - linked(documentation, "docs/")
    assert not missing, f"README.md's Documentation section does not link {sorted(missing)}"


def test_the_home_page_lists_every_page() -> None:
    pages = section((DOCS / "index.md").read_text(encoding="utf-8"), "Pages")
    missing = set(PAGES) - {"index.md"} - linked(pages)
    assert not missing, f"docs/index.md's Pages section does not link {sorted(missing)}"


# -- the demo's output, as the docs show it ------------------------------------------------------------------


def normalise(output: str) -> str:
    """Output with what changes from run to run (ports, token fingerprints) replaced by placeholders."""
    output = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", output)
    return re.sub(r"\(token [0-9a-f]{16}\)", "(token FINGERPRINT)", output).strip()


def shown_demo_outputs() -> list[tuple[str, str]]:
    """(page, output) of every demo output block of the docs: the blocks holding the demo's table."""
    shown = []
    for page in PAGES:
        for block in re.findall(r"^```(?:text|console)\n(.*?)^```", (DOCS / page).read_text(encoding="utf-8"),
                                re.S | re.M):
            if "expected  got  outcome" in block:
                lines = block.splitlines()
                if lines[0].startswith("$ "):  # a console block: drop the command (up to `k8s-jwt-auth demo ...`)
                    lines = lines[next(i for i, line in enumerate(lines) if "k8s-jwt-auth demo" in line) + 1:]
                shown.append((page, "\n".join(lines)))
    return shown


def test_the_docs_show_the_demo() -> None:
    assert {page for page, _ in shown_demo_outputs()} >= {"quickstart.md", "cli.md"}


def test_the_demo_output_in_the_docs_is_what_the_demo_prints(capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["demo"]) == 0
    fake = normalise(capsys.readouterr().out)
    monkeypatch.chdir(ROOT)  # the docs run it from the repository root, with the bundled fixture
    monkeypatch.setenv("K8S_JWT_AUTH_ISSUER", "https://kubernetes.default.svc.cluster.local")
    monkeypatch.setenv("K8S_JWT_AUTH_AUDIENCES", "payments-api")
    monkeypatch.setenv("K8S_JWT_AUTH_JWKS_FILE", "examples/k8s-fixture/jwks.json")
    assert main(["demo", "--expired-token-file", "examples/k8s-fixture/pub-pod-bound-1h.jwt"]) == 0
    real_issuer = normalise(capsys.readouterr().out)
    for page, shown in shown_demo_outputs():
        expected = fake if shown.startswith("fake cluster issuer") else real_issuer
        assert normalise(shown) == expected, f"docs/{page} shows demo output that the demo does not print"
