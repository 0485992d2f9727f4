"""docs/testing.md: every Python block is a complete test module. Write them out and run them with pytest.

They run in a subprocess, the way a user's suite would: in their own directory, with the `k8s_issuer` fixture coming
from the installed plugin and Django configured by pytest-django (DJANGO_SETTINGS_MODULE, here the suite's settings).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "testing.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
NAME = re.compile(r"# (test_\w+\.py)")
PYTEST_INI = """\
[pytest]
addopts = --strict-markers -p no:cacheprovider
filterwarnings = error
xfail_strict = true
"""


def recipes() -> dict[str, str]:
    """File name -> code of every Python block of the page."""
    files: dict[str, str] = {}
    for code in BLOCK.findall(PAGE.read_text(encoding="utf-8")):
        first = code.splitlines()[0]
        match = NAME.fullmatch(first)
        assert match, f"every Python block of docs/testing.md starts with '# test_<name>.py', not {first!r}"
        assert match.group(1) not in files, f"two blocks named {match.group(1)}"
        files[match.group(1)] = code
    return files


def test_the_page_has_a_recipe_per_framework() -> None:
    assert set(recipes()) == {"test_fake_issuer.py", "test_controlling_time.py", "test_fastapi_service.py",
                              "test_starlette_service.py", "test_flask_service.py", "test_django_service.py"}


@pytest.mark.timeout(180)
def test_every_recipe_passes(tmp_path: Path) -> None:
    for name, code in recipes().items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text(PYTEST_INI, encoding="utf-8")
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("K8S_JWT_AUTH_", "PYTEST_", "DJANGO_"))}
    env.update(PYTHONPATH=str(ROOT), DJANGO_SETTINGS_MODULE="tests.django_settings")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE", str(tmp_path)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=170)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert re.fullmatch(r"\d+ passed in [\d.]+s( \(.*\))?", summary), result.stdout[-3000:]
