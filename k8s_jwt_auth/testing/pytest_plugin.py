"""pytest plugin (registered through the `pytest11` entry point): fixtures around `FakeIssuer`.

* `k8s_issuer_session` — one `FakeIssuer` serving on 127.0.0.1 for the whole session.
* `k8s_issuer` — the same issuer, reset (initial key only, no failure, zero counters) for each test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._issuer import FakeIssuer

__all__ = ["k8s_issuer", "k8s_issuer_session"]


@pytest.fixture(scope="session")
def k8s_issuer_session() -> Iterator[FakeIssuer]:
    """A fake issuer shared by the whole test session."""
    with FakeIssuer() as issuer:
        yield issuer


@pytest.fixture
def k8s_issuer(k8s_issuer_session: FakeIssuer) -> Iterator[FakeIssuer]:
    """The session's fake issuer, reset before and after the test."""
    k8s_issuer_session.reset()
    yield k8s_issuer_session
    k8s_issuer_session.reset()
