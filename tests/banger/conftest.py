"""pytest configuration for the banger_disk tests: the marker for tests that need pyext4's engines."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs_pyext4_engines: uses pyext4.Filesystem (reader/writer) or pyext4.populate through banger_disk",
    )
