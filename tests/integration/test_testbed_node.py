"""The simulated kubelet and the Deployment-like helper against the API server double."""

from __future__ import annotations

import http.client
import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.testbed.appproc import spawn_local
from tests.testbed.deploy import RollingUpdate, is_ready, template_hash
from tests.testbed.haproxy import free_port
from tests.testbed.load import run_load
from tests.testbed.netns import ip
from tests.testbed.node import Kubelet, make_pod, pod_ready_condition

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]

GATE = "podlb.io/lb-ready"


# -- pure ---------------------------------------------------------------------------------
def test_ready_condition_from_gates() -> None:
    pod: dict[str, Any] = {"spec": {"readinessGates": [{"conditionType": GATE}]}, "status": {}}
    assert pod_ready_condition(False, pod)[:2] == ("False", "ContainersNotReady")
    status, reason, msg = pod_ready_condition(True, pod)
    assert (status, reason) == ("False", "ReadinessGatesNotReady") and "does not exist" in str(msg)
    pod["status"]["conditions"] = [{"type": GATE, "status": "False"}]
    assert pod_ready_condition(True, pod)[1] == "ReadinessGatesNotReady"
    pod["status"]["conditions"] = [{"type": GATE, "status": "True"}]
    assert pod_ready_condition(True, pod) == ("True", None, None)
    assert pod_ready_condition(True, {"spec": {}}) == ("True", None, None)


def test_template_hash_is_stable() -> None:
    a = {"spec": {"containers": [{"name": "app", "image": "x"}]}}
    b = {"spec": {"containers": [{"image": "x", "name": "app"}]}}
    assert template_hash(a) == template_hash(b) and len(template_hash(a)) == 10
    assert template_hash(a) != template_hash({"spec": {}})


# -- against the API double --------------------------------------------------------------
@pytest.fixture
def api() -> Iterator[Any]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    kubeapi = pytest.importorskip("tests.testbed.kubeapi", reason="API server double not there")
    if not hasattr(kubeapi, "KubeAPIServer"):
        pytest.skip("API server double not there yet")
    with kubeapi.KubeAPIServer(port=0) as server:
        yield server


@pytest.fixture
def kubelet(api: Any) -> Iterator[Kubelet]:
    with Kubelet.for_api(api, ["node-a", "node-b"]) as k:
        yield k


@pytest.fixture
def core(api: Any) -> client.CoreV1Api:
    return client.CoreV1Api(api.api_client())


def conds(core: client.CoreV1Api, name: str) -> dict[str, str]:
    pod = core.read_namespaced_pod_status(name, "default")
    return {c.type: c.status for c in pod.status.conditions or []}


def get(host: str, port: int, path: str = "/") -> tuple[int, str]:
    conn = http.client.HTTPConnection(host, port, timeout=3)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_pod_runs_in_netns_with_kubelet_status(kubelet: Kubelet, core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", make_pod("web-1", "node-a"))
    kubelet.wait_ready("web-1", timeout=15)
    pod = core.read_namespaced_pod_status("web-1", "default")
    rec = kubelet.record("web-1")
    assert pod.status.phase == "Running"
    assert pod.status.pod_ip == rec.ip and pod.status.pod_i_ps[0].ip == rec.ip
    assert pod.status.host_ip == "127.0.0.1"
    assert rec.ip.startswith(kubelet.pod_cidrs["node-a"].rsplit(".", 2)[0])
    c = conds(core, "web-1")
    assert {k: c[k] for k in ("PodScheduled", "Initialized", "ContainersReady", "Ready")} == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    assert pod.status.container_statuses[0].ready is True
    assert get(rec.ip, 8080) == (200, "web-1")
    assert rec.running_at is not None and rec.ready_at is not None
    # Not on this kubelet's nodes: ignored.
    core.create_namespaced_pod("default", make_pod("elsewhere", "node-z"))
    assert "default/elsewhere" not in kubelet.records


def test_ready_follows_readiness_gate(kubelet: Kubelet, core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", make_pod("gated", "node-b", readiness_gates=[GATE]))
    kubelet.wait_for(lambda: conds(core, "gated").get("ContainersReady") == "True", 15)
    assert conds(core, "gated")["Ready"] == "False"
    for want in ("True", "False", "True"):
        body = {"status": {"conditions": [{"type": GATE, "status": want}]}}
        core.patch_namespaced_pod_status("gated", "default", body)
        kubelet.wait_for(lambda w=want: conds(core, "gated")["Ready"] == w, 5, f"Ready {want}")  # type: ignore[misc]
    assert conds(core, "gated")[GATE] == "True"


def test_delete_runs_exec_prestop_then_sigterm(
    api: Any, kubelet: Kubelet, core: client.CoreV1Api
) -> None:
    hook = {"exec": {"command": [sys.executable, "-c", "import time; time.sleep(0.3)"]}}
    core.create_namespaced_pod("default", make_pod("bye", "node-a", pre_stop=hook, grace=10))
    kubelet.wait_ready("bye", timeout=15)
    ns_name = kubelet.record("bye").netns
    core.delete_namespaced_pod("bye", "default")
    kubelet.wait_gone("bye", timeout=15)
    rec = kubelet.record("bye")
    assert rec.prestop_s is not None and 0.3 <= rec.prestop_s < 2
    assert not rec.prestop_errors and not rec.sigkilled
    assert rec.exit_codes == {"app": 0}
    assert rec.sigterm_at is not None and rec.deletion_seen_at is not None
    assert rec.sigterm_at - rec.deletion_seen_at >= 0.3
    assert ns_name not in ip("netns", "list").stdout
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_pod("bye", "default")
    assert exc.value.status == 404


def test_http_prestop_and_grace_period_cut(kubelet: Kubelet, core: client.CoreV1Api) -> None:
    port = free_port()
    hook_server = spawn_local(port, "hook")
    try:
        http_hook = {"httpGet": {"host": "127.0.0.1", "port": port, "path": "/?delay_ms=400"}}
        core.create_namespaced_pod("default", make_pod("h1", "node-a", pre_stop=http_hook))
        slow = {"exec": {"command": [sys.executable, "-c", "import time; time.sleep(30)"]}}
        core.create_namespaced_pod("default", make_pod("h2", "node-b", pre_stop=slow, grace=1))
        kubelet.wait_ready("h1", timeout=15)
        kubelet.wait_ready("h2", timeout=15)
        core.delete_namespaced_pod("h1", "default")
        core.delete_namespaced_pod("h2", "default")
        kubelet.wait_gone("h1", timeout=15)
        kubelet.wait_gone("h2", timeout=15)
    finally:
        hook_server.kill()
        hook_server.wait()
    h1, h2 = kubelet.record("h1"), kubelet.record("h2")
    assert h1.prestop_s is not None and 0.4 <= h1.prestop_s < 2, h1
    assert h2.prestop_s is not None and 0.9 <= h2.prestop_s < 2 and h2.prestop_timed_out, h2


def test_stop_cleans_up(api: Any, core: client.CoreV1Api) -> None:
    k = Kubelet.for_api(api, ["node-c"])
    cidr = k.pod_cidrs["node-c"]
    with k:
        core.create_namespaced_pod("default", make_pod("tmp", "node-c"))
        k.wait_ready("tmp", timeout=15)
        tag = k.pool.tag
        gone_ip = k.record("tmp").ip
        core.delete_namespaced_pod("tmp", "default")
        k.wait_gone("tmp", timeout=15)
        # A deleted pod's IP is unreachable at once, as on a node that routes its pod CIDR;
        # it never leaves through the default route (the load generator's "other" once).
        res = run_load(f"http://{gone_ip}:8080/", count=2, concurrency=1, timeout=1)
        assert res.errors["unreachable"] == 2, res.summary()
        assert f"unreachable {cidr}" in ip("route", "show", "type", "unreachable").stdout
    assert tag not in ip("netns", "list").stdout
    assert tag not in ip("link").stdout
    assert cidr not in ip("route", "show", "type", "unreachable").stdout


def test_rolling_update_keeps_capacity(api: Any, kubelet: Kubelet, core: client.CoreV1Api) -> None:
    tmpl = make_pod("x", "", readiness_gates=[])
    del tmpl["metadata"]["name"]
    del tmpl["spec"]["nodeName"]
    with RollingUpdate(api.api_client(), "web", tmpl, nodes=["node-a", "node-b"], timeout=60) as d:
        rep = d.scale(2)
        pods = d.pods()
        assert len(pods) == 2 and all(is_ready(p) for p in pods)
        assert {p["spec"]["nodeName"] for p in pods} == {"node-a", "node-b"}
        old = {p["metadata"]["name"] for p in pods}

        new_tmpl = make_pod("x", "", delay_ms=1)
        del new_tmpl["metadata"]["name"]
        del new_tmpl["spec"]["nodeName"]
        rep = d.rolling_update(new_tmpl, max_surge=1, max_unavailable=0, wait_gone=True)
        pods = d.pods(include_terminating=True)
        assert len(pods) == 2 and not old & {p["metadata"]["name"] for p in pods}
        assert all(p["metadata"]["labels"]["pod-template-hash"] == rep.new_hash for p in pods)
        assert rep.min_ready_seen is not None and rep.min_ready_seen >= 2
        assert rep.max_pods_seen <= 3
        actions = [s.action for s in rep.steps]
        assert actions.count("create") == 2 and actions.count("delete") == 2
        assert actions.index("ready") < actions.index("delete")
        assert rep.total_s > 0 and "rollout" in rep.summary()


def test_rolling_update_reads_its_own_writes(api: Any, core: client.CoreV1Api) -> None:
    """The helper reads its pods from a watch, and the next read after a write has it (the
    Deployment controller's expectations): no pod created twice, none deleted twice."""
    tmpl = make_pod("x", "")
    del tmpl["metadata"]["name"]
    del tmpl["spec"]["nodeName"]
    with RollingUpdate(api.api_client(), "web", tmpl, nodes=["node-a"], timeout=10) as d:
        d.scale(3, wait=False)
        assert len(d.pods()) == 3
        d.scale(1, wait=False)
        assert len(d.pods()) == 1 and len(d.pods(include_terminating=True)) == 3
        other = make_pod("other", "node-a", labels={"app": "other"})
        core.create_namespaced_pod("default", other)
        api.faults.cut_watches()  # the watch is down for a while: the reads wait for it
        d.scale(2, wait=False)
        assert len(d.pods()) == 2
    assert len(core.list_namespaced_pod("default", label_selector="app=web").items) == 4


@pytest.mark.haproxy
def test_kubelet_pods_behind_haproxy(kubelet: Kubelet, core: client.CoreV1Api) -> None:
    from tests.testbed.haproxy import HAProxy, supports_dynamic_servers
    from tests.testbed.load import run_load

    if not supports_dynamic_servers():
        pytest.skip("needs haproxy >= 2.4")
    for i, node in enumerate(["node-a", "node-b"]):
        core.create_namespaced_pod("default", make_pod(f"lb-{i}", node))
    with HAProxy(server_options="check inter 200ms fall 2 rise 1") as lb:
        for i in range(2):
            kubelet.wait_ready(f"lb-{i}", timeout=15)
            lb.add_server("be", f"s{i}", kubelet.record(f"lb-{i}").ip, 8080)
        res = run_load(lb.url, mode="keepalive", count=40, concurrency=2)
    assert res.ok == 40, res.summary()
    assert set(res.by_pod) == {"lb-0", "lb-1"}
