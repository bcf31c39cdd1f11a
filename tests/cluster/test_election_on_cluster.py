"""Leader election through the real Lease API: the DaemonSet's agent and one more on the host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent.leader.election import ElectionConfig
from tests.cluster.cluster import NODE, NODE_IP, Cluster
from tests.cluster.hoststate import CGROUP_NAME
from tests.cluster.podlb import AGENT_NS, RUNTIME_PORT, NodeLB, Podlb, until
from tests.testbed.appproc import wait_listening

# The first test of a run also builds the images (minutes when cold) and starts the cluster.
pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(900)]

LEASE_DURATION_S = 15.0  # client-go's default, the agent's too
RETRY_PERIOD_S = 2.0
# A candidate looks every retry period times 1 + U[0, 1.2) (ElectionConfig.acquire_jitter, as
# client-go): it may see the last renewal up to one such look late, and the expiry another.
CANDIDATE_LOOK_S = RETRY_PERIOD_S * (1 + ElectionConfig().acquire_jitter)
HANDOVER_BOUND_S = LEASE_DURATION_S + 2 * CANDIDATE_LOOK_S + 1.0  # + the acquire's round trip
HOST_IDENTITY = "host-agent"


@pytest.fixture
def host_agent(
    cluster: Cluster, podlb: Podlb, lb: NodeLB, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``podlb-agent run`` on the host with the agent's ServiceAccount token, another identity,
    and its own ports (the DaemonSet's agent holds 9808 and the in-pod 9809)."""
    del lb
    token = cluster.kubectl("-n", AGENT_NS, "create", "token", "podlb-agent", "--duration=1h")
    kubeconfig = tmp_path / "host-agent.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": cluster.server,
                                               "certificate-authority": str(cluster.pki.ca)}}],
        "users": [{"name": "u", "user": {"token": token.strip()}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }))  # fmt: skip
    log = (tmp_path / "host-agent.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", f"--kubeconfig={kubeconfig}",
         f"--node-name={NODE}", f"--identity={HOST_IDENTITY}", f"--namespace={AGENT_NS}",
         "--lb=haproxy", f"--haproxy-runtime=tcp:{NODE_IP}:{RUNTIME_PORT}",
         "--listen=127.0.0.1:19808", "--drain-port=19809", "--log-format=text"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_listening("127.0.0.1", 19808, timeout=30, proc=proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(20)
        log.close()
        print((tmp_path / "host-agent.log").read_text()[-3000:], file=sys.stderr)


def _agent_container_pids() -> list[int]:
    """The DaemonSet agent's processes, found by their kubepods cgroup and command line."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroup = (entry / "cgroup").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if f"/{CGROUP_NAME}/" in cgroup and b"podlb-agent" in cmdline:
            pids.append(int(entry.name))
    return pids


def _handover(podlb: Podlb, to: str, since: float) -> float:
    until(f"{to} leads", lambda: podlb.lease_holder() == to, HANDOVER_BOUND_S, 0.05)
    return time.monotonic() - since


def test_one_leader_and_handover_within_lease(
    podlb: Podlb, host_agent: subprocess.Popen[bytes]
) -> None:
    daemonset_agent = podlb.wait_ready().metadata.name
    until("the DaemonSet's agent leads", lambda: podlb.lease_holder() == daemonset_agent, 30)
    # The host agent follows: the lease is not taken from a live leader.
    deadline = time.monotonic() + 3 * RETRY_PERIOD_S
    while time.monotonic() < deadline:
        assert podlb.lease_holder() == daemonset_agent
        time.sleep(0.2)
    # The leader freezes (SIGSTOP: as dead as a wedged node for the lease, and the kubelet
    # does not restart it, which would renew under the same identity).
    pids = _agent_container_pids()
    assert pids, "the DaemonSet agent's process was not found"
    stopped_at = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        first = _handover(podlb, HOST_IDENTITY, stopped_at)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    # Woken up, the old leader finds the lease taken and does not take it back.
    time.sleep(2 * RETRY_PERIOD_S)
    assert podlb.lease_holder() == HOST_IDENTITY
    # The host agent dies without releasing the lease; the DaemonSet's agent takes over.
    killed_at = time.monotonic()
    host_agent.kill()
    host_agent.wait(10)
    second = _handover(podlb, daemonset_agent, killed_at)
    print(f"\nhandover: {first:.1f} s after SIGSTOP of the leader, {second:.1f} s after SIGKILL",
          file=sys.stderr)  # fmt: skip
    # The follower counts the lease from when it saw the last renewal (up to one jittered look
    # late) and looks again one jittered look later.
    assert first <= HANDOVER_BOUND_S and second <= HANDOVER_BOUND_S
