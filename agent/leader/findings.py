"""Problems a leader round finds (agent.leader.desired.Finding: bad annotations, a pool the LB
lacks, a provider not configured...) as Warning Events on their object and a metric: each once
while it lasts; one that goes away and comes back is new again."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from agent.errors import PodlbError
from agent.model import Pod, PodKey, Service

from .desired import Finding
from .sinks import EventSink, LeaderMetrics

log = logging.getLogger(__name__)


class Findings:
    def __init__(self, events: EventSink, metrics: LeaderMetrics) -> None:
        self.events = events
        self.metrics = metrics
        self._reported: set[Finding] = set()  # found last round
        self._round: set[Finding] = set()  # found this round so far

    def begin_round(self) -> None:
        self._round = set()

    def end_round(self) -> None:
        self._reported = self._round

    def report(
        self, f: Finding, services: Sequence[Service], pods: Mapping[PodKey, Pod] | None = None
    ) -> None:
        self._round.add(f)
        if f in self._reported:
            return  # reported last round already
        self.metrics.finding(f.problem.value)
        log.warning("leader: %s %s/%s: %s", f.kind, f.namespace, f.name, f.message)
        uid = ""
        if f.kind == "Service":
            key = (f.namespace, f.name)
            uid = next((s.uid for s in services if (s.namespace, s.name) == key), "")
        elif pods is not None:
            pod = pods.get(PodKey(f.namespace, f.name))
            uid = pod.uid if pod else ""
        try:
            self.events.emit_object_event(
                f.kind, f.namespace, f.name, uid, "Warning", f.problem.value, f.message
            )
        except PodlbError as exc:
            log.warning("leader: event not recorded: %s", exc)
