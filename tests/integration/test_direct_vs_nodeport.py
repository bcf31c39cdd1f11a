"""The direct-vs-NodePort bench, with a tiny budget: structural facts only, never timing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.direct_vs_nodeport import LB_IP, list_bench_netns, node_ip, sweep_leftovers

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(shutil.which("iptables-restore") is None, reason="needs iptables"),
    pytest.mark.timeout(60),
]


def _ours(pid: int) -> list[str]:
    return [ns for ns in list_bench_netns() if ns.startswith(f"dvn{pid}x")]


def _host_ip_forward() -> str:
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()


def _run_bench(*args: str, timeout: float = 30.0) -> dict[str, Any]:
    """Run the bench CLI; on a hang stop it with SIGTERM (its cleanup path), then SIGKILL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.direct_vs_nodeport", *args, "--json"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    finally:
        # Whatever happened, nothing of that run may stay (its pid is gone by now).
        if proc.poll() is not None and _ours(proc.pid):
            sweep_leftovers()
    assert proc.returncode == 0, err[-3000:]
    return dict(json.loads(out))


def _check_structure(result: dict[str, Any], mixes: tuple[str, ...], nodes: int) -> None:
    node_ips = {node_ip(k) for k in range(1, nodes + 1)}
    assert result["leftover_netns"] == []
    assert list_bench_netns(result["tag"]) == []
    for mix in mixes:
        m = result["mixes"][mix]
        direct, nodeport = m["direct"], m["nodeport"]
        # Both paths answered, without errors.
        for stats in (direct, nodeport):
            assert stats["requests"] > 20, (mix, stats)
            assert stats["errors"] == 0, (mix, stats)
            assert stats["p50_us"] > 0
        # Direct: the pod sees the LB's own address. NodePort: SNAT, the pod sees a node.
        assert set(direct["src_ips"]) == {LB_IP}, (mix, direct["src_ips"])
        assert set(nodeport["src_ips"]) <= node_ips, (mix, nodeport["src_ips"])
        assert LB_IP not in nodeport["src_ips"]
        # Both paths spread over more than one pod (LB round robin / kube-proxy statistic).
        assert len(direct["pods"]) > 1, (mix, direct["pods"])
        assert len(nodeport["pods"]) > 1, (mix, nodeport["pods"])
        assert direct["cross_node_pct"] == 0
        if nodes > 1 and mix == "newconn":  # every new connection is a fresh random pick
            assert set(nodeport["src_ips"]) == node_ips
            assert nodeport["cross_node_pct"] > 0
        ratios = m["ratio_direct_over_nodeport"]
        assert ratios["p50"] is not None and ratios["p50"] > 0


def test_direct_vs_nodeport_structure() -> None:
    forward_before = _host_ip_forward()
    result = _run_bench("--rounds", "2", "--duration", "0.5", "--pods", "3", "--nodes", "2")
    assert result["rounds_done"] == 2
    assert _host_ip_forward() == forward_before  # forwarding only inside the bench namespaces
    _check_structure(result, ("keepalive", "newconn"), nodes=2)


@pytest.mark.haproxy
@pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs the haproxy binary")
def test_direct_vs_nodeport_via_haproxy() -> None:
    result = _run_bench(
        "--rounds", "1", "--duration", "0.4", "--mix", "newconn", "--nodes", "2", "--via", "haproxy"
    )
    assert result["config"]["via"] == "haproxy"
    _check_structure(result, ("newconn",), nodes=2)


def test_sigterm_cleans_up() -> None:
    """A bench stopped by SIGTERM mid-run removes its namespaces itself."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.direct_vs_nodeport", "--rounds", "50", "--duration", "1"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Wait until the testbed exists (its namespaces carry the bench's pid).
        deadline = time.monotonic() + 10
        while not _ours(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _ours(proc.pid), "testbed never appeared"
        time.sleep(1.0)  # into the build or the load
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert proc.returncode == 128 + signal.SIGTERM
        assert _ours(proc.pid) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if _ours(proc.pid):
            sweep_leftovers()
