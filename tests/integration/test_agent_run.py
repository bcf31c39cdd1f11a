"""``podlb-agent run`` as real processes, against the API double and the simulated kubelet."""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.testbed.agents import AgentProcess, agents, leaders
from tests.testbed.appproc import app_argv
from tests.testbed.kubeapi import KubeAPIServer
from tests.testbed.node import Kubelet, make_pod
from tests.testbed.rbac import AGENT_TOKEN, agent_cluster
from tests.testbed.waiting import wait_for

pytestmark = pytest.mark.netns

GATE = "podlb.io/lb-ready"
COND = "podlb.io/datapath-ready"


@pytest.fixture
def api() -> Iterator[KubeAPIServer]:
    with agent_cluster("shop") as server:
        yield server


def condition(core: client.CoreV1Api, name: str, ctype: str = COND) -> dict[str, Any] | None:
    pod = core.api_client.sanitize_for_serialization(core.read_namespaced_pod(name, "shop"))
    for c in pod.get("status", {}).get("conditions") or []:
        if c["type"] == ctype:
            return dict(c)
    return None


def forbidden(api: KubeAPIServer) -> list[Any]:
    return [r for r in api.requests if r.code in (401, 403)]


def test_three_agents_report_their_own_pods_and_not_listening(api: KubeAPIServer) -> None:
    nodes = ["node-a", "node-b", "node-c"]
    core = client.CoreV1Api(api.api_client())
    with Kubelet.for_api(api, nodes) as kubelet, agents(api.url, AGENT_TOKEN, nodes) as procs:
        for node in nodes:
            for i in range(2):
                core.create_namespaced_pod(
                    "shop",
                    make_pod(f"web-{node[-1]}{i}", node, namespace="shop", readiness_gates=[GATE]),
                )
        # a pod that is not opted in: inspected, shown, but no condition written on it
        core.create_namespaced_pod("shop", make_pod("plain", "node-a", namespace="shop"))
        for p in procs:
            p.wait_ready()
        names = [f"web-{n[-1]}{i}" for n in nodes for i in range(2)]
        for name in names:
            wait_for(
                lambda n=name: (condition(core, n) or {}).get("status") == "True",
                what=f"{name} datapath-ready True",
            )
        for p in procs:
            listed = p.get_json("/v1/pods")["pods"]
            mine = {x["name"] for x in listed}
            assert mine == {f"web-{p.node[-1]}{i}" for i in range(2)} | (
                {"plain"} if p.node == "node-a" else set()
            )
            for x in listed:
                assert x["interface"]["kind"] == "veth"
                assert {"address": "0.0.0.0", "port": 8080} in x["tcp"]["listening"]
        plain = next(x for x in procs[0].get_json("/v1/pods")["pods"] if x["name"] == "plain")
        assert plain["opted_in"] is False and plain["datapath"]["ready"] is None
        assert condition(core, "plain") is None
        assert condition(core, "web-a0", "Ready") is not None  # kubelet's condition untouched

        # The app stops listening: NotListening; it listens again: True.
        netns = kubelet.pod_netns("web-b1", "shop")
        assert netns is not None
        first = dict(condition(core, "web-b1") or {})
        for proc in list(netns.procs):
            proc.kill()
        cond = wait_for(
            lambda: (c := condition(core, "web-b1")) and c["status"] == "False" and c,
            what="NotListening",
        )
        assert cond["reason"] == "NotListening"
        assert cond["lastTransitionTime"] >= first["lastTransitionTime"]
        netns.popen(app_argv(8080, "web-b1"))
        wait_for(lambda: (condition(core, "web-b1") or {}).get("status") == "True", what="back")
        events = core.list_namespaced_event("shop").items
        reasons = [e.reason for e in events if e.involved_object.name == "web-b1"]
        assert "DatapathReadyTrue" in reasons and "DatapathReadyNotListening" in reasons

        metrics = procs[1].get("/metrics")[1].decode()
        assert (
            'podlb_pod_datapath_ready{namespace="shop",pod="web-b1",reason="Ready"} 1.0' in metrics
        )
        assert "podlb_pod_interface_receive_bytes_total" in metrics
        assert "podlb_scan_duration_seconds_count" in metrics
        assert (
            'podlb_kube_requests_total{code="200",resource="pods/status",verb="patch"}' in metrics
        )
    assert forbidden(api) == []


def test_no_write_when_nothing_changes(api: KubeAPIServer) -> None:
    core = client.CoreV1Api(api.api_client())
    with Kubelet.for_api(api, ["node-a"]), agents(api.url, AGENT_TOKEN, ["node-a"]) as procs:
        core.create_namespaced_pod(
            "shop", make_pod("web", "node-a", namespace="shop", readiness_gates=[GATE])
        )
        procs[0].wait_ready()
        wait_for(lambda: (condition(core, "web") or {}).get("status") == "True")
        time.sleep(0.5)
        before = [r for r in api.requests if r.verb in ("patch", "create", "update")]
        time.sleep(2.5)  # several scans (0.5 s apart) and lease renewals
        after = [r for r in api.requests if r.verb in ("patch", "create", "update")]
        writes = [r for r in after[len(before) :] if r.resource != "leases"]
        assert writes == []


def test_api_outage_keeps_serving_and_recovers(api: KubeAPIServer) -> None:
    core = client.CoreV1Api(api.api_client())
    with (
        Kubelet.for_api(api, ["node-a"]) as kubelet,
        agents(api.url, AGENT_TOKEN, ["node-a"]) as procs,
    ):
        core.create_namespaced_pod(
            "shop", make_pod("web", "node-a", namespace="shop", readiness_gates=[GATE])
        )
        agent = procs[0]
        agent.wait_ready()
        wait_for(lambda: (condition(core, "web") or {}).get("status") == "True")
        api.faults.refuse()
        try:
            netns = kubelet.pod_netns("web", "shop")
            assert netns is not None
            for proc in list(netns.procs):
                proc.kill()
            # Still serving metrics and /v1/pods, and its view follows the datapath.
            wait_for(
                lambda: (
                    agent.get_json("/v1/pods")["pods"][0]["datapath"]["reason"] == "NotListening"
                ),
                what="agent sees NotListening during the outage",
            )
            assert agent.get("/metrics")[0] == 200
            assert agent.get("/healthz")[0] == 200
        finally:
            api.faults.accept()
        cond = wait_for(
            lambda: (c := condition(core, "web")) and c["status"] == "False" and c,
            timeout=30,
            what="condition written after the API came back",
        )
        assert cond["reason"] == "NotListening"
        assert agent.proc is not None and agent.proc.poll() is None


def test_sigterm_stops_cleanly(api: KubeAPIServer) -> None:
    proc = AgentProcess(api.url, AGENT_TOKEN, "node-a").start()
    try:
        proc.wait_ready()
        t0 = time.monotonic()
        proc.signal(signal.SIGTERM)
        assert proc.proc is not None
        assert proc.proc.wait(15) == 0, proc.log_text()
        assert time.monotonic() - t0 < 12
        assert "stopped cleanly" in proc.log_text(None)
    finally:
        proc.stop()


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--node-name", ""], {}, "--node-name is required: pass --node-name NODE or set"),
        (["--node-name", "n1", "--scan-interval", "abc"], {}, "--scan-interval='abc' (from flag"),
        (["--node-name", "n1"], {"PODLB_LISTEN": "nope"}, "(from environment PODLB_LISTEN)"),
        (["--node-name", "n1", "--renew-deadline", "20"], {}, "renew-deadline < lease-duration"),
        (["--node-name", "n1"], {"PODLB_ROLE": "boss"}, "expected one of all, node, leader"),
        (
            [
                "--role",
                "node",
                "--node-name",
                "n1",
                "--lb",
                "haproxy",
                "--haproxy-runtime",
                "unix:/x",
            ],
            {},
            "--role node never calls an LB",
        ),
    ],
)
def test_invalid_settings_exit_2(args: list[str], env: dict[str, str], needle: str) -> None:
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "agent", "run", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
    )
    assert out.returncode == 2, out
    assert needle in out.stderr


def test_roles_split_the_node_work_from_the_leader(api: KubeAPIServer) -> None:
    """--role node writes datapath-ready and never leads; --role leader leads, writes lb-ready
    and serves /healthz, /readyz and /metrics without any pod of its own."""
    core = client.CoreV1Api(api.api_client())
    with (
        Kubelet.for_api(api, ["node-a"]),
        agents(api.url, AGENT_TOKEN, ["node-a"], extra=["--role", "node"]) as [node],
        agents(api.url, AGENT_TOKEN, ["node-x"], identity="leader-1",
               extra=["--role", "leader"]) as [lead],
    ):  # fmt: skip
        core.create_namespaced_pod(
            "shop", make_pod("web-0", "node-a", namespace="shop", readiness_gates=[GATE])
        )
        node.wait_ready()
        lead.wait_ready()
        wait_for(lambda: (condition(core, "web-0") or {}).get("status") == "True",
                 what="datapath-ready True from the node role")  # fmt: skip
        wait_for(lambda: leaders([node, lead]) == [lead], what="the leader role leads")
        # --lb none: the leader computes the backends and writes no lb-ready; it holds the Lease
        # and lists no pods, the node agent lists its own.
        assert lead.get_json("/v1/pods")["pods"] == []
        assert [p["name"] for p in node.get_json("/v1/pods")["pods"]] == ["web-0"]
        time.sleep(1.0)
        assert leaders([node, lead]) == [lead]
    assert not forbidden(api)


def leader_of(procs: list[AgentProcess]) -> list[str]:
    return [p.identity for p in leaders(procs)]


def test_leader_killed_or_stopped_is_replaced(api: KubeAPIServer) -> None:
    fast = ["--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.3"]
    nodes = ["node-a", "node-b", "node-c"]
    with agents(api.url, AGENT_TOKEN, nodes, extra=fast) as procs:
        for p in procs:
            p.wait_ready()
        [first] = wait_for(
            lambda: (ls := leader_of(procs)) and len(ls) == 1 and ls, what="a leader"
        )
        killed = next(p for p in procs if p.identity == first)
        t0 = time.monotonic()
        killed.signal(signal.SIGKILL)  # no release: the others wait for the lease to expire
        [second] = wait_for(lambda: leader_of(procs), timeout=10, what="a new leader")
        assert second != first
        assert time.monotonic() - t0 < 3 + 2  # lease duration + retry slack
        stopped = next(p for p in procs if p.identity == second)
        t1 = time.monotonic()
        assert stopped.stop() == 0  # clean stop releases the lease
        [third] = wait_for(lambda: leader_of(procs), timeout=10, what="a third leader")
        assert third not in (first, second)
        assert time.monotonic() - t1 < 3  # well under a lease duration: released, not expired


def test_deleted_pod_series_vanish_and_garbage_requests(api: KubeAPIServer) -> None:
    core = client.CoreV1Api(api.api_client())
    with (
        Kubelet.for_api(api, ["node-a"]) as kubelet,
        agents(api.url, AGENT_TOKEN, ["node-a"]) as procs,
    ):
        agent = procs[0]
        core.create_namespaced_pod("shop", make_pod("gone", "node-a", namespace="shop", grace=1))
        agent.wait_ready()
        wait_for(lambda: 'pod="gone"' in agent.get("/metrics")[1].decode(), what="series")
        core.delete_namespaced_pod("gone", "shop")
        kubelet.wait_gone("gone", "shop")
        wait_for(lambda: 'pod="gone"' not in agent.get("/metrics")[1].decode(), what="no series")

        import socket as pysocket

        for garbage in (b"\x00\xff garbage\r\n\r\n", b"GET " + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"):
            with pysocket.create_connection(("127.0.0.1", agent.port), timeout=5) as s:
                s.sendall(garbage)
                reply = s.recv(200)
            assert reply.startswith(b"HTTP/1.") and reply[9:10] == b"4", reply  # a 4xx
        assert agent.get("/nope")[0] == 404
        req = urllib.request.Request(agent.url + "/v1/pods", method="DELETE")
        try:
            urllib.request.urlopen(req, timeout=2)
            raise AssertionError("DELETE accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 405
        assert agent.get("/healthz")[0] == 200
