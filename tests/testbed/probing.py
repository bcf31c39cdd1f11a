"""Readiness probing as the kubelet (v1.28, ``pkg/kubelet/prober``) does it.

One :class:`ProbeWorker` per container with a ``readinessProbe``, a thread of its own:

* created when the pod is admitted; its ticker fires every ``periodSeconds`` from then on (a
  probe that overruns its period makes the ticker drop ticks, as Go's ``time.Ticker`` does).
  A kubelet that started less than ``periodSeconds`` ago first sleeps a random part of the
  period (``first_delay``: the kubelet spreads the probes of the pods it finds at start), then
  probes and starts the ticker; nothing runs meanwhile, not even the probes pod syncs ask for;
* a probe also runs at once when :meth:`ProbeWorker.trigger` is called: the kubelet does so at
  each pod sync while the container is not ready (the first comes with the sync that notices
  the container has started, after the PLEG's relist);
* no probe before the container runs, nor while ``int(seconds since it started) <
  initialDelaySeconds`` (the kubelet compares whole seconds);
* each probe is bounded by ``timeoutSeconds``; ``successThreshold`` consecutive successes make
  the container ready, ``failureThreshold`` consecutive failures unready; a result is reported
  (``on_result``) only when it changes. Before the first report the container is not ready.

Unset or zero fields take the API server's defaults (:data:`DEFAULTS`); a negative or
non-integer value is refused with :class:`ValueError`, as the API server's validation would.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.testbed.handlers import HandlerFailed

log = logging.getLogger(__name__)

Obj = dict[str, Any]
# The API server's defaults for a probe's fields (k8s.io/api core/v1 Probe).
DEFAULTS = {
    "initialDelaySeconds": 0,
    "periodSeconds": 10,
    "timeoutSeconds": 1,
    "successThreshold": 1,
    "failureThreshold": 3,
}
ACTIONS = ("httpGet", "tcpSocket", "exec")


@dataclass(frozen=True)
class ProbeSpec:
    """A validated ``readinessProbe`` with the defaults filled in."""

    action: str  # one of ACTIONS
    handler: Obj
    initial_delay: int = 0
    period: int = 10
    timeout: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def parse(cls, probe: Obj, where: str = "readinessProbe") -> ProbeSpec:
        actions = [a for a in ACTIONS if a in probe]
        if len(actions) != 1:
            raise ValueError(f"{where}: exactly one of {', '.join(ACTIONS)} (got {actions})")
        values: dict[str, int] = {}
        for name, default in DEFAULTS.items():
            v = probe.get(name)
            if v is None or v == 0:
                values[name] = default
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{where}.{name}: a non-negative integer, not {v!r}")
            values[name] = v
        return cls(
            actions[0],
            probe[actions[0]] or {},
            initial_delay=values["initialDelaySeconds"],
            period=values["periodSeconds"],
            timeout=values["timeoutSeconds"],
            success_threshold=values["successThreshold"],
            failure_threshold=values["failureThreshold"],
        )


ProbeFn = Callable[["ProbeSpec", float], None]  # raises on failure; the float is the timeout


@dataclass
class ProbeWorker:
    """The prober of one container; see the module docstring. ``probe(spec, timeout)`` runs the
    action (raising :class:`HandlerFailed` or ``OSError`` on failure); ``on_result(ready)`` is
    called from the worker's thread on each change of the result."""

    spec: ProbeSpec
    probe: ProbeFn
    on_result: Callable[[bool], None]
    stop: threading.Event
    name: str = "probe"
    created: float = field(default_factory=time.monotonic)
    first_delay: float = 0.0  # seconds before the ticker starts (see the module docstring)
    started_at: float | None = None  # the container's start; None: not running
    ready: bool = False
    probes: list[tuple[float, bool]] = field(default_factory=list)  # (t, success) of each run
    _last: bool | None = None
    _run: int = 0
    _manual_at: float | None = None
    _wake: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ProbeWorker:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def container_started(self, at: float) -> None:
        """The container runs since ``at``; the pod sync that notices it (now) runs a probe."""
        self.started_at = at
        self.trigger()

    def container_stopped(self) -> None:
        self.started_at = None

    def trigger(self) -> None:
        """A run now, as a pod sync asks for while the container is not ready (a no-op when
        it is)."""
        if self.ready:
            return
        self._manual_at = time.monotonic()
        self._wake.set()

    def halt(self) -> None:
        self.stop.set()
        self._wake.set()

    def _loop(self) -> None:
        if self.first_delay > 0:
            if self.stop.wait(self.first_delay):
                return
            self.created = time.monotonic()
            try:
                self._probe_once(self.created)
            except Exception:
                log.exception("%s", self.name)
        next_tick = self.created + self.spec.period
        while not self.stop.is_set():
            now = time.monotonic()
            due = min(next_tick, self._manual_at if self._manual_at is not None else math.inf)
            if due > now:
                self._wake.wait(due - now)
                self._wake.clear()
                continue
            if next_tick <= now:  # ticks missed while probing are dropped
                next_tick += self.spec.period * (1 + int((now - next_tick) // self.spec.period))
            if self._manual_at is not None and self._manual_at <= now:
                self._manual_at = None
            try:
                self._probe_once(now)
            except Exception:
                log.exception("%s", self.name)

    def _probe_once(self, now: float) -> None:
        if self.started_at is None:
            return  # not running (yet): the kubelet waits for the container
        if int(now - self.started_at) < self.spec.initial_delay:
            return
        try:
            self.probe(self.spec, float(self.spec.timeout))
            ok = True
        except (HandlerFailed, OSError, ValueError) as e:
            log.debug("%s failed: %r", self.name, e)
            ok = False
        self.probes.append((time.monotonic(), ok))
        if ok == self._last:
            self._run += 1
        else:
            self._last, self._run = ok, 1
        threshold = self.spec.success_threshold if ok else self.spec.failure_threshold
        if self._run >= threshold and ok != self.ready:
            self.ready = ok
            self.on_result(ok)
