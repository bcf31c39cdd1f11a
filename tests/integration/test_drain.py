"""The drain endpoints on real namespaces: refusals, the in-pod listener, port conflicts,
an agent restarted mid-drain, and a whole node draining at once."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.testbed.agents import AgentProcess, agents, free_port
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
        refused = 'podlb_drain_duration_seconds_count{namespace="shop",outcome="refused",'
        assert refused + 'service="none"}' in text
        assert get(f"{agent.url}/v1/drain/ghost-ns/nope")[0] == 404
        text = agent.get("/metrics")[1].decode()
        assert "ghost-ns" not in text  # a made-up name is no label value


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
        labels = 'namespace="shop",outcome="deregistered+quiet",service="bulk"'
        assert f"podlb_drain_duration_seconds_count{{{labels}}} {float(n)}" in text


# A pod's flood of its own drain port (argv: ip port connections request-threads seconds):
# slow requests (a byte a second, the head never complete) kept open -- those answered or cut
# are re-opened -- and whole requests in a loop.
POD_FLOOD = """
import json, socket, sys, threading, time
ip, port, idle, threads, seconds = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:])
end = time.monotonic() + seconds
counts = {}
lock = threading.Lock()
def count(what):
    with lock:
        counts[what] = counts.get(what, 0) + 1
def slow(share):
    held = []
    while time.monotonic() < end:
        while len(held) < share and time.monotonic() < end:
            try:
                held.append(socket.create_connection((ip, port), timeout=2))
            except OSError:
                count("slow connect failed")
        for s in list(held):
            try:
                s.sendall(b"G")
                s.setblocking(False)
                count("slow answered" if s.recv(1) else "slow cut")
            except BlockingIOError:
                s.setblocking(True)
                continue
            except OSError:
                count("slow error")
            held.remove(s)
            s.close()
        time.sleep(1)
def requester():
    while time.monotonic() < end:
        try:
            with socket.create_connection((ip, port), timeout=10) as s:
                s.sendall(b"GET /drain HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
                answer = b""
                while chunk := s.recv(4096):
                    answer += chunk
                text = answer.decode(errors="replace")
                count("in-pod " + text[9:12] + (" slots" if "connections" in text else ""))
        except OSError:
            count("in-pod error")
# 120 connecting threads: a SYN dropped by a full accept queue costs its thread 1 s
workers = [threading.Thread(target=slow, args=(idle // 120,)) for _ in range(120)]
workers += [threading.Thread(target=requester) for _ in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(json.dumps(counts))
"""


def direct_service(core: client.CoreV1Api, app: str) -> None:
    """A direct-mode Service: its pods are opted in without a gate (the drain waits for quiet
    only, as no leader manages an LB here)."""
    ports = [{"port": 80, "targetPort": 8080}]
    spec = {"type": "ClusterIP", "selector": {"app": app}, "ports": ports}
    meta = {"name": app, "annotations": {"podlb.io/direct": "true"}}
    core.create_namespaced_service("shop", {"metadata": meta, "spec": spec})


def lease_renewals(
    api: KubeAPIServer, stop: threading.Event, seen: list[tuple[float, str]]
) -> None:
    """Record (time, holder/renewTime) each time the Lease changes, until ``stop``."""
    last = None
    while not stop.wait(0.1):
        lease = api.store.get("leases", "podlb-system", "podlb-leader") or {}
        spec = lease.get("spec") or {}
        mark = f"{spec.get('holderIdentity')}/{spec.get('renewTime')}"
        if mark != last:
            seen.append((time.monotonic(), mark))
            last = mark


@pytest.mark.slow
def test_a_flood_from_one_pod_neither_stops_the_lease_nor_blocks_another_drain(
    cluster: tuple[KubeAPIServer, Kubelet, client.CoreV1Api],
) -> None:
    """Defect 9. For 14 s, one pod floods its own drain port from inside its namespace (600
    slow requests -- a byte a second, never a whole head -- re-opened when cut, and 10 threads
    of whole requests), and one caller floods the node API (300 idle connections, 20 threads
    asking to drain that live pod). 7 s in, another pod on the node is deleted: its preStop
    hook must drain as usual, and the agent's Lease renewals must go on."""
    api, kubelet, core = cluster
    core.create_namespaced_pod("shop", make_pod("flood", "node-a", namespace="shop",
                                                labels={"app": "web"}))  # fmt: skip
    core.create_namespaced_pod(
        "shop",
        make_pod("victim", "node-a", namespace="shop", labels={"app": "web"}, pre_stop=HOOK,
                 grace=20),
    )  # fmt: skip
    with agents(api.url, AGENT_TOKEN, ["node-a"]) as (agent,):
        agent.wait_ready()
        direct_service(core, "web")
        wait_for(lambda: drain_listener_up(kubelet, "flood"), what="flood pod's drain listener")
        wait_for(lambda: drain_listener_up(kubelet, "victim"), what="victim's drain listener")
        wait_for(lambda: "\npodlb_leader_is_leader 1.0" in agent.get("/metrics")[1].decode(),
                 what="the agent leads")  # fmt: skip
        flood = kubelet.record("flood", "shop")
        stop = threading.Event()
        renewals: list[tuple[float, str]] = []
        answers: dict[str, int] = {}
        lock = threading.Lock()

        def count(what: str) -> None:
            with lock:
                answers[what] = answers.get(what, 0) + 1

        def node_api() -> None:
            while not stop.is_set():
                try:
                    with urllib.request.urlopen(f"{agent.url}/v1/drain/shop/flood", timeout=10):
                        count("api 200")
                except urllib.error.HTTPError as exc:
                    count(f"api {exc.code}")
                except OSError:
                    count("api error")

        def idle_node_api() -> None:
            socks = []
            for _ in range(300):
                if stop.is_set():
                    break
                with contextlib.suppress(OSError):
                    socks.append(socket.create_connection(("127.0.0.1", agent.port), timeout=2))
            stop.wait(10)
            for s in socks:
                s.close()

        workers = [threading.Thread(target=lease_renewals, args=(api, stop, renewals))]
        workers += [threading.Thread(target=idle_node_api)]
        workers += [threading.Thread(target=node_api) for _ in range(20)]
        t0 = time.monotonic()
        in_pod = subprocess.Popen(  # the pod's own flood, from inside its namespace
            ["ip", "netns", "exec", flood.netns, sys.executable, "-c", POD_FLOOD,
             flood.ip, "9809", "600", "10", "14"],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        for w in workers:
            w.daemon = True
            w.start()
        time.sleep(7.0)  # the slow connections are all up by then
        deleted_at = time.monotonic()
        core.delete_namespaced_pod("victim", "shop")
        kubelet.wait_gone("victim", "shop", timeout=20)
        victim = kubelet.record("victim", "shop")
        while time.monotonic() < t0 + 14:
            time.sleep(0.1)
        stop.set()
        stopped_at = time.monotonic()
        for w in workers:
            w.join(15)
        out, _ = in_pod.communicate(timeout=30)
        answers.update(json.loads(out))
        assert victim.prestop_errors == [], (victim.prestop_errors, answers)
        assert victim.prestop_s is not None and victim.prestop_s < 5, victim.prestop_s
        assert victim.finalized_at is not None and victim.finalized_at - deleted_at < 10
        holders = {mark.split("/")[0] for _, mark in renewals}
        assert holders == {agent.identity}, renewals
        times = [t for t, _ in renewals if t >= t0] + [stopped_at]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) >= 4 and max(gaps) < 5.0, (gaps, answers)  # renew every 2 s
        assert agent.get("/healthz")[0] == 200  # the node API serves again
        print(f"flood answers: {answers}; lease renewal gaps {[round(g, 1) for g in gaps]}; "
              f"victim preStop {victim.prestop_s:.2f}s")  # fmt: skip


class Chatter:
    """Keep-alive requests on a pod's port every 0.1 s (its drain waits for quiet) until
    ``stop()``."""

    def __init__(self, ip: str) -> None:
        self.sock = socket.create_connection((ip, 8080), timeout=2)
        self.done = threading.Event()
        threading.Thread(target=self._talk, daemon=True).start()

    def _talk(self) -> None:
        while not self.done.wait(0.1):
            try:
                self.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                self.sock.recv(4096)
            except OSError:
                return

    def stop(self) -> None:
        self.done.set()
        self.sock.close()


def drains_in_flight(agent: AgentProcess) -> float:
    try:
        text = agent.get("/metrics", timeout=1)[1].decode()
    except OSError:
        return -1.0
    line = next((ln for ln in text.splitlines() if ln.startswith("podlb_drains_in_flight ")), "")
    return float(line.split()[1]) if line else -1.0


def test_drains_in_progress_complete_across_an_agent_restart(
    cluster: tuple[KubeAPIServer, Kubelet, client.CoreV1Api],
) -> None:
    """Defect 7. A stopping agent (SIGTERM: a DaemonSet rollout, a node drain) lets the drains
    it holds end by their own criteria before it exits, whatever the hook (the in-pod httpGet
    listener or the exec hook's ``podlb-agent drain``). An agent that dies (SIGKILL) cannot
    hold a hook's connection, but ``podlb-agent drain`` asks again and the restarted agent
    picks the drain up. Drains completed across the restarts: all (3 of 3)."""
    api, kubelet, core = cluster
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    exec_hook = {"exec": {"command": [
        "sh", "-c", f"exec {sys.executable} -m agent drain $POD_NAMESPACE/$POD_NAME "
        f"--agent-url {url} --timeout 40"]}}  # fmt: skip
    hooks = {"get": HOOK, "cli": exec_hook, "cli2": exec_hook}
    for name, hook in hooks.items():
        core.create_namespaced_pod("shop", make_pod(
            name, "node-a", namespace="shop", labels={"app": "held"}, pre_stop=hook,
            grace=40))  # fmt: skip
    agent = AgentProcess(api.url, AGENT_TOKEN, "node-a", port=port).start()
    try:
        agent.wait_ready()
        direct_service(core, "held")
        wait_for(lambda: drain_listener_up(kubelet, "get"), what="drain listener")
        chatter = {n: Chatter(kubelet.record(n, "shop").ip) for n in hooks}
        # 1. A graceful stop while two drains are held.
        for name in ("get", "cli"):
            core.delete_namespaced_pod(name, "shop")
        wait_for(lambda: drains_in_flight(agent) == 2, 10, "two drains held")
        agent.signal(signal.SIGTERM)
        time.sleep(2.0)
        assert agent.proc is not None and agent.proc.poll() is None, "the agent left its drains"
        for name in ("get", "cli"):
            chatter[name].stop()
            kubelet.wait_gone(name, "shop", timeout=20)
        assert agent.proc.wait(15) == 0, agent.log_text()
        # 2. A crash while one drain is held: the exec hook asks the restarted agent.
        agent = AgentProcess(api.url, AGENT_TOKEN, "node-a", port=port).start()
        agent.wait_ready()
        core.delete_namespaced_pod("cli2", "shop")
        wait_for(lambda: drains_in_flight(agent) == 1, 10, "one drain held")
        agent.kill()
        time.sleep(1.0)
        agent = AgentProcess(api.url, AGENT_TOKEN, "node-a", port=port).start()
        agent.wait_ready()
        time.sleep(1.0)
        chatter["cli2"].stop()
        kubelet.wait_gone("cli2", "shop", timeout=30)
        records = {n: kubelet.record(n, "shop") for n in hooks}
        failed = {n: r.prestop_errors for n, r in records.items() if r.prestop_errors}
        assert failed == {}, failed
        holds = {n: r.prestop_s for n, r in records.items()}
        assert all(h is not None and h >= 2.0 for h in holds.values()), holds
        assert not any(r.prestop_timed_out for r in records.values())
        print(f"drains completed across agent restarts: {len(hooks) - len(failed)} of "
              f"{len(hooks)}; preStop holds {holds}")  # fmt: skip
    finally:
        agent.stop()


def test_each_drain_leaves_a_record_metrics_and_an_event(
    cluster: tuple[KubeAPIServer, Kubelet, client.CoreV1Api],
) -> None:
    """A drain that ends on its signals (here: quiet; no LB manages the pod) and one the drain
    timeout ends (the LB never confirms: no LB provider here) each leave a record in
    /v1/drains, labelled metrics and an Event on the pod; ``podlb-agent drains`` shows them."""
    api, kubelet, core = cluster
    quiet = make_pod("quiet", "node-a", namespace="shop", labels={"app": "web"}, pre_stop=HOOK,
                     grace=20)  # fmt: skip
    stuck = make_pod("stuck", "node-a", namespace="shop", labels={"app": "web"}, pre_stop=HOOK,
                     grace=20, readiness_gates=["podlb.io/lb-ready"])  # fmt: skip
    stuck["metadata"]["annotations"] = {"podlb.io/drain-timeout": "2s"}
    for p in (quiet, stuck):
        core.create_namespaced_pod("shop", p)
    with agents(api.url, AGENT_TOKEN, ["node-a"]) as (agent,):
        agent.wait_ready()
        direct_service(core, "web")
        for name in ("quiet", "stuck"):
            wait_for(lambda n=name: drain_listener_up(kubelet, n), what=f"{name}'s listener")
        for name in ("quiet", "stuck"):
            core.delete_namespaced_pod(name, "shop")
            kubelet.wait_gone(name, "shop", timeout=20)
        records = {r["pod"]: r for r in agent.get_json("/v1/drains")["drains"]}
        assert records["quiet"]["outcome"] == "deregistered+quiet", records
        assert records["quiet"]["service"] == "web"
        assert records["quiet"]["deregistered_s"] is None  # no LB manages it: quiet only
        assert records["quiet"]["new_connections"] == 0
        assert records["stuck"]["outcome"] == "timeout", records
        assert 2.0 <= records["stuck"]["seconds"] < 4.0
        assert records["stuck"]["deregistered_s"] is None
        assert "the LB to deregister the pod" in records["stuck"]["message"]
        text = agent.get("/metrics")[1].decode()
        for outcome in ("deregistered+quiet", "timeout"):
            line = (f'podlb_drain_duration_seconds_count{{namespace="shop",outcome="{outcome}",'
                    'service="web"} 1.0')  # fmt: skip
            assert line in text, outcome
        assert "\npodlb_drain_signal_ended_ratio 0.5" in text
        wait_for(
            lambda: {(e.involved_object.name, e.type, e.reason)
                     for e in core.list_namespaced_event("shop").items}
            >= {("quiet", "Normal", "Drained"), ("stuck", "Warning", "DrainTimeout")},
            what="the drains' Events",
        )  # fmt: skip
        shown = subprocess.run(
            [sys.executable, "-m", "agent", "drains", "--agent-url", agent.url],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        print(shown)
        lines = shown.splitlines()
        assert lines[0].split()[:4] == ["ENDED", "POD", "SERVICE", "OUTCOME"]
        assert [line.split()[1:4] for line in lines[1:]] == [
            ["shop/quiet", "web", "deregistered+quiet"], ["shop/stuck", "web", "timeout"],
        ]  # fmt: skip
