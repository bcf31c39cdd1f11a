"""Where leader-only work runs: one leadership term as the leader work and its LB calls see it.

The elector (``agent.leader.election``) makes a :class:`LeaderScope` when it starts leading,
moves its deadline after each successful renewal and stops it when the term ends; a watchdog
thread stops it once the deadline passes un-renewed, however long an API call hangs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from agent.clock import Clock
from agent.lb.fence import Term


class LeaderScope:
    """Where leader-only work runs. ``stopped`` is set the moment this agent may no longer act
    as the leader; the work must check it (``wait`` is the convenient way) and return.
    ``term`` fences the LB calls of this leadership (see ``agent.lb.fence``)."""

    def __init__(self, identity: str, clock: Clock, deadline: float) -> None:
        self.identity = identity
        self.stopped = threading.Event()
        self.started_at = clock.monotonic()
        self._clock = clock
        self._lock = threading.Lock()
        self._deadline = deadline  # monotonic; past it we may no longer lead
        self._changed = threading.Event()
        self.term = Term(self.is_leading, f"{identity}@{self.started_at:.3f}")

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True (at once) when leadership has ended."""
        return self._clock.wait(self.stopped, seconds)

    def is_leading(self) -> bool:
        with self._lock:
            deadline = self._deadline
        return not self.stopped.is_set() and self._clock.monotonic() < deadline

    # -- used by the elector
    def _extend(self, deadline: float) -> bool:
        """Move the deadline after a successful renewal; False if leadership already ended."""
        with self._lock:
            if self.stopped.is_set() or self._clock.monotonic() >= self._deadline:
                return False
            self._deadline = max(self._deadline, deadline)
        self._changed.set()
        return True

    def _stop(self) -> None:
        with self._lock:
            self.stopped.set()
        self.term.close()  # not under our lock: a fenced call holds the term's, then ours
        self._changed.set()

    def _watch(self, on_expired: Callable[[], None]) -> None:
        """Watchdog thread: calls ``on_expired`` when the deadline passes un-renewed."""
        while not self.stopped.is_set():
            self._changed.clear()
            with self._lock:
                remaining = self._deadline - self._clock.monotonic()
            if remaining <= 0:
                on_expired()
                return
            self._clock.wait(self._changed, remaining)
