"""Injected time (STYLE.md, principle 9): leases, drains and backoffs are tested without sleeping.

``Clock`` is the real thing; ``FakeClock`` (tests) advances only when told, and wakes waiters.
Durations are judged on the monotonic clock; the wall clock is only for what Kubernetes stores
(timestamps in conditions, Leases and Events).
"""

from __future__ import annotations

import datetime as dt
import threading
import time


class Clock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> dt.datetime:
        """Wall-clock time, UTC, for timestamps written to the API."""
        return dt.datetime.now(dt.UTC)

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Wait for ``event`` at most ``timeout`` seconds; True if it was set."""
        return event.wait(max(0.0, timeout))

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


def relay(source: threading.Event, target: threading.Event, name: str) -> None:
    """Set ``target`` once ``source`` is set (a daemon thread): a worker that sleeps on its own
    wake-up event then also wakes for ``source`` (its stop), not a period later."""

    def body() -> None:
        source.wait()
        target.set()

    threading.Thread(target=body, name=name, daemon=True).start()


class FakeClock(Clock):
    """Time that moves only with :meth:`advance`. ``wait`` returns when the event is set or the
    fake time reaches the deadline."""

    def __init__(self, start: float = 1000.0) -> None:
        self._t = start
        self._wall = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        self._cond = threading.Condition()

    def monotonic(self) -> float:
        with self._cond:
            return self._t

    def now(self) -> dt.datetime:
        with self._cond:
            return self._wall + dt.timedelta(seconds=self._t)

    def advance(self, seconds: float) -> None:
        with self._cond:
            self._t += seconds
            self._cond.notify_all()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        with self._cond:
            deadline = self._t + timeout
            while not event.is_set() and self._t < deadline:
                self._cond.wait(0.01)  # also polls the event, which has its own lock
            return event.is_set()

    def sleep(self, seconds: float) -> None:
        self.wait(threading.Event(), seconds)
