"""Manage mode on the cloud LBs: the leader owns the backends, through the real SDKs, against
the local doubles of the CLB and BLB APIs (which check every request's signature). Pods are
real namespaces; the doubles health-check them by TCP from the host."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.testbed.agents import agents
from tests.testbed.blb import BlbDouble
from tests.testbed.clb import ClbDouble
from tests.testbed.kubeapi import KubeAPIServer
from tests.testbed.node import Kubelet, make_pod
from tests.testbed.rbac import AGENT_TOKEN, agent_cluster
from tests.testbed.waiting import wait_for

pytestmark = pytest.mark.netns

GATE = "podlb.io/lb-ready"
COMMON = ["--leader-resync", "2", "--lb-drain-timeout", "30"]


def service(annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def web_pod(name: str) -> dict[str, Any]:
    return make_pod(
        name, "node-a", namespace="shop", labels={"app": "web"}, readiness_gates=[GATE], grace=10
    )


def gate(api: KubeAPIServer, name: str) -> tuple[str, str]:
    pod = api.store.get("pods", "shop", name) or {}
    conds = (pod.get("status") or {}).get("conditions") or []
    c = next((c for c in conds if c["type"] == GATE), {})
    return c.get("status", ""), c.get("reason", "")


def events(api: KubeAPIServer, reason: str) -> list[dict[str, Any]]:
    return [e for e in api.store.list("events", "shop") if e.get("reason") == reason]


@pytest.fixture
def cluster() -> Iterator[tuple[KubeAPIServer, Kubelet, client.CoreV1Api]]:
    with agent_cluster("shop") as api, Kubelet.for_api(api, ["node-a"]) as kubelet:
        yield api, kubelet, client.CoreV1Api(api.api_client())


def test_blb_manage_mode_registers_caps_and_removes(
    cluster: tuple[KubeAPIServer, Kubelet, client.CoreV1Api],
) -> None:
    api, kubelet, core = cluster
    with BlbDouble(apply_delay_s=0.3, health_interval_s=0.2) as blb:
        blb_id = blb.add_blb("lb-cce1")
        group = blb.add_ip_group(blb_id)
        blb.add_listener(blb_id, "TCP", 80, group)
        core.create_namespaced_service("shop", service({
            "service.beta.kubernetes.io/cce-load-balancer-backend-type": "eni",
            "service.beta.kubernetes.io/cce-load-balancer-id": blb_id,
            "podlb.io/lb-mode": "manage",
        }))  # fmt: skip
        # The BLB's quota, scaled down: 2 members.
        extra = [*COMMON, "--lb", "baidu-blb", "--baidu-endpoint", blb.endpoint,
                 "--baidu-max-backends", "2"]  # fmt: skip
        env = {
            "PODLB_BAIDU_ACCESS_KEY_ID": blb.access_key_id,
            "PODLB_BAIDU_SECRET_ACCESS_KEY": blb.secret_access_key,
        }
        for i in range(3):
            core.create_namespaced_pod("shop", web_pod(f"web-{i}"))
        with agents(api.url, AGENT_TOKEN, ["node-a"], extra=extra, env=env) as procs:
            procs[0].wait_ready()
            ips = {f"web-{i}": kubelet.record(f"web-{i}", "shop").ip for i in range(3)}
            wait_for(lambda: len(blb.members(blb_id, group)) == 2, 30, "2 members in the BLB")
            wait_for(
                lambda: sorted(gate(api, n)[0] for n in ips) == ["False", "True", "True"],
                30, "the two registered pods lb-ready",
            )  # fmt: skip
            # Never silently truncated: the Service says so.
            assert events(api, "MaxBackendsReached"), api.store.list("events", "shop")
            left_out = next(n for n in ips if gate(api, n)[0] == "False")
            assert (ips[left_out], 8080, 100) not in blb.members(blb_id, group)
            # A registered pod goes: weight 0 first, then removed; the third one takes its slot.
            gone = next(n for n in ips if n != left_out)
            core.delete_namespaced_pod(gone, "shop")
            wait_for(
                lambda: all(m[0] != ips[gone] for m in blb.members(blb_id, group)),
                30, f"{gone} removed from the BLB",
            )  # fmt: skip
            wait_for(lambda: gate(api, left_out)[0] == "True", 30, f"{left_out} registered")
            assert procs[0].proc is not None and procs[0].proc.poll() is None
            log = procs[0].log_text()
            assert blb.secret_access_key not in log and blb.access_key_id not in log


def test_clb_manage_mode_registers_and_deregisters_through_the_sdk(
    cluster: tuple[KubeAPIServer, Kubelet, client.CoreV1Api],
) -> None:
    api, kubelet, core = cluster
    with ClbDouble(task_delay_s=0.3, health_interval_s=0.2, rise=1) as clb:
        clb.add_lb("lb-tke1")
        listener = clb.add_listener("lb-tke1", "TCP", 80)
        core.create_namespaced_service("shop", service({
            "podlb.io/direct": "true", "podlb.io/lb-provider": "tencent-clb",
            "podlb.io/lb-id": "lb-tke1",
        }))  # fmt: skip
        extra = [*COMMON, "--lb", "tencent-clb", "--tencent-region", clb.region,
                 "--tencent-endpoint", clb.endpoint]  # fmt: skip
        env = {"PODLB_TENCENT_SECRET_ID": clb.secret_id, "PODLB_TENCENT_SECRET_KEY": clb.secret_key}
        for i in range(2):
            core.create_namespaced_pod("shop", web_pod(f"web-{i}"))
        with agents(api.url, AGENT_TOKEN, ["node-a"], extra=extra, env=env) as procs:
            procs[0].wait_ready()
            ips = {f"web-{i}": kubelet.record(f"web-{i}", "shop").ip for i in range(2)}
            wait_for(lambda: all(gate(api, n) == ("True", "Healthy") for n in ips), 30, "Healthy")
            assert sorted(ip for ip, _p, _w in clb.targets("lb-tke1", listener)) == sorted(
                ips.values()
            )
            core.delete_namespaced_pod("web-1", "shop")
            wait_for(
                lambda: all(ip != ips["web-1"] for ip, _p, _w in clb.targets("lb-tke1", listener)),
                30, "web-1 deregistered",
            )  # fmt: skip
            assert "BatchModifyTargetWeight" in clb.actions()  # weight 0 before removal
            assert "BatchDeregisterTargets" in clb.actions()
            assert gate(api, "web-0") == ("True", "Healthy")
