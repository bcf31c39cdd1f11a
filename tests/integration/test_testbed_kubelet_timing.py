"""The simulated kubelet keeps the real kubelet's timing.

The scenarios and bounds are :mod:`tests.testbed.timeline`'s; the same run on the real node
in ``tests/cluster/test_kubelet_timing_on_cluster.py``, so the two tiers agree.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.testbed import timeline
from tests.testbed.node import Kubelet, make_pod

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

NS = "timing"
CONTAINER = {
    "name": "app",
    "image": "testbed/app",
    "ports": [{"name": "http", "containerPort": timeline.APP_PORT}],
}


@pytest.fixture(scope="module")
def api() -> Iterator[Any]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    from tests.testbed.kubeapi import KubeAPIServer

    with KubeAPIServer(port=0) as server:
        yield server


@pytest.fixture(scope="module")
def results(api: Any) -> timeline.Results:
    core = client.CoreV1Api(api.api_client())
    core.create_namespace({"metadata": {"name": NS}})
    with Kubelet.for_api(api, ["node-a"]) as kubelet:
        res = timeline.run_all(
            core, NS, CONTAINER, node="node-a", kubelet_started=kubelet.started_at
        )
        assert kubelet.errors == []
    print("\n" + "\n".join(res.report()), file=sys.stderr)
    return res


@pytest.mark.parametrize("fact", list(timeline.FACTS))
def test_kubelet_timing(results: timeline.Results, fact: str) -> None:
    timeline.FACTS[fact](results)


def test_a_bad_probe_is_refused_with_a_clear_error(api: Any) -> None:
    core = client.CoreV1Api(api.api_client())
    pod = make_pod("bad-probe", "node-a", namespace=NS)
    pod["spec"]["containers"][0]["readinessProbe"]["periodSeconds"] = 0.5
    with Kubelet.for_api(api, ["node-a"]) as kubelet:
        core.create_namespaced_pod(NS, pod)
        kubelet.wait_for(lambda: bool(kubelet.errors), 10, "an error")
        assert "readinessProbe.periodSeconds: a non-negative integer, not 0.5" in kubelet.errors[0]
        assert kubelet.record("bad-probe", NS).running_at is None
