"""The single writer of one condition type (STYLE.md principle 5, after Felix's status reporter).

Deciders call :meth:`ConditionReporter.set_desired`; the writer thread compares the desired
condition with what the pod carries now (from the informer cache), skips no-op writes, moves
``lastTransitionTime`` only when the status flips, writes under a token-bucket rate limit and
emits an Event per transition (Normal or Warning as ``agent.events`` classifies it). A 404
means the pod is gone; transient errors retry with backoff.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.clock import Clock, relay
from agent.errors import NotFound, PodlbError, TransientError
from agent.events import KINDS, Kind, event_type
from agent.model import Condition, Pod, PodKey

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
    def __init__(self, clock: Clock, rate_per_s: float, burst: int) -> None:
        self.clock = clock
        self.rate = rate_per_s
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = clock.monotonic()

    def delay(self) -> float:
        """Take a token; return how long to wait first (0 when one was there)."""
        now = self.clock.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


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
        on_write: Callable[[str, str], None] | None = None,  # (outcome, reason)
        retry_s: float = 1.0,
    ) -> None:
        self.condition_type = condition_type
        self.sink = sink
        self.lookup = lookup
        self.clock = clock
        self.bucket = TokenBucket(clock, rate_per_s, burst)
        self.on_write = on_write or (lambda outcome, reason: None)
        self.retry_s = retry_s
        self._lock = threading.Lock()
        self._desired: dict[PodKey, Desired] = {}
        self._dirty: OrderedDict[PodKey, None] = OrderedDict()  # FIFO: fair to every pod
        self._retry_at: dict[PodKey, float] = {}
        self._wake = threading.Event()

    # -- deciders' side -------------------------------------------------------------------
    def set_desired(self, key: PodKey, desired: Desired) -> None:
        with self._lock:
            if self._desired.get(key) == desired:
                return
            self._desired[key] = desired
            self._dirty[key] = None
        self._wake.set()

    def forget(self, key: PodKey) -> None:
        with self._lock:
            self._desired.pop(key, None)
            self._dirty.pop(key, None)
            self._retry_at.pop(key, None)

    def mark_dirty(self, key: PodKey) -> None:
        """The pod changed in the API (someone else may have written our condition)."""
        with self._lock:
            if key in self._desired:
                self._dirty[key] = None
        self._wake.set()

    def resync(self) -> None:
        with self._lock:
            for key in self._desired:
                self._dirty[key] = None
        self._wake.set()

    def desired(self, key: PodKey) -> Desired | None:
        with self._lock:
            return self._desired.get(key)

    def keys(self) -> set[PodKey]:
        with self._lock:
            return set(self._desired)

    def pending(self) -> int:
        with self._lock:
            return len(self._dirty)

    # -- the writer -----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        relay(stop, self._wake, "reporter-stop")  # idle, it waits on _wake: wake it to stop
        while not stop.is_set():
            key = self._next_key()
            if key is None:
                self.clock.wait(self._wake, self._idle_wait())
                self._wake.clear()
                continue
            self.write_one(key)

    def _idle_wait(self) -> float:
        with self._lock:
            if not self._retry_at:
                return 1.0
            return max(0.0, min(self._retry_at.values()) - self.clock.monotonic())

    def _next_key(self) -> PodKey | None:
        now = self.clock.monotonic()
        with self._lock:
            for key in list(self._retry_at):
                if self._retry_at[key] <= now:
                    del self._retry_at[key]
                    if key in self._desired:
                        self._dirty[key] = None
            if not self._dirty:
                return None
            key, _ = self._dirty.popitem(last=False)
            return key

    def write_one(self, key: PodKey) -> None:
        """Write ``key``'s condition if it differs from what the pod carries."""
        desired = self.desired(key)
        pod = self.lookup(key)
        if desired is None:
            return
        if pod is None or pod.uid != desired.uid:
            return  # pod gone or replaced by a namesake: the decider will say what it wants
        current = pod.condition(self.condition_type)
        if not needs_write(desired, current):
            self.on_write("skipped", desired.reason)
            return
        delay = self.bucket.delay()
        if delay > 0:
            self.clock.sleep(delay)
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
            with self._lock:
                self._retry_at[key] = self.clock.monotonic() + self.retry_s
            return
        except PodlbError as exc:
            self.on_write("error", desired.reason)
            log.error("pod=%s: writing %s refused: %s", key, self.condition_type, exc)
            return
        self.on_write("written", desired.reason)
        flipped = current is None or current.status != desired.status
        log.info(
            "pod=%s: %s=%s reason=%s (%s)",
            key,
            self.condition_type,
            desired.status,
            desired.reason,
            desired.message,
        )
        if flipped or (current is not None and current.reason != desired.reason):
            try:
                self.sink.emit_event(
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
