"""The rollout scenario's count of podlb's status writes, from the agents' metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from agent.metrics import Metrics
from tests.testbed.rollout import condition_writes, writes_between


def test_written_condition_writes_are_summed_over_agents_by_condition() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.condition_writes.labels("podlb.io/lb-ready", "written").inc(3)
    metrics.condition_writes.labels("podlb.io/lb-ready", "skipped").inc(5)
    metrics.condition_writes.labels("podlb.io/datapath-ready", "written").inc(2)
    text = generate_latest(registry).decode()
    before = condition_writes([text, text])
    assert before == {"podlb.io/lb-ready": 6, "podlb.io/datapath-ready": 4}
    metrics.condition_writes.labels("podlb.io/lb-ready", "written").inc()
    after = condition_writes([generate_latest(registry).decode(), text])
    assert writes_between(before, after) == {"podlb.io/lb-ready": 1, "podlb.io/datapath-ready": 0}
