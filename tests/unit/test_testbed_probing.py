"""The testbed kubelet's probe settings: the API's defaults and validation."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.testbed.probing import ProbeSpec, ProbeWorker

GET = {"httpGet": {"path": "/healthz", "port": 8080}}


def test_unset_and_zero_fields_take_the_api_defaults() -> None:
    for probe in (GET, {**GET, "periodSeconds": 0, "timeoutSeconds": 0, "failureThreshold": 0}):
        spec = ProbeSpec.parse(probe)
        assert (spec.initial_delay, spec.period, spec.timeout) == (0, 10, 1)
        assert (spec.success_threshold, spec.failure_threshold) == (1, 3)
        assert spec.action == "httpGet" and spec.handler == GET["httpGet"]


def test_set_fields_are_kept() -> None:
    spec = ProbeSpec.parse(
        {"exec": {"command": ["true"]}, "initialDelaySeconds": 3, "periodSeconds": 2,
         "timeoutSeconds": 5, "successThreshold": 2, "failureThreshold": 7}
    )  # fmt: skip
    assert (spec.action, spec.initial_delay, spec.period, spec.timeout) == ("exec", 3, 2, 5)
    assert (spec.success_threshold, spec.failure_threshold) == (2, 7)


@pytest.mark.parametrize(
    ("probe", "message"),
    [
        ({**GET, "periodSeconds": -1}, "readinessProbe.periodSeconds: a non-negative integer"),
        ({**GET, "timeoutSeconds": 0.5}, "readinessProbe.timeoutSeconds: a non-negative integer"),
        ({**GET, "failureThreshold": "3"}, "readinessProbe.failureThreshold"),
        ({**GET, "successThreshold": True}, "readinessProbe.successThreshold"),
        ({"periodSeconds": 1}, "exactly one of httpGet, tcpSocket, exec"),
        ({**GET, "tcpSocket": {"port": 1}}, "exactly one of"),
    ],
)
def test_bad_fields_are_refused(probe: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProbeSpec.parse(probe)


def test_a_fresh_kubelets_prober_waits_its_first_delay_then_probes_and_ticks() -> None:
    """As kubelet's worker.run: after the random first delay one probe, then the probe a pod
    sync asked for during the delay, then the ticker's, a period after the delay."""
    times: list[float] = []
    results: list[bool] = []
    worker = ProbeWorker(
        ProbeSpec("httpGet", {}, period=1),
        lambda spec, timeout: times.append(time.monotonic()),
        on_result=results.append,
        stop=threading.Event(),
        first_delay=0.4,
    )
    t0 = time.monotonic()
    worker.container_started(t0)  # asks for a probe at once: it waits for the delay
    worker.start()
    time.sleep(1.7)
    worker.halt()
    assert len(times) == 3, [round(t - t0, 2) for t in times]
    assert times[0] - t0 >= 0.4 and times[1] - times[0] < 0.2
    assert 0.9 <= times[2] - times[0] <= 1.2
    assert results == [True] and worker.ready
