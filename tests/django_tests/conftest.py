"""Configure Django for the tests in this directory only (the rest of the suite never loads it).

pytest-django is inert until Django is configured. This conftest is imported when pytest collects this directory;
its `pytest_configure` (called as soon as a conftest is registered) configures settings from
`tests/django_settings.py`, without setting DJANGO_SETTINGS_MODULE, so subprocesses do not inherit it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings as django_settings

from k8s_jwt_auth.testing import FakeIssuer
from tests import django_settings as test_settings

Configure = Callable[..., dict[str, Any]]


def pytest_configure(config: pytest.Config) -> None:
    if not django_settings.configured:
        django_settings.configure(**{name: getattr(test_settings, name) for name in dir(test_settings)
                                     if name.isupper()})
        django.setup()


@pytest.fixture(autouse=True)
def _no_database_unless_marked(request: pytest.FixtureRequest, django_db_blocker: Any) -> Iterator[None]:
    """Database access fails in tests without `@pytest.mark.django_db`: workloads need no database by default."""
    if request.node.get_closest_marker("django_db"):
        yield
        return
    with django_db_blocker.block():
        yield


@pytest.fixture
def jwks_file(issuer: FakeIssuer, tmp_path: Path) -> str:
    """The fake issuer's current keys in a JWKS file."""
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(issuer.jwks()))
    return str(path)


@pytest.fixture
def configure(settings: Any, issuer: FakeIssuer, jwks_file: str) -> Configure:
    """Set `K8S_JWT_AUTH` for this test: the fake issuer, audience "test", static keys, plus `overrides`.

    A key given as `None` is removed. Returns the dict set.
    """

    def apply(**overrides: Any) -> dict[str, Any]:
        value: dict[str, Any] = {"ISSUER": issuer.issuer, "AUDIENCES": ["test"], "JWKS_FILE": jwks_file,
                                 "EXEMPT_PATHS": ["/healthz", "/public/*", "/drf/*"]}
        value.update(overrides)
        settings.K8S_JWT_AUTH = {k: v for k, v in value.items() if v is not None}
        return settings.K8S_JWT_AUTH

    apply()
    return apply
