"""Status patches are for one pod, not for whatever pod has its name (issue 17, defect 13).

A StatefulSet pod deleted and recreated keeps its name; a condition decided for the old pod
(from a cache that has not seen the new one yet) must not land on the new one. The patch carries
``metadata.uid``: the API server refuses a patch that would change an object's uid (422 Invalid,
``metadata.uid: ... field is immutable``), so it acts as a precondition.
"""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agent.clock import Clock
from agent.kube.calls import Calls
from agent.kube.pods import PodStatusSink
from agent.model import LB_READY, Pod, PodKey
from agent.node.reporter import ConditionReporter, Desired
from tests.integration.kubeobjects import pod
from tests.testbed.kubeapi import KubeAPIServer

NS = "default"


def conditions(core: client.CoreV1Api, name: str) -> dict[str, str]:
    got = core.read_namespaced_pod(name, NS)
    return {c.type: c.status for c in got.status.conditions or []}


def test_a_patch_with_another_uid_is_refused_as_by_the_real_api_server(
    api: KubeAPIServer,
) -> None:
    """The testbed answers what kube-apiserver does: the strategic merge patch sets the uid,
    and update validation refuses the change of an immutable field (422)."""
    core = client.CoreV1Api(api.api_client())
    uid = core.create_namespaced_pod(NS, pod("web")).metadata.uid
    body = {"metadata": {"uid": "not-" + uid}, "status": {"conditions": [{"type": "X",
            "status": "True"}]}}  # fmt: skip
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_pod_status("web", NS, body)
    assert err.value.status == 422
    status = json.loads(err.value.body)
    assert status["reason"] == "Invalid"
    assert status["message"] == (
        f'Pod "web" is invalid: metadata.uid: Invalid value: "not-{uid}": field is immutable'
    )
    core.patch_namespaced_pod_status("web", NS, {**body, "metadata": {"uid": uid}})
    assert conditions(core, "web").get("X") == "True"


def test_a_recreated_pod_does_not_get_the_old_pods_condition(api: KubeAPIServer) -> None:
    core = client.CoreV1Api(api.api_client())
    old_uid = core.create_namespaced_pod(NS, pod("web")).metadata.uid
    stale = Pod(NS, "web", old_uid, "n1", ("10.0.0.1",), "Running")  # the cache, not updated
    core.delete_namespaced_pod("web", NS, grace_period_seconds=0)
    new_uid = core.create_namespaced_pod(NS, pod("web")).metadata.uid
    assert new_uid != old_uid
    sink = PodStatusSink(api.api_client(), Calls(), Clock(), "podlb-leader", "t")
    reporter = ConditionReporter(LB_READY, sink, lambda key: stale, Clock())
    key = PodKey(NS, "web")
    reporter.set_desired(key, Desired(old_uid, "True", "Healthy", "the old pod was healthy"))
    reporter.write_one(key)
    assert LB_READY not in conditions(core, "web"), "the new pod got the old pod's lb-ready"
    assert reporter.desired(key) is None  # the pod it was for is gone: forgotten
