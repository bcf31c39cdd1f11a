"""podlb on a real kubelet, API server and controllers: the basic loop (tests/cluster/)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.cluster.cluster import Cluster
from tests.cluster.podlb import (
    APP_NS,
    DATAPATH_READY,
    LB_READY,
    NodeLB,
    Podlb,
    PodWatch,
    app_container,
    can,
    condition,
    deployment,
    service,
    until,
)

# The first test of a run also builds the images (minutes when cold) and starts the cluster.
pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(900)]


def _pods(podlb: Podlb, app: str) -> list[Any]:
    return podlb.core.list_namespaced_pod(APP_NS, label_selector=f"app={app}").items


def test_agent_runs_as_shipped_and_leads(cluster: Cluster, podlb: Podlb) -> None:
    agent = podlb.wait_ready()
    # The shipped security context reached the container unchanged.
    sc = agent.spec.containers[0].security_context
    assert sc.capabilities.drop == ["ALL"]
    assert sc.capabilities.add == ["SYS_ADMIN"]
    assert sc.seccomp_profile.type == "RuntimeDefault"
    assert sc.read_only_root_filesystem is True
    assert agent.spec.service_account_name == "podlb-agent"
    assert agent.spec.host_network is True
    # The real Lease API elected it.
    until("the agent holds the Lease", lambda: podlb.lease_holder() == agent.metadata.name, 30)
    del cluster


def test_datapath_ready_then_not_listening(cluster: Cluster, podlb: Podlb) -> None:
    """A gated pod on the CNI bridge gets datapath-ready=True; its listener stops: False.

    The app runs as uid 1000: the agent, without CAP_SYS_PTRACE, cannot open its
    /proc/<pid>/ns/net and finds the namespace through containerd's bind mount."""
    container = app_container(hook="none")
    container["securityContext"] = {"runAsUser": 1000, "runAsGroup": 1000}
    # The listener is not PID 1, so it can stop while the container runs on.
    container["command"] = ["sh", "-c",
                            'python /app/app.py "$@" & echo $! > /tmp/app.pid; '
                            'trap "exit 0" TERM; while :; do sleep 1; done', "sh"]  # fmt: skip
    del container["readinessProbe"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "listener", "namespace": APP_NS, "labels": {"app": "listener"}},
        "spec": {"containers": [container], "readinessGates": [{"conditionType": LB_READY}],
                 "terminationGracePeriodSeconds": 2},
    }  # fmt: skip
    cluster.apply(pod)

    def datapath() -> Any:
        p = podlb.core.read_namespaced_pod("listener", APP_NS)
        return condition(p, DATAPATH_READY)

    def datapath_is(status: str) -> Any:
        c = datapath()
        return c if c is not None and c.status == status else None

    ready = until("datapath-ready True", lambda: datapath_is("True"), 60)
    assert ready.reason in (None, "", "Ready", "Listening"), ready.reason
    ip = podlb.core.read_namespaced_pod("listener", APP_NS).status.pod_ip
    assert ip.startswith("10.213.0."), ip  # a real CNI address on the bridge
    cluster.kubectl("-n", APP_NS, "exec", "listener", "--", "sh", "-c", "kill $(cat /tmp/app.pid)")
    gone = until("datapath-ready False", lambda: datapath_is("False"), 60)
    assert gone.reason == "NotListening", gone
    cluster.kubectl("-n", APP_NS, "delete", "pod", "listener", "--wait=false")


def test_gated_pod_ready_only_after_haproxy_up(cluster: Cluster, podlb: Podlb, lb: NodeLB) -> None:
    """The leader registers the pod in HAProxy; the kubelet turns it Ready after HAProxy's UP."""
    backend = f"{APP_NS}.gate.http"
    cluster.apply([service("gate"), deployment("gate", 1, app_container(hook="http"))])
    up_at: list[float] = []
    with PodWatch(podlb.api, APP_NS, "app=gate") as pw:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not up_at:
            if any(r.get("status") == "UP" for r in lb.servers(backend).values()):
                up_at.append(time.monotonic())
            time.sleep(0.02)
        assert up_at, f"no server UP in {backend}: {lb.servers(backend)}"
        name = until("a gate pod", lambda: next(iter(pw.pods), None), 10)
        times = until("Ready seen", lambda: pw.pods[name] if pw.pods[name].ready else None, 30)
    assert times.containers_ready is not None and times.lb_ready is not None
    # Ready never precedes HAProxy's UP (20 ms polling), nor lb-ready.
    assert times.ready >= up_at[0] - 0.05, (times, up_at)
    assert times.ready >= times.lb_ready
    pod = _pods(podlb, "gate")[0]
    server_ips = {r.get("addr", "").split(":")[0] for r in lb.servers(backend).values()}
    assert pod.status.pod_ip in server_ips
    cluster.kubectl("-n", APP_NS, "delete", "deployment", "gate", "--wait=false")


def test_agent_cannot_reach_the_host_through_proc(cluster: Cluster, podlb: Podlb) -> None:
    """docs/security.md: without CAP_SYS_PTRACE, /host/proc/1/root and /host/proc/1/ns/net stay
    closed to the agent, though it is uid 0 with the host's /proc mounted."""
    agent = podlb.wait_ready().metadata.name
    probe = (
        "import os\n"
        "for p in ('/host/proc/1/root/etc', '/host/proc/1/ns/net'):\n"
        "    try:\n"
        "        os.stat(p) if p.endswith('net') else os.listdir(p)\n"
        "        print(p, 'OPEN')\n"
        "    except PermissionError:\n"
        "        print(p, 'denied')\n"
    )
    out = cluster.kubectl("-n", "podlb-system", "exec", agent, "--", "python", "-c", probe)
    assert out.split() == ["/host/proc/1/root/etc", "denied", "/host/proc/1/ns/net", "denied"]


def test_agent_rbac_is_exactly_what_security_md_says(cluster: Cluster, podlb: Podlb) -> None:
    sa = "system:serviceaccount:podlb-system:podlb-agent"
    allowed = {
        ("get", "pods", "", ""), ("list", "pods", "", ""), ("watch", "pods", "", ""),
        ("patch", "pods/status", "", ""),
        ("list", "services", "", ""), ("watch", "services", "", ""),
        ("list", "endpointslices", "discovery.k8s.io", ""),
        ("watch", "endpointslices", "discovery.k8s.io", ""),
        ("create", "events", "", ""), ("patch", "events", "", ""),
        ("get", "leases", "coordination.k8s.io", "podlb-system"),
        ("update", "leases", "coordination.k8s.io", "podlb-system"),
        ("create", "leases", "coordination.k8s.io", "podlb-system"),
    }  # fmt: skip
    denied = {
        ("update", "pods", "", ""), ("delete", "pods", "", ""), ("patch", "pods", "", ""),
        ("create", "pods", "", ""), ("update", "pods/status", "", ""),
        ("create", "pods/exec", "", ""), ("get", "secrets", "", ""), ("list", "secrets", "", ""),
        ("get", "secrets", "", "podlb-system"), ("list", "nodes", "", ""),
        ("update", "leases", "coordination.k8s.io", "kube-system"),
        ("delete", "leases", "coordination.k8s.io", "podlb-system"),
        ("create", "services", "", ""), ("patch", "services", "", ""),
        ("update", "endpointslices", "discovery.k8s.io", ""),
        ("list", "configmaps", "", ""), ("patch", "nodes/status", "", ""),
    }  # fmt: skip

    def may(verb: str, resource: str, group: str, namespace: str) -> bool:
        return can(podlb.api, sa, verb, resource, group, namespace)

    wrong = [a for a in sorted(allowed) if not may(*a)] + [d for d in sorted(denied) if may(*d)]
    assert not wrong, f"RBAC differs from docs/security.md for: {wrong}"
    # And the rules the API server holds are exactly the manifest's: nothing more is bound.
    listed = cluster.kubectl("auth", "can-i", "--list", f"--as={sa}", "-n", "podlb-system")
    rows = [line.split()[0] for line in listed.splitlines()[1:] if line.strip()]
    resources = {r for r in rows if not r.startswith("[")}  # "[/healthz]": non-resource URLs
    expected = {"pods", "pods/status", "services", "endpointslices.discovery.k8s.io", "events",
                "events.events.k8s.io", "leases.coordination.k8s.io"}  # fmt: skip
    extra = resources - expected - _DISCOVERY
    assert not extra, f"the agent can do more than docs/security.md says: {extra}\n{listed}"


# What every authenticated identity may do (system:basic-user, discovery, public-info-viewer).
_DISCOVERY = {
    "selfsubjectaccessreviews.authorization.k8s.io",
    "selfsubjectrulesreviews.authorization.k8s.io",
    "selfsubjectreviews.authentication.k8s.io",
}
