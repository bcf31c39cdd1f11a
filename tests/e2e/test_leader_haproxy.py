"""The whole loop: API double + simulated kubelet + agents (one leads) + a real HAProxy.

Direct-mode Service -> servers in HAProxy -> health checks -> podlb.io/lb-ready -> Ready.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.testbed.agents import agents, leaders
from tests.testbed.haproxy import HAProxy
from tests.testbed.load import run_load
from tests.testbed.node import Kubelet, make_pod
from tests.testbed.rbac import AGENT_TOKEN, agent_cluster
from tests.testbed.waiting import wait_for

pytestmark = pytest.mark.netns

POOL = "shop.web.http"
IDLE_POOL = "shop.idle.http"  # a direct Service's pool that never has a pod
GATE = "podlb.io/lb-ready"


def service(
    target: int | str = "http", annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "annotations": annotations or {"podlb.io/direct": "true"},
        },
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": target, "protocol": "TCP"}],
        },
    }


def web_pod(name: str, node: str = "node-a") -> dict[str, Any]:
    return make_pod(
        name, node, namespace="shop", labels={"app": "web"}, readiness_gates=[GATE], grace=5
    )


def conditions(api: Any, name: str) -> dict[str, str]:
    pod = api.store.get("pods", "shop", name) or {}
    return {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or []}


def events(api: Any) -> list[tuple[str, str, str]]:
    """(object name, type, reason) of every Event in the namespace, oldest first."""
    return [
        (e["involvedObject"]["name"], e["type"], e["reason"])
        for e in sorted(
            api.store.list("events", "shop"), key=lambda e: int(e["metadata"]["resourceVersion"])
        )
    ]


def servers(lb: HAProxy) -> dict[str, str]:
    return {name: row["status"] for name, row in lb.servers(POOL).items()}


@pytest.fixture
def setup() -> Iterator[tuple[Any, Kubelet, HAProxy, client.CoreV1Api]]:
    with (
        agent_cluster("shop") as api,
        Kubelet.for_api(api, ["node-a", "node-b"]) as kubelet,
        HAProxy(backends=(POOL, IDLE_POOL), server_options="check inter 300ms fall 2 rise 1") as lb,
    ):
        yield api, kubelet, lb, client.CoreV1Api(api.api_client())


def lb_args(lb: HAProxy) -> list[str]:
    return [
        "--lb", "haproxy", "--haproxy-runtime", f"unix:{lb.socket_path}",
        "--haproxy-server-options", "check inter 300ms fall 2 rise 1",
        "--leader-resync", "2", "--lb-drain-timeout", "10",
    ]  # fmt: skip


def test_service_to_haproxy_to_ready_and_back(
    setup: tuple[Any, Kubelet, HAProxy, client.CoreV1Api],
) -> None:
    api, kubelet, lb, core = setup
    core.create_namespaced_service("shop", service())
    # A direct Service that selects no pod: the EndpointSlice controller's empty placeholder
    # slice is no routing problem (no Warning PortUnresolved).
    idle = service()
    idle["metadata"]["name"], idle["spec"]["selector"] = "idle", {"app": "none"}
    core.create_namespaced_service("shop", idle)
    for i, node in enumerate(["node-a", "node-b", "node-a"]):
        core.create_namespaced_pod("shop", web_pod(f"web-{i}", node))
    with agents(api.url, AGENT_TOKEN, ["node-a", "node-b"], extra=lb_args(lb)) as procs:
        for p in procs:
            p.wait_ready()
        names = [f"web-{i}" for i in range(3)]
        # Ready only once HAProxy reports the server UP: sample both until all are Ready.
        seen_ready_before_up = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            conds = {n: conditions(api, n) for n in names}
            status = servers(lb)
            ips = {n: kubelet.record(n, "shop").ip for n in names}
            for n in names:
                if conds[n].get("Ready") == "True" and status.get(f"{ips[n]}_8080") != "UP":
                    seen_ready_before_up.append(n)
            if all(c.get("Ready") == "True" for c in conds.values()):
                break
            time.sleep(0.05)
        assert all(conditions(api, n).get("Ready") == "True" for n in names)
        assert seen_ready_before_up == []
        assert all(conditions(api, n).get(GATE) == "True" for n in names)
        assert sorted(servers(lb).values()) == ["UP", "UP", "UP"]
        # Pods created, registered, Ready: their story in Normal Events, not one Warning.
        wait_for(
            lambda: sum(r == "LbReadyTrue" for _n, _t, r in events(api)) == 3,
            what="LbReadyTrue events",
        )
        assert [e for e in events(api) if e[1] != "Normal"] == []
        assert {n for n, _t, _r in events(api)} == set(names)

        res = run_load(lb.url, mode="new", concurrency=3, count=300, timeout=2.0)
        assert res.errors_total == 0, res.summary()
        assert set(res.by_pod) == set(names)

        # Scale down: the deleted pod drains, then leaves HAProxy; the rest keep serving.
        gone_ip = kubelet.record("web-2", "shop").ip
        core.delete_namespaced_pod("web-2", "shop")
        wait_for(lambda: f"{gone_ip}_8080" not in servers(lb), what="web-2 removed from HAProxy")
        # Scale up: a new pod is added and becomes Ready through the gate.
        core.create_namespaced_pod("shop", web_pod("web-3", "node-b"))
        wait_for(lambda: conditions(api, "web-3").get("Ready") == "True", 30, "web-3 Ready")
        assert len(servers(lb)) == 3 or len(servers(lb)) == 2  # web-2 may be gone already

        # The app of web-0 stops listening: out of rotation, whichever sees it first: HAProxy's
        # check (DOWN, lb-ready Unhealthy) or kubelet's probe (not ContainersReady: drained and
        # removed, lb-ready Deregistered).
        netns = kubelet.pod_netns("web-0", "shop")
        assert netns is not None
        for proc in list(netns.procs):
            proc.kill()
        web0 = f"{kubelet.record('web-0', 'shop').ip}_8080"
        wait_for(lambda: servers(lb).get(web0, "DOWN") != "UP", what="web-0 out of rotation")
        wait_for(lambda: conditions(api, "web-0").get(GATE) == "False", what="web-0 lb-ready False")

        def gate_reason() -> str:
            pod = api.store.get("pods", "shop", "web-0") or {}
            conds = (pod.get("status") or {}).get("conditions") or []
            return next((c.get("reason", "") for c in conds if c["type"] == GATE), "")

        # Draining first while HAProxy still holds it, then where it settles:
        wait_for(lambda: gate_reason() in ("Unhealthy", "Deregistered"), what="settled reason")
        res = run_load(lb.url, mode="new", concurrency=2, count=100, timeout=2.0)
        assert "web-0" not in res.by_pod and res.errors_total == 0, res.summary()

        # HAProxy restarted: the pool is restored within a resync.
        lb.restart()
        wait_for(lambda: sum(1 for s in servers(lb).values() if s == "UP") >= 2, 20, "restored")

        # Delete the Service: its servers leave HAProxy.
        core.delete_namespaced_service("web", "shop")
        wait_for(lambda: servers(lb) == {}, 30, "pool emptied")
        forbidden = [r for r in api.requests if r.code in (401, 403)]
        assert forbidden == []


def test_a_pod_not_ready_yet_is_health_checked_out_of_rotation(
    setup: tuple[Any, Kubelet, HAProxy, client.CoreV1Api],
) -> None:
    """Staging (agent.lb.base.Staging): a pod with an IP whose readiness probe does not pass
    has its server in HAProxy already, health-checked (UP) but drained: no request reaches it,
    its gate reads NotRegistered; deleted, its server goes."""
    api, kubelet, lb, core = setup
    core.create_namespaced_service("shop", service())
    core.create_namespaced_pod("shop", web_pod("web-0"))
    unready = web_pod("web-1")
    unready["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": 9}}  # closed
    core.create_namespaced_pod("shop", unready)
    with agents(api.url, AGENT_TOKEN, ["node-a"], extra=lb_args(lb)) as (agent,):
        agent.wait_ready()
        wait_for(lambda: conditions(api, "web-0").get("Ready") == "True", 30, "web-0 Ready")
        staged = f"{kubelet.record('web-1', 'shop').ip}_8080"
        wait_for(lambda: lb.servers(POOL).get(staged, {}).get("status") == "DRAIN", 20, "staged")
        assert conditions(api, "web-1").get("ContainersReady") == "False"
        # its NotRegistered is held 2 s after the leader first saw it (a new pod is ready
        # sooner, and its first write is then Healthy): written for a pod that stays unready
        wait_for(lambda: conditions(api, "web-1").get(GATE) == "False", 10, "NotRegistered")
        res = run_load(lb.url, mode="new", concurrency=2, count=60, timeout=2.0)
        assert set(res.by_pod) == {"web-0"} and res.errors_total == 0, res.summary()
        core.delete_namespaced_pod("web-1", "shop")
        wait_for(lambda: staged not in servers(lb), 30, "staged server removed")


def test_gate_admit_checked_admits_on_the_staged_servers_checks(
    setup: tuple[Any, Kubelet, HAProxy, client.CoreV1Api],
) -> None:
    """podlb.io/gate-admit: checked: lb-ready turns True while the pod is still not ready
    (its server staged, checked UP, drained: no traffic), and once it is ready the leader puts
    it in rotation."""
    api, kubelet, lb, core = setup
    core.create_namespaced_service(
        "shop", service(annotations={"podlb.io/direct": "true", "podlb.io/gate-admit": "checked"})
    )
    slow = web_pod("web-0")
    slow["spec"]["containers"][0]["readinessProbe"]["initialDelaySeconds"] = 4
    core.create_namespaced_pod("shop", slow)
    with agents(api.url, AGENT_TOKEN, ["node-a"], extra=lb_args(lb)) as (agent,):
        agent.wait_ready()
        wait_for(lambda: conditions(api, "web-0").get(GATE) == "True", 20, "lb-ready True")
        server = f"{kubelet.record('web-0', 'shop').ip}_8080"
        early = (conditions(api, "web-0").get("ContainersReady"), servers(lb).get(server))
        assert early == ("False", "DRAIN"), early
        wait_for(lambda: conditions(api, "web-0").get("Ready") == "True", 20, "Ready")
        wait_for(lambda: servers(lb).get(server) == "UP", 10, "in rotation")
        res = run_load(lb.url, mode="new", concurrency=2, count=20, timeout=2.0)
        assert set(res.by_pod) == {"web-0"} and res.errors_total == 0, res.summary()


def test_no_provider_writes_nothing_to_any_lb(
    setup: tuple[Any, Kubelet, HAProxy, client.CoreV1Api],
) -> None:
    api, _kubelet, lb, core = setup
    core.create_namespaced_service("shop", service())
    core.create_namespaced_pod("shop", web_pod("web-0"))
    with agents(api.url, AGENT_TOKEN, ["node-a"]) as procs:
        procs[0].wait_ready()
        wait_for(
            lambda: "desired shop.web.http: 1 backends" in procs[0].log_text(None), 20, "logged"
        )
        assert servers(lb) == {}
        assert conditions(api, "web-0").get(GATE) is None


def test_leader_failover_mid_changes_loses_no_request(
    setup: tuple[Any, Kubelet, HAProxy, client.CoreV1Api],
) -> None:
    from tests.testbed.load import LoadGenerator

    api, _kubelet, lb, core = setup
    core.create_namespaced_service("shop", service())
    for i in range(3):
        core.create_namespaced_pod("shop", web_pod(f"web-{i}", ["node-a", "node-b"][i % 2]))
    fast = ["--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.3"]
    with agents(api.url, AGENT_TOKEN, ["node-a", "node-b"], extra=lb_args(lb) + fast) as procs:
        for p in procs:
            p.wait_ready()
        wait_for(lambda: sorted(servers(lb).values()) == ["UP"] * 3, 30, "3 UP")
        with LoadGenerator(
            lb.url, mode="keepalive", concurrency=2, duration=12.0, timeout=2.0
        ) as gen:
            time.sleep(1)
            [first] = wait_for(lambda: leaders(procs), what="a leader")
            # Changes in flight while the leader dies: a new pod, and the leader SIGKILLed.
            core.create_namespaced_pod("shop", web_pod("web-3", "node-a"))
            first.kill()
            wait_for(lambda: [p for p in leaders(procs) if p is not first], 15, "new leader")
            wait_for(lambda: conditions(api, "web-3").get("Ready") == "True", 30, "web-3 Ready")
            gen.wait()
        res = gen.result()
        assert res.errors_total == 0, res.summary()
        assert sorted(servers(lb).values()) == ["UP"] * 4
        assert "web-3" in res.by_pod or res.requests > 0


def test_pods_their_kubelet_stops_are_drained_and_spoofs_refused(
    setup: tuple[Any, Kubelet, HAProxy, client.CoreV1Api],
) -> None:
    """Defect 10: node-pressure eviction and graceful node shutdown stop a pod with no API
    deletion. The kubelet marks it DisruptionTarget/TerminationByKubelet (a shutdown also
    reports it Failed at once, so it leaves the EndpointSlice) and runs its preStop hook: the
    drain must hold it until HAProxy has drained and removed it, as for a deletion. A live pod
    with another DisruptionTarget reason (what an API eviction writes before its deletion)
    cannot be drained through its drain port."""
    api, kubelet, lb, core = setup
    core.create_namespaced_service("shop", service())
    hook = {"httpGet": {"path": "/drain", "port": 9809}}
    for name in ("evicted", "shutdown", "spoofed"):
        pod = make_pod(name, "node-a", namespace="shop", labels={"app": "web"},
                       readiness_gates=[GATE], grace=20, pre_stop=hook)  # fmt: skip
        core.create_namespaced_pod("shop", pod)
    with agents(api.url, AGENT_TOKEN, ["node-a"], extra=lb_args(lb)) as (agent,):
        agent.wait_ready()
        for name in ("evicted", "shutdown", "spoofed"):
            wait_for(lambda n=name: conditions(api, n).get("Ready") == "True", 30, f"{name} Ready")
        ips = {n: kubelet.record(n, "shop").ip for n in ("evicted", "shutdown", "spoofed")}
        kubelet.stop_pod("evicted", "shop", why="eviction")
        kubelet.stop_pod("shutdown", "shop", why="shutdown")
        for name in ("evicted", "shutdown"):
            kubelet.wait_gone(name, "shop", timeout=30)
            record = kubelet.record(name, "shop")
            assert record.prestop_errors == [], (name, record.prestop_errors)
            assert not record.prestop_timed_out and record.prestop_s is not None
            assert f"{ips[name]}_8080" not in servers(lb)  # drained and removed before SIGTERM
            pod = api.store.get("pods", "shop", name) or {}
            lb_ready = next(c for c in pod["status"]["conditions"] if c["type"] == GATE)
            assert (lb_ready["status"], lb_ready["reason"]) == ("False", "Deregistered")
        text = agent.get("/metrics")[1].decode()
        drained = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("podlb_drain_duration_seconds_count{")
            and 'outcome="deregistered+quiet"' in line
        )
        assert drained == 2.0, text
        # A DisruptionTarget the kubelet did not write for its own stop admits nothing.
        core.patch_namespaced_pod_status(
            "spoofed",
            "shop",
            {
                "status": {
                    "conditions": [
                        {
                            "type": "DisruptionTarget",
                            "status": "True",
                            "reason": "EvictionByEvictionAPI",
                        }
                    ]
                }
            },
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://{ips['spoofed']}:9809/drain", timeout=20)
        assert refused.value.code == 409
        assert servers(lb).get(f"{ips['spoofed']}_8080") == "UP"
        assert conditions(api, "spoofed").get("Ready") == "True"
