"""A wedged API server (issue 17, defect 2): connections accepted and never answered.

The testbed's ``blackhole`` reads requests and never answers them, and the connections they came
on stay silent for good (watch streams too), like a NAT entry or an API LB that dropped them
without a reset. Every API call must give up on its own (connect and read timeouts), so nothing
waits forever: not the election loop, not the informers, not the condition writer.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from agent.clock import Clock
from agent.errors import PodlbError
from agent.kube.calls import Calls
from agent.kube.client import KubeAccess
from agent.kube.factory import KubeAdapters
from agent.leader.lease_record import LeaseRecord
from agent.model import Condition, PodKey
from tests.integration.kubeobjects import pod
from tests.testbed.kubeapi import KubeAPIServer
from tests.testbed.waiting import wait_for

NS = "default"


def adapters(api: KubeAPIServer, timeout_s: float = 0.5, watch_idle_s: float = 60) -> KubeAdapters:
    access = KubeAccess(
        host=api.url, token=api.admin_token, timeout_s=timeout_s, watch_idle_s=watch_idle_s
    )
    return KubeAdapters(access, Calls(), Clock())


def outcome(fn: Callable[[], object], within: float) -> str:
    """Run ``fn`` in a thread: "returned", "raised <Error>", or "hung" after ``within`` s."""
    result: list[str] = []

    def body() -> None:
        try:
            fn()
            result.append("returned")
        except PodlbError as exc:
            result.append(f"raised {type(exc).__name__}")
        except Exception as exc:  # a library error that escaped: say so
            result.append(f"escaped {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(within)
    return result[0] if result else "hung"


def test_every_api_call_gives_up_on_a_wedged_api(api: KubeAPIServer) -> None:
    core = client.CoreV1Api(api.api_client())
    core.create_namespaced_pod(NS, pod("web"))
    kube = adapters(api, timeout_s=0.5)
    lease = kube.lease_store(NS, "podlb-leader")
    sink = kube.status_sink("podlb-agent", "n1")
    pods = kube.all_pods(lambda key: None, lambda: None, 300)
    now = Clock().now()
    web = kube.status_sink("t", "n1").get_pod(NS, "web")
    cond = Condition("podlb.io/lb-ready", "True", "Ready", "", "2026-01-01T00:00:00Z")
    calls: dict[str, Callable[[], object]] = {
        "lease get": lease.get,
        "lease create": lambda: lease.create(LeaseRecord("a", 15, now, now, 0)),
        "lease update": lambda: lease.update(LeaseRecord("a", 15, now, now, 0, "1")),
        "pod get (drain)": lambda: sink.get_pod(NS, "web"),
        "status patch": lambda: sink.patch_condition(PodKey(NS, "web"), cond, web.uid),
        "event": lambda: sink.emit_event(web, "Normal", "Test", "x"),
        "informer list": pods._list,
    }
    api.faults.blackhole()
    try:
        t0 = time.monotonic()
        seen = {name: outcome(fn, within=3.0) for name, fn in calls.items()}
        assert seen == dict.fromkeys(calls, "raised TransientError"), seen
        assert time.monotonic() - t0 < 1.5 * len(calls)
    finally:
        api.faults.heal()
        kube.close()


def test_a_silent_watch_is_given_up_and_the_cache_catches_up(api: KubeAPIServer) -> None:
    """The watch connection goes half-open (no data ever again, no reset): the informer must
    notice by itself, reconnect and see what changed meanwhile."""
    core = client.CoreV1Api(api.api_client())
    core.create_namespaced_pod(NS, pod("a"))
    kube = adapters(api, timeout_s=0.5, watch_idle_s=1.0)
    pods = kube.all_pods(lambda key: None, lambda: None, 300)
    stop = threading.Event()
    thread = threading.Thread(target=pods.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(pods.synced.is_set, 10, "listed")
        core.create_namespaced_pod(NS, pod("a2"))
        wait_for(lambda: pods.get((NS, "a2")) is not None, 10, "watching")
        api.faults.blackhole()  # the open watch stream is dead from now on
        time.sleep(0.5)
        api.faults.heal()
        core.create_namespaced_pod(NS, pod("b"))
        took = time.monotonic()
        wait_for(lambda: pods.get((NS, "b")) is not None, 10, "b seen after the heal")
        assert time.monotonic() - took < 5.0
        assert thread.is_alive()
    finally:
        api.faults.heal()
        stop.set()
        pods.stop_watch()
        thread.join(5)
        kube.close()
    assert not thread.is_alive()


def test_api_connections_have_tcp_keepalive(api: KubeAPIServer) -> None:
    kube = adapters(api)
    try:
        kube.core.list_namespace(_request_timeout=(1, 1))
        pool = kube.api.rest_client.pool_manager.connection_from_url(api.url)
        conn = pool._get_conn()
        try:
            assert conn.sock is not None
            assert conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) <= 30
        finally:
            pool._put_conn(conn)
    finally:
        kube.close()


# -- whole agents: the leader's connections wedge (half-open), then heal


FAST = ["--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.3"]
TIMEOUTS = ["--kube-timeout", "1", "--watch-idle-timeout", "3"]
COND = "podlb.io/datapath-ready"


def datapath(core: client.CoreV1Api, name: str) -> dict[str, Any] | None:
    pod = core.api_client.sanitize_for_serialization(core.read_namespaced_pod(name, "shop"))
    for c in pod.get("status", {}).get("conditions") or []:
        if c["type"] == COND:
            return dict(c)
    return None


@pytest.mark.netns
def test_a_wedged_leader_steps_down_is_replaced_and_recovers() -> None:
    from tests.testbed.agents import AgentProcess, leaders
    from tests.testbed.appproc import app_argv
    from tests.testbed.node import Kubelet, make_pod
    from tests.testbed.rbac import AGENT_NAMESPACE, AGENT_RULES, agent_cluster

    nodes = ["node-a", "node-b"]
    with agent_cluster("shop") as api, Kubelet.for_api(api, nodes) as kubelet:
        core = client.CoreV1Api(api.api_client())
        procs = []
        for node in nodes:
            name = f"{AGENT_NAMESPACE}:agent-{node}"  # one ServiceAccount token per agent
            api.add_token(name, AGENT_RULES)
            procs.append(AgentProcess(api.url, name, node, extra=[*FAST, *TIMEOUTS]).start())
        try:
            for node in nodes:
                core.create_namespaced_pod(
                    "shop",
                    make_pod(f"web-{node[-1]}", node, namespace="shop",
                             readiness_gates=["podlb.io/lb-ready"]),
                )  # fmt: skip
            for p in procs:
                p.wait_ready()
            [leader] = wait_for(lambda: (ls := leaders(procs)) and len(ls) == 1 and ls, 15)
            other = next(p for p in procs if p is not leader)
            # Its datapath seen ready before the wedge (an earlier NoPodIP, written before the
            # pod had its IP, would read as the write after the heal: failed so at load 4).
            wait_for(
                lambda: (datapath(core, f"web-{leader.node[-1]}") or {}).get("status") == "True",
                15, "the leader's pod datapath-ready",
            )  # fmt: skip

            user = f"system:serviceaccount:{AGENT_NAMESPACE}:agent-{leader.node}"
            t0 = time.monotonic()
            api.faults.blackhole(lambda info: info.user == user)
            wait_for(lambda: leader not in leaders([leader]), 5, "the wedged leader steps down")
            stepped_down = time.monotonic() - t0
            wait_for(lambda: leaders(procs) == [other], 10, "the other agent takes over")
            failover = time.monotonic() - t0
            print(f"wedged leader: stopped leading after {stepped_down:.2f}s, "
                  f"successor after {failover:.2f}s (lease 3 s, renew deadline 2 s)")  # fmt: skip
            assert stepped_down <= 2.0 + 0.5, stepped_down  # the renew deadline
            assert failover <= 3.0 + 2.0, failover  # lease duration + retries

            # While it is wedged its pod stops listening: the condition write goes into the
            # black hole (and, without a timeout, would wait there for good).
            mine = f"web-{leader.node[-1]}"
            netns = kubelet.pod_netns(mine, "shop")
            assert netns is not None
            for proc in list(netns.procs):
                proc.kill()
            time.sleep(2.0)
            api.faults.heal()
            # Its node side recovers: the condition is written, a new pod is seen and judged.
            cond = wait_for(
                lambda: (c := datapath(core, mine)) and c["status"] == "False" and c,
                15, "the condition written after the heal",
            )  # fmt: skip
            assert cond["reason"] == "NotListening"
            netns.popen(app_argv(8080, mine))
            core.create_namespaced_pod(
                "shop",
                make_pod(f"{mine}-new", leader.node, namespace="shop",
                         readiness_gates=["podlb.io/lb-ready"]),
            )  # fmt: skip
            wait_for(lambda: datapath(core, f"{mine}-new"), 15, "a new pod seen after the heal")
            # Its election recovers: it takes over when the other agent stops.
            assert other.stop() == 0
            wait_for(lambda: leaders(procs) == [leader], 10, "the healed agent leads again")
            assert leader.proc is not None and leader.proc.poll() is None
        finally:
            for p in procs:
                p.stop()
