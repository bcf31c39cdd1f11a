"""Raw API objects to the model: the leader's reduced pods decide exactly as whole ones."""

from __future__ import annotations

import copy
from typing import Any

from agent.kube.convert import (
    LAST_APPLIED,
    Shared,
    endpointslice_from_dict,
    leader_pod_from_dict,
    pod_from_dict,
    service_from_dict,
)
from agent.leader.desired import desired_pools, is_backend, never_added
from agent.model import DATAPATH_READY, LB_READY, PodKey

Obj = dict[str, Any]
T0 = "2026-01-01T00:00:00Z"


def condition(ctype: str, status: str, reason: str = "", message: str = "") -> Obj:
    return {"type": ctype, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": T0, "lastProbeTime": None}  # fmt: skip


def pod(name: str, ip: str, *conds: Obj, **meta: Any) -> Obj:
    """A pod as the API serves it, with what the leader does not read too."""
    return {
        "metadata": {
            "name": name, "namespace": "shop", "uid": f"uid-{name}", "resourceVersion": "41",
            "creationTimestamp": T0, "generateName": "web-5d9c-",
            "labels": {"app": "web", "pod-template-hash": "5d9c", "tier": "front"},
            "annotations": {"prometheus.io/scrape": "true", "checksum/config": "ab" * 32,
                            **meta.pop("annotations", {})},
            "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
            **meta,
        },
        "spec": {
            "nodeName": "node-1",
            "readinessGates": [{"conditionType": LB_READY}],
            "containers": [
                {"name": "app", "image": "web:1", "env": [{"name": "A", "value": "1"}],
                 "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]},
                {"name": "proxy", "image": "proxy:1"},
            ],
        },
        "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "10.0.0.1",
            "conditions": [condition("Initialized", "True"), condition("PodScheduled", "True"),
                           *conds],
            "containerStatuses": [{"name": "app", "ready": True, "restartCount": 0}],
        },
    }  # fmt: skip


READY = condition("ContainersReady", "True")
UNREADY = condition("ContainersReady", "False", "ContainersNotReady", "containers with unready")
PODS = [
    pod("a", "10.0.0.1", READY, condition("Ready", "True"),
        condition(LB_READY, "True", "Healthy", "shop.web.http/10.0.0.1_8080: in rotation")),
    pod("b", "10.0.0.2", READY, condition(LB_READY, "False", "Registering", "waiting")),
    pod("c", "10.0.0.3", UNREADY),
    pod("d", "10.0.0.4", READY, condition(DATAPATH_READY, "False", "NotListening", "port 8080")),
    pod("e", "10.0.0.5", READY, annotations={"podlb.io/weight": "7"}),
    pod("f", "10.0.0.6", READY, deletionTimestamp=T0, deletionGracePeriodSeconds=30),
    pod("g", "10.0.0.7", READY,
        condition("DisruptionTarget", "True", "TerminationByKubelet", "node shutdown")),
    pod("h", "10.0.0.8", condition(LB_READY, "False", "NotRegistered", "not ready")),
]  # fmt: skip
SERVICE = {
    "metadata": {"name": "web", "namespace": "shop", "uid": "svc-uid",
                 "annotations": {"podlb.io/direct": "true", LAST_APPLIED: "{" + "x" * 2000}},
    "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
             "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
}  # fmt: skip
SLICE = {
    "metadata": {"name": "web-x", "namespace": "shop",
                 "labels": {"kubernetes.io/service-name": "web"}},
    "addressType": "IPv4",
    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    "endpoints": [
        {"addresses": [p["status"]["podIP"]], "conditions": {"ready": False},
         "nodeName": "node-1",
         "targetRef": {"kind": "Pod", "namespace": "shop", "name": p["metadata"]["name"]}}
        for p in PODS
    ],
}  # fmt: skip


def test_the_leader_decides_the_same_on_reduced_pods() -> None:
    whole = {PodKey("shop", p["metadata"]["name"]): pod_from_dict(p) for p in PODS}
    reduced = {PodKey("shop", p["metadata"]["name"]): leader_pod_from_dict(p) for p in PODS}
    services = [service_from_dict(SERVICE)]
    slices = [endpointslice_from_dict(SLICE)]
    assert desired_pools(services, slices, whole) == desired_pools(services, slices, reduced)
    for key, full in whole.items():
        small = reduced[key]
        assert (is_backend(small), never_added(small)) == (is_backend(full), never_added(full))
        assert (small.leaving, small.stopped_by_kubelet) == (full.leaving, full.stopped_by_kubelet)
        assert small.annotation("podlb.io/weight") == full.annotation("podlb.io/weight")
        mine, theirs = small.condition(LB_READY), full.condition(LB_READY)
        assert (mine and (mine.status, mine.reason, mine.last_transition_time)) == (
            theirs and (theirs.status, theirs.reason, theirs.last_transition_time)
        )


def test_a_reduced_pod_keeps_only_what_the_leader_reads() -> None:
    small = leader_pod_from_dict(PODS[0])
    assert [c.type for c in small.conditions] == ["ContainersReady", LB_READY]
    assert all(c.message == "" for c in small.conditions)
    ready = small.condition("ContainersReady")
    assert ready is not None and ready.last_transition_time is None
    assert small.annotations == ()
    assert small.resource_version == ""
    assert dict(small.labels) == {"app": "web", "pod-template-hash": "5d9c", "tier": "front"}
    assert (small.ips, small.node_name, small.readiness_gates) == (
        ("10.0.0.1",),
        "node-1",
        (LB_READY,),
    )
    # A write to a field the leader does not read is no change to its cache.
    later = copy.deepcopy(PODS[0])
    later["metadata"]["resourceVersion"] = "42"
    later["status"]["containerStatuses"][0]["restartCount"] = 1
    later["status"]["conditions"][0]["lastTransitionTime"] = "2026-01-02T00:00:00Z"
    assert leader_pod_from_dict(later) == small


def test_pods_of_one_replicaset_share_what_they_have_in_common() -> None:
    a, b = leader_pod_from_dict(PODS[1]), leader_pod_from_dict(PODS[4])
    assert a.labels is b.labels and a.ports is b.ports and a.readiness_gates is b.readiness_gates
    assert a.conditions[0] is b.conditions[0]  # ContainersReady True
    assert a.namespace is b.namespace


def test_shared_is_bounded() -> None:
    shared = Shared(size=2)
    one = shared(("x",))
    assert shared(tuple(["x"])) is one
    shared(("y",))
    shared(("z",))  # the third distinct value starts afresh
    assert len(shared._values) == 1


def test_services_drop_kubectls_copy_of_themselves() -> None:
    svc = service_from_dict(SERVICE)
    assert svc.annotation(LAST_APPLIED) is None
    assert svc.annotation("podlb.io/direct") == "true"
