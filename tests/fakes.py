"""In-memory fakes of podlb's own interfaces, shared by the tests (STYLE.md principle 12)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

from agent.model import Condition, Pod, PodKey


class FakeStatusSink:
    """A :class:`agent.node.reporter.StatusSink` in memory: records every condition written
    (in order, and the last per pod) and every Event as ``(name, type, reason)``.

    With ``pods`` it also plays the API server and the informer cache: a write lands on the
    stored pod, and :meth:`lookup` (the reporter's ``lookup``) returns it. ``on_patch`` runs
    inside each write (a slow or blocking API server); the writes in flight are counted, in
    all and per pod. An ``on_patch`` that raises is a write that did not land.
    """

    def __init__(
        self,
        pods: dict[PodKey, Pod] | None = None,
        on_patch: Callable[[PodKey, Condition], None] | None = None,
    ) -> None:
        self.pods = pods if pods is not None else {}
        self.on_patch = on_patch
        self.conditions: dict[PodKey, Condition] = {}
        self.writes: list[tuple[PodKey, Condition]] = []
        self.events: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._in_flight: dict[PodKey, int] = {}
        self.max_in_flight = 0  # writes at once, all pods
        self.max_in_flight_per_pod = 0

    def lookup(self, key: PodKey) -> Pod | None:
        with self._lock:
            return self.pods.get(key)

    def patch_condition(self, key: PodKey, condition: Condition, uid: str) -> None:
        with self._lock:
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
            self.max_in_flight = max(self.max_in_flight, sum(self._in_flight.values()))
            self.max_in_flight_per_pod = max(self.max_in_flight_per_pod, self._in_flight[key])
        try:
            if self.on_patch is not None:
                self.on_patch(key, condition)  # may raise: the write did not land
        finally:
            with self._lock:
                self._in_flight[key] -= 1
        with self._lock:
            self.writes.append((key, condition))
            self.conditions[key] = condition
            pod = self.pods.get(key)
            if pod is not None:
                kept = tuple(c for c in pod.conditions if c.type != condition.type)
                self.pods[key] = replace(pod, conditions=(*kept, condition))

    def emit_event(self, pod: Pod, event_type: str, reason: str, message: str) -> None:
        with self._lock:
            self.events.append((pod.name, event_type, reason))

    def emit_object_event(
        self,
        kind: str,
        namespace: str,
        name: str,
        uid: str,
        event_type: str,
        reason: str,
        message: str,
    ) -> None:
        with self._lock:
            self.events.append((name, event_type, reason))
