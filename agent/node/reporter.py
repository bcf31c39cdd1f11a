"""The writers of one condition type (STYLE.md principle 5, after Felix's status reporter).

Deciders call :meth:`ConditionReporter.set_desired`; a small pool of writer threads compares the
desired condition with what the pod carries now (from the informer cache), skips no-op writes,
moves ``lastTransitionTime`` only when the status flips, writes under one shared token-bucket
rate limit and emits an Event per transition (Normal or Warning as ``agent.events`` classifies
it) from a thread of its own, so that a pod's next write never waits for the last one's
Event. A 404 means the pod is gone; transient errors retry with backoff. A write shows in the
cache only with its watch event; until then (up to ``ECHO_S``) the pod is not written the same
again on an earlier event of it, but looked at once more when the event should have come.

Several writers, because one status patch is a round trip (10-50 ms, more on a busy API server):
one thread could not reach the rate the bucket allows, and a burst of verdicts (a leader
takeover, a rollout, an LB restart) would queue one behind the other. A pod is written by one
writer at a time and always with its newest desired condition; what is waited for goes first
(:mod:`agent.node.pending`).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.clock import Clock
from agent.errors import NotFound, PodlbError, TransientError
from agent.events import KINDS, Kind, event_type
from agent.model import Condition, Pod, PodKey
from agent.node.eventqueue import EventQueue
from agent.node.pending import PendingWrites, Priority, priority

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Desired:
    uid: str
    status: str  # "True" / "False"
    reason: str
    message: str


class StatusSink(Protocol):
    """Where conditions and events go (the Kubernetes API in production)."""

    def patch_condition(self, key: PodKey, condition: Condition, uid: str) -> None:
        """Only onto the pod ``uid``; ``NotFound`` when ``key`` is gone or another pod now."""
        ...

    def emit_event(self, pod: Pod, event_type: str, reason: str, message: str) -> None: ...


class TokenBucket:
    """Shared by the writers: each takes a token, or a later slot and waits for it."""

    def __init__(self, clock: Clock, rate_per_s: float, burst: int) -> None:
        self.clock = clock
        self.rate = rate_per_s
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = clock.monotonic()
        self._lock = threading.Lock()

    def delay(self) -> float:
        """Take a token; return how long to wait first (0 when one was there)."""
        with self._lock:
            now = self.clock.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            self.tokens -= 1
            return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


WRITE_S = 0.1  # a status patch, 50-100 ms on a busy API server (its Event goes out apart)
MAX_WRITERS = 8
EVENT_BACKLOG = 1000  # Events waiting to be sent; beyond it the oldest is dropped (and logged)
# How long a write may take to show in the informer's cache (its watch event). Until then the
# pod's other events still show the condition from before, and would have it written again.
ECHO_S = 2.0


def writers_for(rate_per_s: float) -> int:
    """Enough writers to reach ``rate_per_s`` at :data:`WRITE_S` a write (2 at least, so one
    slow write does not hold every other pod; :data:`MAX_WRITERS` at most)."""
    return max(2, min(MAX_WRITERS, math.ceil(rate_per_s * WRITE_S)))


def needs_write(desired: Desired, current: Condition | None) -> bool:
    return current is None or (current.status, current.reason) != (desired.status, desired.reason)


def transition_time(desired: Desired, current: Condition | None, now: str) -> str:
    """``lastTransitionTime`` moves only when the status flips (Kubernetes API conventions)."""
    if current is not None and current.status == desired.status and current.last_transition_time:
        return current.last_transition_time
    return now


class ConditionReporter:
    def __init__(
        self,
        condition_type: str,
        sink: StatusSink,
        lookup: Callable[[PodKey], Pod | None],
        clock: Clock,
        *,
        rate_per_s: float = 20.0,
        burst: int = 50,
        writers: int | None = None,  # default: writers_for(rate_per_s)
        on_write: Callable[[str, str], None] | None = None,  # (outcome, reason)
        on_wait: Callable[[float], None] | None = None,  # pending -> written, seconds
        retry_s: float = 1.0,
        echo_s: float = ECHO_S,
    ) -> None:
        self.condition_type = condition_type
        self.sink = sink
        self.lookup = lookup
        self.clock = clock
        self.bucket = TokenBucket(clock, rate_per_s, burst)
        self.writers = writers if writers is not None else writers_for(rate_per_s)
        if self.writers < 1:
            raise ValueError(f"writers must be at least 1, not {self.writers}")
        self.on_write = on_write or (lambda outcome, reason: None)
        self.on_wait = on_wait or (lambda seconds: None)
        self.retry_s = retry_s
        self.echo_s = echo_s
        self._lock = threading.Lock()
        self._desired: dict[PodKey, Desired] = {}
        # pod -> the condition last written and when, until the cache shows it (ECHO_S)
        self._wrote: dict[PodKey, tuple[Desired, float]] = {}
        self._pending = PendingWrites()
        self._wakes: list[threading.Event] = []  # one per running writer
        # Events of the transitions written, sent by their own worker while the writers run
        self._events: EventQueue | None = None

    # -- deciders' side -------------------------------------------------------------------
    def set_desired(self, key: PodKey, desired: Desired) -> None:
        with self._lock:
            if self._desired.get(key) == desired:
                return
            self._desired[key] = desired
        self._queue(key)

    def forget(self, key: PodKey) -> None:
        with self._lock:
            self._desired.pop(key, None)
            self._wrote.pop(key, None)
            self._pending.remove(key)

    def mark_dirty(self, key: PodKey) -> None:
        """The pod changed in the API (someone else may have written our condition)."""
        with self._lock:  # the leader calls this on every pod's events: most are not ours
            if key not in self._desired:
                return
        self._queue(key)

    def resync(self) -> None:
        for key in self.keys():
            self._queue(key)

    def desired(self, key: PodKey) -> Desired | None:
        with self._lock:
            return self._desired.get(key)

    def keys(self) -> set[PodKey]:
        with self._lock:
            return set(self._desired)

    def pending(self) -> int:
        """Pods whose condition is queued to be checked or written, waiting to retry, or
        being written."""
        with self._lock:
            return len(self._pending)

    def _queue(self, key: PodKey) -> None:
        pod = self.lookup(key)  # outside the lock: the cache has its own
        now = self.clock.monotonic()
        with self._lock:
            desired = self._desired.get(key)  # the newest, whoever set it
            if desired is None:
                return
            self._pending.add(key, self._priority(desired, pod), now)
        self._notify()

    def _priority(self, desired: Desired, pod: Pod | None) -> Priority:
        if pod is None or pod.uid != desired.uid:
            return priority(desired.status, None, None)
        return priority(desired.status, pod, pod.condition(self.condition_type))

    def _notify(self) -> None:
        for wake in self._wakes:
            wake.set()

    # -- the writers ----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Run :attr:`writers` writer threads until ``stop``; an unexpected exception in one
        stops the others and is raised here."""
        halt = threading.Event()
        failed: list[BaseException] = []
        self._wakes = [threading.Event() for _ in range(self.writers)]

        def end() -> None:
            halt.set()
            self._notify()

        def writer(wake: threading.Event) -> None:
            try:
                self._work(halt, wake)
            except BaseException as exc:
                failed.append(exc)
                end()

        def on_stop() -> None:
            stop.wait()
            end()

        threading.Thread(target=on_stop, name="reporter-stop", daemon=True).start()
        name = threading.current_thread().name
        threads = [
            threading.Thread(target=writer, args=(wake,), name=f"{name}-{i}", daemon=True)
            for i, wake in enumerate(self._wakes)
        ]
        events = EventQueue(self.sink.emit_event, self.clock, size=EVENT_BACKLOG)
        events_done = threading.Event()
        sender = threading.Thread(
            target=events.run, args=(events_done,), name=f"{name}-events", daemon=True
        )
        self._events = events
        sender.start()
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        finally:
            self._events = None
            events_done.set()  # what is queued goes out for up to flush_s more
        sender.join(timeout=5)
        if failed:
            raise failed[0]

    def _work(self, halt: threading.Event, wake: threading.Event) -> None:
        while not halt.is_set():
            taken = self._take()
            if taken is None:
                self.clock.wait(wake, self._idle_wait())
                wake.clear()  # then look again: nothing set before the clear is missed
                continue
            key, since = taken
            try:
                self.write_one(key, halt, since)
            finally:
                self._done(key)

    def write_queued(self) -> int:
        """Write every queued pod now, in this thread and in the writers' order (pods waiting
        to retry stay so); the number taken."""
        n = 0
        while (taken := self._take()) is not None:
            key, since = taken
            try:
                self.write_one(key, since=since)
            finally:
                self._done(key)
            n += 1
        return n

    def _take(self) -> tuple[PodKey, float] | None:
        now = self.clock.monotonic()
        with self._lock:
            self._pending.due(now)
            return self._pending.take()

    def _done(self, key: PodKey) -> None:
        with self._lock:
            self._pending.done(key)
            more = self._pending.queued() > 0
        if more:  # a newer condition of this pod, queued while it was being written
            self._notify()

    def _idle_wait(self) -> float:
        with self._lock:
            at = self._pending.next_retry()
        return 1.0 if at is None else max(0.0, at - self.clock.monotonic())

    def _plan(self, key: PodKey) -> tuple[Desired, Pod, Condition | None] | None:
        """What to write onto ``key`` now: its newest desired condition, if the pod (the same
        one) does not carry it yet."""
        desired = self.desired(key)
        pod = self.lookup(key)
        if desired is None:
            return None
        if pod is None or pod.uid != desired.uid:
            return None  # pod gone or replaced by a namesake: the decider will say what it wants
        current = pod.condition(self.condition_type)
        if not needs_write(desired, current):
            with self._lock:
                self._wrote.pop(key, None)  # the cache shows it
            self.on_write("skipped", desired.reason)
            return None
        return desired, pod, current

    def _echo_due(self, key: PodKey, desired: Desired) -> float | None:
        """When the cache should show this very condition, written by us less than
        :attr:`echo_s` ago (its watch event is on the way; the pod's other events show the
        condition from before); None when it was not, or should show it by now."""
        with self._lock:
            wrote = self._wrote.get(key)
        if wrote is None or wrote[0] != desired:
            return None
        at = wrote[1] + self.echo_s
        return at if at > self.clock.monotonic() else None

    def write_one(
        self, key: PodKey, stop: threading.Event | None = None, since: float | None = None
    ) -> None:
        """Write ``key``'s condition if it differs from what the pod carries (``since``: when
        it became pending, for :attr:`on_wait`)."""
        planned = self._plan(key)
        if planned is None:
            return
        if (echo := self._echo_due(key, planned[0])) is not None:
            # Not written twice: looked at again once its event should have come (if someone
            # else changed the condition meanwhile, it is written then).
            with self._lock:
                cls = self._priority(planned[0], planned[1])
                self._pending.retry(
                    key, echo, self.clock.monotonic() if since is None else since, cls
                )
            self.on_write("deferred", planned[0].reason)
            return
        delay = self.bucket.delay()
        if delay > 0:
            if stop is None:
                self.clock.sleep(delay)
            elif self.clock.wait(stop, delay):
                return
            planned = self._plan(key)  # the newest desired condition wins
            if planned is None:
                return
        desired, pod, current = planned
        cond = Condition(
            type=self.condition_type,
            status=desired.status,
            reason=desired.reason,
            message=desired.message,
            last_transition_time=transition_time(desired, current, _rfc3339(self.clock)),
        )
        try:
            self.sink.patch_condition(key, cond, desired.uid)
        except NotFound:
            self.on_write("gone", desired.reason)
            self.forget(key)
            return
        except TransientError as exc:
            self.on_write("error", desired.reason)
            log.warning("pod=%s: writing %s failed: %s; will retry", key, self.condition_type, exc)
            now = self.clock.monotonic()
            with self._lock:
                retry_cls = self._priority(desired, pod)
                self._pending.retry(
                    key, now + self.retry_s, now if since is None else since, retry_cls
                )
            return
        except PodlbError as exc:
            self.on_write("error", desired.reason)
            log.error("pod=%s: writing %s refused: %s", key, self.condition_type, exc)
            return
        with self._lock:
            if self._desired.get(key) == desired:  # (not forgotten while it was written)
                self._wrote[key] = (desired, self.clock.monotonic())
        self.on_write("written", desired.reason)
        if since is not None:
            self.on_wait(self.clock.monotonic() - since)
        log.info(
            "pod=%s: %s=%s reason=%s (%s)",
            key,
            self.condition_type,
            desired.status,
            desired.reason,
            desired.message,
        )
        self._emit_event(key, pod, desired, current)

    def _emit_event(
        self, key: PodKey, pod: Pod, desired: Desired, current: Condition | None
    ) -> None:
        """The transition's Event: handed to the Event thread while the writers run (the
        pod's next write need not wait for it), else sent at once."""
        flipped = current is None or current.status != desired.status
        if not (flipped or (current is not None and current.reason != desired.reason)):
            return
        event = (
            pod,
            event_type(
                self.condition_type,
                desired.reason,
                was_ready=current is not None and current.status == "True",
                stopping=pod.leaving,
            ),
            _event_reason(self.condition_type, desired),
            f"{self.condition_type}={desired.status} ({desired.reason}): {desired.message}",
        )
        events = self._events
        if events is not None:
            events.emit(*event)
            return
        try:
            self.sink.emit_event(*event)
        except PodlbError as exc:
            log.warning("pod=%s: event not recorded: %s", key, exc)


def _event_reason(condition_type: str, desired: Desired) -> str:
    """``DatapathReadyNotListening``, ``LbReadyTrue``; a True that is a problem keeps its
    reason (``LbReadyGateTimeoutAdmitted``: in rotation without the LB's confirmation)."""
    short = condition_type.split("/")[-1].title().replace("-", "")  # DatapathReady
    problem = KINDS.get((condition_type, desired.reason)) is Kind.PROBLEM
    return f"{short}{'True' if desired.status == 'True' and not problem else desired.reason}"


def _rfc3339(clock: Clock) -> str:
    return clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
