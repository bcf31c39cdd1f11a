"""The split deployment (daemonset/overlays/split): node agents + a leader Deployment, each
with its own ServiceAccount, and the node-restriction policy, on the real cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.cluster.cluster import NODE, Cluster
from tests.cluster.images import APP
from tests.cluster.podlb import (
    AGENT_NS,
    APP_NS,
    DATAPATH_READY,
    LB_READY,
    SPLIT_OVERLAY,
    NodeLB,
    Podlb,
    can,
    condition,
    until,
)
from tests.cluster.rollout import run_rollout

# The first test of a run also builds the images (minutes when cold) and starts the cluster.
pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(900)]

NODE_SA = "system:serviceaccount:podlb-system:podlb-agent"
LEADER_SA = "system:serviceaccount:podlb-system:podlb-leader"
POLICY = Path(__file__).parents[2] / "daemonset" / "components" / "node-restriction" / "policy.yaml"


def _leader_pods(podlb: Podlb) -> list[Any]:
    pods = podlb.core.list_namespaced_pod(
        AGENT_NS, label_selector="app.kubernetes.io/component=leader"
    ).items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def _ready(pod: Any) -> bool:
    c = condition(pod, "Ready")
    return c is not None and c.status == "True"


@pytest.fixture(scope="module")
def split(cluster: Cluster, podlb: Podlb, lb: NodeLB) -> Iterator[Podlb]:
    """The default install replaced by the split one, removed afterwards (the next module's
    ``podlb`` puts the default back, if one comes)."""
    del lb
    podlb.install(SPLIT_OVERLAY)
    try:
        until("2 leader pods Ready", lambda: sum(map(_ready, _leader_pods(podlb))) == 2, 120)
        yield podlb
    finally:
        podlb.remove()


def test_each_role_can_do_exactly_its_part(split: Podlb) -> None:
    both: list[tuple[str, ...]] = [
        ("list", "pods"), ("watch", "pods"), ("patch", "pods/status"), ("list", "services"),
        ("create", "events")]  # fmt: skip
    leader_only = [("list", "endpointslices", "discovery.k8s.io"),
                   ("update", "leases", "coordination.k8s.io", AGENT_NS)]  # fmt: skip
    nobody = [("get", "secrets", "", AGENT_NS), ("list", "secrets", "", ""),
              ("create", "pods"), ("delete", "pods"), ("update", "pods"),
              ("patch", "services"), ("list", "nodes"), ("create", "pods/exec"),
              ("delete", "leases", "coordination.k8s.io", AGENT_NS)]  # fmt: skip
    wrong = []
    for user in (NODE_SA, LEADER_SA):
        for args in both:
            if not can(split.api, user, *args):
                wrong.append((user, "denied", args))
        for args in nobody:
            if can(split.api, user, *args):
                wrong.append((user, "allowed", args))
        for args in leader_only:
            if can(split.api, user, *args) != (user == LEADER_SA):
                wrong.append((user, "leader-only", args))
    assert not wrong, wrong


def test_node_agents_hold_no_lb_settings_and_the_leader_no_host_access(split: Podlb) -> None:
    agent = split.wait_ready()
    spec = split.core.api_client.sanitize_for_serialization(agent.spec)
    text = json.dumps(spec)
    assert "podlb-cloud-credentials" not in text and "secretKeyRef" not in text
    assert "podlb-agent-lb" not in text  # no LB settings: nothing to call an LB with
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["PODLB_ROLE"] == "node"
    for pod in _leader_pods(split):
        assert not pod.spec.host_network
        sc = pod.spec.containers[0].security_context
        assert sc.capabilities.drop == ["ALL"] and not sc.capabilities.add
        assert sc.run_as_non_root and not (pod.spec.volumes or [])[0].host_path
    # One leader, from the Deployment; the node agent never holds the Lease.
    leaders = {p.metadata.name for p in _leader_pods(split)}
    until("a leader pod holds the Lease", lambda: split.lease_holder() in leaders, 60)


def test_rolling_update_with_the_split_deployment(split: Podlb, lb: NodeLB) -> None:
    result = run_rollout(split, lb, "podlb", name="split", replicas=3)
    assert result.failed == 0 and result.requests > 200, result.as_dict()
    assert len(result.register_s) == 3, result.as_dict()


def test_node_restriction_policy(cluster: Cluster, split: Podlb) -> None:
    """The component for 1.30+, run on 1.28 as v1beta1, with the 1.30 token claim supplied by
    impersonation (the admin impersonates the node agent with the node-name extra)."""
    docs = list(yaml.safe_load_all(POLICY.read_text()))
    for d in docs:
        d["apiVersion"] = "admissionregistration.k8s.io/v1beta1"
    name = "policy-target"
    cluster.apply({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": APP_NS},
        "spec": {"containers": [{"name": "app", "image": APP, "imagePullPolicy": "Never",
                                 "args": ["--port", "8080", "--name", name]}],
                 "terminationGracePeriodSeconds": 1},
    })  # fmt: skip
    until("the target pod scheduled", lambda: split.core.read_namespaced_pod(
        name, APP_NS).spec.node_name == NODE, 30)  # fmt: skip
    cluster.apply(docs)
    try:

        def patch(ctype: str, node: str) -> int:
            api = cluster.api_client()
            api.set_default_header("Impersonate-User", NODE_SA)
            api.set_default_header("Impersonate-Group", "system:serviceaccounts")
            api.set_default_header("Impersonate-Extra-authentication.kubernetes.io%2fnode-name",
                                   node)  # fmt: skip
            body = {"status": {"conditions": [
                {"type": ctype, "status": "True", "reason": "PolicyTest"}]}}  # fmt: skip
            try:
                client.CoreV1Api(api).patch_namespaced_pod_status(name, APP_NS, body)
            except client.ApiException as e:
                return int(e.status)
            return 200

        def enforced() -> bool:  # the policy takes a moment to load
            return patch(DATAPATH_READY, "some-other-node") == 403

        until("the policy enforced", enforced, 30, 0.5)
        assert patch(DATAPATH_READY, NODE) == 200  # its own node, its own condition
        assert patch(LB_READY, NODE) == 403  # the leader's condition
        assert patch(DATAPATH_READY, "") == 403  # a token without the node claim (before 1.30)
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicy,validatingadmissionpolicybinding",
                        "podlb-node-agent-own-node", "--ignore-not-found", check=False)  # fmt: skip
        cluster.kubectl("-n", APP_NS, "delete", "pod", name, "--wait=false", check=False)
