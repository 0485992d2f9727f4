"""What only the Django example has: its project passes Django's system checks.

The example contract (healthz, whoami, 401/403/503, malformed headers, failing fast without settings) is tested for
every example, the Django project under uvicorn (ASGI) and gunicorn (WSGI), in tests/test_example_contract.py.
"""

from __future__ import annotations

import subprocess
import sys

from ._servers import REPO, example_env


def test_system_checks_pass() -> None:
    env = example_env(ISSUER="https://issuer.test", AUDIENCES="test", ALLOW="payments/*,!payments/batch")
    proc = subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO / "examples" / "django_project", env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "System check identified no issues" in proc.stdout
