"""Pod IPs of a simulated node: handed out, given back, and reused last."""

from __future__ import annotations

import pytest

from tests.testbed.nodenet import NodeNetwork


def test_ips_come_back_and_are_reused_last() -> None:
    net = NodeNetwork.__new__(NodeNetwork)  # only the IP bookkeeping: no routes, no pool
    net.pod_cidrs = {"node-a": "10.244.7.0/30"}
    NodeNetwork._init_ips(net)
    assert [net.alloc_ip("node-a")] == ["10.244.7.2"]
    with pytest.raises(RuntimeError, match=r"no free pod IP in 10\.244\.7\.0/30"):
        net.alloc_ip("node-a")
    net.free_ip("node-a", "10.244.7.2")
    net.free_ip("node-a", "10.244.7.2")  # twice: still once in the line
    assert net.alloc_ip("node-a") == "10.244.7.2"
    with pytest.raises(RuntimeError):
        net.alloc_ip("node-a")
