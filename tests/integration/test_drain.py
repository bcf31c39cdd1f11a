"""The drain endpoints on real namespaces: refusals, the in-pod listener, port conflicts,
an agent restarted mid-drain, and a whole node draining at once."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.testbed.agents import AgentProcess, agents
from tests.testbed.kubeapi import KubeAPIServer
from tests.testbed.node import Kubelet, make_pod
from tests.testbed.rbac import AGENT_TOKEN, agent_cluster
from tests.testbed.waiting import wait_for

pytestmark = pytest.mark.netns

HOOK = {"httpGet": {"path": "/drain", "port": 9809}}


def get(url: str, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except (OSError, http.client.HTTPException) as exc:  # the agent went away mid-request
        return 0, {"error": repr(exc)}


@pytest.fixture
def cluster() -> Iterator[tuple[KubeAPIServer, Kubelet, client.CoreV1Api]]:
    with agent_cluster("shop") as api, Kubelet.for_api(api, ["node-a", "node-b"]) as kubelet:
        yield api, kubelet, client.CoreV1Api(api.api_client())


def drain_listener_up(kubelet: Kubelet, name: str) -> bool:
    ip = kubelet.record(name, "shop").ip
    try:
        socket.create_connection((ip, 9809), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_live_pod_cannot_be_drained(
    cluster: tuple[KubeAPIServer, Kubelet, client.CoreV1Api],
) -> None:
    api, kubelet, core = cluster
    core.create_namespaced_pod(
        "shop", make_pod("web", "node-a", namespace="shop", readiness_gates=["podlb.io/lb-ready"])
    )
    core.create_namespaced_pod("shop", make_pod("other", "node-b", namespace="shop"))
    with agents(api.url, AGENT_TOKEN, ["node-a"]) as (agent,):
        agent.wait_ready()
        wait_for(lambda: drain_listener_up(kubelet, "web"), what="in-pod drain listener")
        ip = kubelet.record("web", "shop").ip
        code, body = get(f"http://{ip}:9809/drain")
        assert code == 409 and body["outcome"] == "refused", body
        code, body = get(f"{agent.url}/v1/drain/shop/web")
        assert code == 409
        code, _ = get(f"{agent.url}/v1/drain/shop/other")  # on another node
        assert code == 404
        code, _ = get(f"{agent.url}/v1/drain/shop/nope")
        assert code == 404
        code, _ = get(f"{agent.url}/v1/drain/only-one-part")
        assert code == 400
        with socket.create_connection((ip, 9809), timeout=2) as s:
            s.sendall(b"\x16\x03\x01 not http\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 400")
        assert drain_listener_up(kubelet, "web")  # the listener survived all that
        text = agent.get("/metrics")[1].decode()
        assert 'podlb_drain_duration_seconds_count{outcome="refused"}' in text


def test_drain_port_used_by_the_app_is_reported(
    cluster: tuple[KubeAPIServer, Kubelet, client.CoreV1Api],
) -> None:
    api, _kubelet, core = cluster
    core.create_namespaced_pod(
        "shop",
        make_pod(
            "clash", "node-a", namespace="shop", port=9809, readiness_gates=["podlb.io/lb-ready"]
        ),
    )
    with agents(api.url, AGENT_TOKEN, ["node-a"]) as (agent,):
        agent.wait_ready()
        wait_for(
            lambda: any(
                e.reason == "DrainPortInUse" for e in core.list_namespaced_event("shop").items
            ),
            what="DrainPortInUse event",
        )
        events = [
            e for e in core.list_namespaced_event("shop").items if e.reason == "DrainPortInUse"
        ]
        assert len(events) == 1 and events[0].involved_object.name == "clash"


def test_agent_restarted_mid_drain_resumes(
    cluster: tuple[KubeAPIServer, Kubelet, client.CoreV1Api],
) -> None:
    api, kubelet, core = cluster
    # A sleep hook keeps kubelet from stopping the app; the test calls the drain itself, so
    # the agent can be killed under it.
    busy = make_pod(
        "busy", "node-a", namespace="shop", grace=30, pre_stop={"sleep": {"seconds": 28}},
        readiness_gates=["podlb.io/lb-ready"],
    )  # fmt: skip
    core.create_namespaced_pod("shop", busy)
    agent = AgentProcess(api.url, AGENT_TOKEN, "node-a").start()
    try:
        agent.wait_ready()
        wait_for(lambda: kubelet.record("busy", "shop").ip, what="pod IP")
        ip = kubelet.record("busy", "shop").ip
        chatty = socket.create_connection((ip, 8080), timeout=2)
        stop_talking = threading.Event()

        def talk() -> None:
            while not stop_talking.wait(0.1):
                try:
                    chatty.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    chatty.recv(4096)
                except OSError:
                    return

        threading.Thread(target=talk, daemon=True).start()
        core.delete_namespaced_pod("busy", "shop", grace_period_seconds=30)
        first: list[tuple[int, dict[str, Any]]] = []
        t = threading.Thread(
            target=lambda: first.append(get(f"{agent.url}/v1/drain/shop/busy", 10))
        )
        t.start()
        time.sleep(1.5)
        assert not first  # held: the LB never confirmed and the connection is busy
        agent.kill()
        t.join(5)
        assert first and first[0][0] == 0  # the hook's connection broke with the agent
        agent = AgentProcess(api.url, AGENT_TOKEN, "node-a").start()
        agent.wait_ready()
        second: list[tuple[int, dict[str, Any]]] = []
        t = threading.Thread(
            target=lambda: second.append(get(f"{agent.url}/v1/drain/shop/busy", 40))
        )
        t.start()
        time.sleep(1.0)
        assert not second
        stop_talking.set()
        chatty.close()
        t.join(40)
        code, body = second[0]
        # No LB confirms it (no leader provider here): the drain ends at its timeout, which
        # counts from the deletion (30 s grace - 3 s), not from the agent's restart.
        assert code == 200 and body["outcome"] == "timeout", body
        assert 20 < body["seconds"] < 32, body
    finally:
        agent.stop()


@pytest.mark.slow
def test_node_drain_of_110_pods_completes(
    cluster: tuple[KubeAPIServer, Kubelet, client.CoreV1Api],
) -> None:
    api, kubelet, core = cluster
    n = 110
    for i in range(n):
        core.create_namespaced_pod(
            "shop",
            make_pod(
                f"p{i}", "node-a", namespace="shop", pre_stop=HOOK, grace=20, labels={"app": "bulk"}
            ),
        )
    with agents(api.url, AGENT_TOKEN, ["node-a"]) as (agent,):
        agent.wait_ready(60)
        # No gate: these pods are opted in by a direct Service.
        spec = {"type": "ClusterIP", "selector": {"app": "bulk"}, "ports": [{"port": 80}]}
        meta = {"name": "bulk", "annotations": {"podlb.io/direct": "true"}}
        core.create_namespaced_service("shop", {"metadata": meta, "spec": spec})
        wait_for(
            lambda: all(drain_listener_up(kubelet, f"p{i}") for i in range(n)), 90, "listeners"
        )
        t0 = time.monotonic()
        for i in range(n):
            core.delete_namespaced_pod(f"p{i}", "shop")
        wait_for(lambda: not api.store.list("pods", "shop"), 120, "all pods gone")
        elapsed = time.monotonic() - t0
        holds = [kubelet.record(f"p{i}", "shop").prestop_s for i in range(n)]
        errors = [e for i in range(n) for e in kubelet.record(f"p{i}", "shop").prestop_errors]
        assert errors == [] and all(h is not None for h in holds), errors[:5]
        assert max(h for h in holds if h is not None) < 15, sorted(holds)[-5:]
        assert elapsed < 90
        text = agent.get("/metrics")[1].decode()
        assert f'podlb_drain_duration_seconds_count{{outcome="drained"}} {float(n)}' in text
