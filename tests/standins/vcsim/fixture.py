"""Pytest fixtures for vcsim. Import them into a test module or conftest::

from tests.standins.vcsim.fixture import vcsim  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.standins.vcsim.vcsim import Vcsim, VcsimUnavailable, start_vcsim


@pytest.fixture(scope="session")
def vcsim() -> Iterator[Vcsim]:
    """One vcsim per test session on 127.0.0.1 (TLS, user ``svmt``); stopped at the end."""
    try:
        server = start_vcsim()
    except VcsimUnavailable as exc:
        pytest.fail(f"vcsim is needed and could not start: {exc}")
    try:
        yield server
    finally:
        server.stop()
