"""Fixtures of the integration tests (a module may define its own ``api`` instead)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.testbed.kubeapi import KubeAPIServer


@pytest.fixture
def api() -> Iterator[KubeAPIServer]:
    """A fresh API testbed on a free loopback port, stopped after the test."""
    with KubeAPIServer(port=0) as server:
        yield server
