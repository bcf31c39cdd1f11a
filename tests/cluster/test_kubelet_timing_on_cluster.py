"""The real kubelet's timing, pinned with the bounds the testbed's kubelet is held to.

The scenarios and bounds are :mod:`tests.testbed.timeline`'s; the testbed runs the same in
``tests/integration/test_testbed_kubelet_timing.py``. Where the two disagree, the testbed is
wrong. The pods run in a namespace of their own (podlb is not involved).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.cluster.cluster import Cluster
from tests.cluster.podlb import app_container
from tests.testbed import timeline
from tests.testbed.waiting import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(900)]

NS = "kubelet-timing"


@pytest.fixture(scope="module")
def results(cluster: Cluster) -> Iterator[timeline.Results]:
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespace({"metadata": {"name": NS}})
    try:
        wait_for(lambda: core.list_namespaced_service_account(NS).items, 30, "default SA")
        (node,) = core.list_node().items  # registered by the kubelet as it started
        started = time.monotonic() - (time.time() - node.metadata.creation_timestamp.timestamp())
        res = timeline.run_all(core, NS, app_container(hook="none"), kubelet_started=started)
        print("\n" + "\n".join(res.report()), file=sys.stderr)
        yield res
    finally:
        cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)


@pytest.mark.parametrize("fact", list(timeline.FACTS))
def test_kubelet_timing(results: timeline.Results, fact: str) -> None:
    timeline.FACTS[fact](results)
