"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.testbed.netns import NetnsPool


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root: creates network namespaces")
        for item in items:
            if "netns" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def netns_pool() -> Iterator[NetnsPool]:
    """Pod-like namespaces, all removed after the test, pass or fail."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    pool = NetnsPool()
    try:
        yield pool
    finally:
        pool.close()
