"""Pod Events written by one worker, so no caller waits on the API server.

A drain's summary Event must not hold the preStop hook it ends (an API server that is slow or
away would add up to its timeout to every hook): :meth:`EventQueue.emit` only queues, the worker
writes. The queue is bounded (the oldest Event is dropped, and counted in the log, beyond it).
On stop the worker goes on writing for ``flush_s`` at most, while ``busy()`` says producers are
still finishing (drains cut short by the stop record their Event then).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from agent.clock import Clock
from agent.errors import PodlbError
from agent.model import Pod

log = logging.getLogger(__name__)

Emit = Callable[[Pod, str, str, str], None]  # (pod, Normal | Warning, reason, message)


class EventQueue:
    def __init__(
        self,
        emit: Emit,
        clock: Clock,
        *,
        size: int = 256,
        flush_s: float = 2.0,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self._emit = emit
        self.clock = clock
        self.flush_s = flush_s
        self.busy = busy
        self._lock = threading.Lock()
        self._queue: deque[tuple[Pod, str, str, str]] = deque()
        self._size = size
        self._wake = threading.Event()
        self.dropped = 0

    def emit(self, pod: Pod, event_type: str, reason: str, message: str) -> None:
        """Queue an Event (never blocks, never raises)."""
        with self._lock:
            if len(self._queue) >= self._size:
                self._queue.popleft()
                self.dropped += 1
                log.warning("event queue full: dropped the oldest Event (%d so far)", self.dropped)
            self._queue.append((pod, event_type, reason, message))
        self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def run(self, stop: threading.Event) -> None:
        def wake_on_stop() -> None:
            stop.wait()
            self._wake.set()

        threading.Thread(target=wake_on_stop, name="events-stop", daemon=True).start()
        while not stop.is_set():
            self._write_all()
            self.clock.wait(self._wake, 1.0)
            self._wake.clear()
        deadline = self.clock.monotonic() + self.flush_s
        while self.clock.monotonic() < deadline:
            self._write_all()
            if not self.busy() and not self.pending():
                return
            self.clock.wait(self._wake, 0.05)
            self._wake.clear()

    def _write_all(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    return
                pod, event_type, reason, message = self._queue.popleft()
            try:
                self._emit(pod, event_type, reason, message)
            except PodlbError as exc:
                log.warning("pod=%s: Event %s not recorded: %s", pod.key, reason, exc)
