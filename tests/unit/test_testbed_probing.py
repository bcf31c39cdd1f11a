"""The testbed kubelet's probe settings: the API's defaults and validation."""

from __future__ import annotations

from typing import Any

import pytest

from tests.testbed.probing import ProbeSpec

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
