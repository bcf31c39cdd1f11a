"""The API server double in a process of its own, and the simulated kubelet against it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.testbed.kubeapi import Rule
from tests.testbed.kubeapi.process import ROOT, KubeAPIProcess
from tests.testbed.node import Kubelet, make_pod


def test_tokens_limited_by_their_rules_and_stopped_on_exit() -> None:
    rules = [Rule(verbs={"get", "list"}, resources={"pods"}, api_groups={""})]
    with KubeAPIProcess({"reader": rules}) as api:
        admin = client.CoreV1Api(api.api_client())
        admin.create_namespace({"metadata": {"name": "shop"}})
        reader = client.CoreV1Api(api.api_client("reader"))
        assert reader.list_namespaced_pod("shop").items == []
        with pytest.raises(ApiException) as e:
            reader.create_namespace({"metadata": {"name": "other"}})
        assert e.value.status == 403
        proc = api._proc
        assert proc is not None
    assert proc.poll() is not None


def test_bad_rules_are_refused() -> None:
    bad = json.dumps([{"verbs": ["get"], "resources": ["pods"], "colour": "red"}])
    out = subprocess.run(
        [sys.executable, "-m", "tests.testbed.kubeapi", "--token-rules", f"x={bad}"],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 2 and "--token-rules x:" in out.stderr, out.stderr


@pytest.mark.netns
def test_kubelet_deletes_a_terminated_pod_through_the_api() -> None:
    """Without a store to reach into, the kubelet ends a pod as the real one does: a DELETE
    with grace period 0 once its containers are gone, long before the grace period."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with KubeAPIProcess() as api, Kubelet.for_api(api, ["node-a"]) as kubelet:
        core = client.CoreV1Api(api.api_client())
        core.create_namespaced_pod("default", make_pod("web-1", "node-a", grace=30))
        kubelet.wait_ready("web-1", timeout=20)
        t0 = time.monotonic()
        core.delete_namespaced_pod("web-1", "default")
        kubelet.wait_gone("web-1", timeout=20)
        while core.list_namespaced_pod("default").items:
            assert time.monotonic() - t0 < 10, "the pod stayed in the API server"
            time.sleep(0.1)


def test_the_accept_queue_holds_a_burst_of_connections() -> None:
    """socketserver listens with a queue of 5; hundreds of kubelet threads connecting at once
    then got resets. The kernel reports a listening socket's queue length as its Send-Q."""
    with KubeAPIProcess() as api:
        port = api.url.rsplit(":", 1)[1]
        out = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert int(out[2]) >= 1024, out
