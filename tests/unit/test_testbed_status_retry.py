"""The simulated kubelet tries a status write again when it does not reach the API server."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace
from typing import Any

import urllib3

from tests.testbed.node import STATUS_TRIES, Kubelet
from tests.testbed.podruntime import PodRuntime

POD = {"metadata": {"name": "web-1", "namespace": "shop", "uid": "u1", "resourceVersion": "1"}}


class FlakyCore:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def patch_namespaced_pod_status(self, name: str, ns: str, body: Any, **kw: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError())
        answer = {**POD, "metadata": {**POD["metadata"], "resourceVersion": "2"}, **body}
        return SimpleNamespace(data=json.dumps(answer).encode())


def kubelet(core: FlakyCore) -> Kubelet:
    k = Kubelet.__new__(Kubelet)  # only what _patch_status uses: no network, no watch
    k.core, k._stop, k.errors = core, threading.Event(), []
    return k


def test_a_reset_write_is_tried_again() -> None:
    core = FlakyCore(failures=2)
    k, rt = kubelet(core), PodRuntime("node-a", POD)
    k._patch_status(rt, {"phase": "Running"})
    assert core.calls == 3 and rt.obj["status"] == {"phase": "Running"} and not k.errors


def test_a_write_that_never_arrives_is_an_error() -> None:
    core = FlakyCore(failures=STATUS_TRIES)
    k, rt = kubelet(core), PodRuntime("node-a", POD)
    k._patch_status(rt, {"phase": "Running"})
    assert core.calls == STATUS_TRIES and "status" not in rt.obj
    assert len(k.errors) == 1 and "Connection aborted" in k.errors[0]
