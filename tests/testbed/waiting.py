"""Polling with a deadline: the one way tests wait for the system to get somewhere."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any


def wait_for(
    pred: Callable[[], Any], timeout: float = 20.0, what: str = "", interval: float = 0.05
) -> Any:
    """Call ``pred`` every ``interval`` s until it returns something truthy (returned) or time
    is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what or pred}")


def tcp_alive(ip: str, port: int, timeout: float) -> bool:
    """A TCP health check: does ``ip:port`` accept a connection within ``timeout``?"""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False
