"""Writes go over kept connections to the API server, not one new connection each.

A condition write or an Event whose answer is never read holds its connection: urllib3 gives
it back to the pool only once the body is read. Each write then opened a connection of its own
(against a real API server a TLS handshake, about 10 ms of the leader's CPU, with the GIL) and
left the old one to the garbage collector: under churn the leader spent an eighth of its
samples in ``connect``.
"""

from __future__ import annotations

from agent.clock import Clock
from agent.kube.calls import Calls
from agent.kube.client import KubeAccess
from agent.kube.factory import KubeAdapters
from agent.model import LB_READY, Condition, PodKey
from tests.integration.kubeobjects import pod
from tests.testbed.kubeapi import KubeAPIServer

NS = "default"


def test_condition_writes_and_events_reuse_one_connection(api: KubeAPIServer) -> None:
    kube = KubeAdapters(KubeAccess(host=api.url, token=api.admin_token), Calls(), Clock())
    try:
        uid = kube.core.create_namespaced_pod(NS, pod("web")).metadata.uid
        sink = kube.status_sink("podlb-leader", "t")
        for n in range(10):
            status = "True" if n % 2 else "False"
            sink.patch_condition(PodKey(NS, "web"), Condition(LB_READY, status, "R"), uid)
            sink.emit_object_event("Pod", NS, "web", uid, "Normal", "R", f"write {n}")
        pool = kube.api.rest_client.pool_manager.connection_from_url(api.url)
        # the create above, then 20 requests one after the other: all on one connection
        assert pool.num_connections == 1
        got = kube.core.read_namespaced_pod("web", NS).status.conditions
        assert [(c.type, c.status) for c in got if c.type == LB_READY] == [(LB_READY, "True")]
    finally:
        kube.close()
