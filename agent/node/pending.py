"""Which pod's condition to write next: priority classes, FIFO within a class (pure; the
:class:`~agent.node.reporter.ConditionReporter` holds the lock around it).

A pod is *queued* (its condition is to be checked and maybe written), *busy* (a writer has it:
no other writer takes it until it is done, so one pod's writes never overlap or reorder) or
*waiting to retry* after a transient error. A pod can be queued and busy at once: its desired
condition changed while a writer had it; it is taken again once that writer is done, and the
writer then reads the newest desired condition, so the latest always wins.

The classes (:class:`Priority`) put first what someone waits for: a pod entering rotation (the
readiness gate holds its rollout) and a pod being stopped (its drain waits for the LB's
``Deregistered``); then a pod leaving rotation; then the rest (``NotRegistered`` for a pod not
ready yet, ``Registering``: a reason change that neither admits nor removes).
"""

from __future__ import annotations

import enum
from collections import OrderedDict

from agent.model import Condition, Pod, PodKey


class Priority(enum.IntEnum):
    UNBLOCK = 0  # True where the pod is not True (admission), or the pod is being stopped
    REMOVE = 1  # False where the pod is True: out of rotation
    INFO = 2  # the rest: reason changes that do not flip the status, first False


def priority(status: str, pod: Pod | None, current: Condition | None) -> Priority:
    """The class of writing ``status`` onto ``pod`` (None: not in the cache yet), which now
    carries ``current``."""
    if pod is None:
        return Priority.INFO
    if pod.leaving:
        return Priority.UNBLOCK
    was_true = current is not None and current.status == "True"
    if status == "True":
        return Priority.INFO if was_true else Priority.UNBLOCK
    return Priority.REMOVE if was_true else Priority.INFO


class PendingWrites:
    """Queued, busy and retrying pods. Each queued or retrying pod keeps the monotonic time it
    became pending (``since``), for the queue-wait metric."""

    def __init__(self) -> None:
        self._queues: tuple[OrderedDict[PodKey, float], ...] = tuple(
            OrderedDict() for _ in Priority
        )
        self._class: dict[PodKey, Priority] = {}
        self._busy: set[PodKey] = set()
        self._retry: dict[PodKey, tuple[float, float, Priority]] = {}  # at, since, class

    def __len__(self) -> int:
        """Pods queued, waiting to retry or being written (each counted once)."""
        return len(self._class.keys() | self._retry.keys() | self._busy)

    def queued(self) -> int:
        return len(self._class)

    def add(self, key: PodKey, cls: Priority, now: float) -> None:
        """Queue ``key`` (at the end of ``cls``); one already queued keeps its place and its
        ``since`` unless its class changed (then it goes to the end of the new one)."""
        old = self._class.get(key)
        if old == cls:
            return
        if old is not None:
            since = self._queues[old].pop(key)
        elif key in self._retry:
            since = self._retry.pop(key)[1]
        else:
            since = now
        self._queues[cls][key] = since
        self._class[key] = cls

    def take(self) -> tuple[PodKey, float] | None:
        """The first queued pod no writer has, highest class first; it is busy until
        :meth:`done`."""
        for queue in self._queues:
            for key in queue:
                if key not in self._busy:
                    since = queue.pop(key)
                    del self._class[key]
                    self._busy.add(key)
                    return key, since
        return None

    def done(self, key: PodKey) -> None:
        self._busy.discard(key)

    def retry(self, key: PodKey, at: float, since: float, cls: Priority) -> None:
        """Queue ``key`` again at ``at`` (unless it is queued already: a newer condition)."""
        if key not in self._class:
            self._retry[key] = (at, since, cls)

    def due(self, now: float) -> None:
        """Queue the pods whose retry time has come, with their original ``since``."""
        for key, (at, since, cls) in list(self._retry.items()):
            if at <= now:
                del self._retry[key]
                if key not in self._class:
                    self._queues[cls][key] = since
                    self._class[key] = cls

    def next_retry(self) -> float | None:
        return min((at for at, _, _ in self._retry.values()), default=None)

    def remove(self, key: PodKey) -> None:
        """Not queued nor retried any more (a writer that has it finishes its write)."""
        cls = self._class.pop(key, None)
        if cls is not None:
            del self._queues[cls][key]
        self._retry.pop(key, None)

    def order(self) -> list[PodKey]:
        """The queued pods in the order they would be taken (tests, debugging)."""
        return [key for queue in self._queues for key in queue]
