"""The in-pod drain listener never takes its own socket for the app's (defect seen at SIGTERM:
"the app listens on the drain port 9809 itself")."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

from agent.datapath.netlink import inside
from agent.model import Pod
from agent.node.drain import DrainResult
from agent.node.drainport import DrainListeners
from tests.testbed.netns import NetnsPool, socket_in_netns

pytestmark = pytest.mark.netns

PORT = 9809


def no_drain(namespace: str, name: str, stop: threading.Event) -> DrainResult:
    raise AssertionError(f"no drain expected ({namespace}/{name})")


class Setup:
    def __init__(self, pool: NetnsPool) -> None:
        self.ns = pool.add_veth()
        self.inode = os.stat(self.ns.path).st_ino
        self.pod = Pod("shop", "web", "u1", "n1", (self.ns.ip,), "Running")
        self.events: list[tuple[str, str]] = []
        self.listeners = DrainListeners(
            PORT, no_drain, inside, lambda p, kind, reason, msg: self.events.append((reason, msg))
        )

    def sync(self, *listening: int) -> None:
        entry = (self.pod, (self.ns.path,), self.inode, frozenset(listening))
        self.listeners.sync({self.pod.key: entry})

    def connects(self) -> bool:
        with socket_in_netns(self.ns.name, socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", PORT)) == 0


@pytest.fixture
def setup(netns_pool: NetnsPool) -> Iterator[Setup]:
    s = Setup(netns_pool)
    try:
        yield s
    finally:
        s.listeners.close()


def test_a_scan_that_saw_our_listener_is_no_conflict_after_we_stop(setup: Setup) -> None:
    """At SIGTERM the listener thread closes every listener while a scan that still saw them
    is in progress; the sync that follows used to report the app on the drain port (and
    would have opened a listener again after the stop)."""
    setup.sync()
    assert setup.listeners.listening(setup.pod.key) and setup.connects()
    setup.listeners.close()  # what run() does once stopped
    setup.sync(PORT)  # the scan taken before the close saw our own socket
    assert setup.events == []
    assert not setup.listeners.listening(setup.pod.key) and not setup.connects()


def test_a_stale_scan_with_our_listener_does_not_refuse_a_new_one(setup: Setup) -> None:
    setup.sync()
    setup.listeners.sync({})  # the pod left the wanted set: its listener closes
    setup.sync(PORT)  # a scan from before the close
    assert setup.events == []
    assert setup.listeners.listening(setup.pod.key) and setup.connects()


@pytest.mark.parametrize("scan_saw_it", [True, False])
def test_the_app_on_the_drain_port_is_reported_once(setup: Setup, scan_saw_it: bool) -> None:
    app = socket_in_netns(setup.ns.name, socket.AF_INET, socket.SOCK_STREAM)
    try:
        app.bind(("0.0.0.0", PORT))
        app.listen(1)
        for _ in range(2):
            setup.sync(*([PORT] if scan_saw_it else []))
        assert not setup.listeners.listening(setup.pod.key)
        assert [reason for reason, _ in setup.events] == ["DrainPortInUse"]
        assert f"drain port {PORT}" in setup.events[0][1]
    finally:
        app.close()
    setup.sync()  # the app let it go: podlb listens
    assert setup.listeners.listening(setup.pod.key) and setup.connects()
