"""The drain: hold a terminating pod's preStop hook exactly as long as needed.

The hook returns as soon as (1) the LB confirms it sends the pod nothing more
(``podlb.io/lb-ready`` False with reason ``Deregistered``; skipped for pods the LB does not
manage) and (2) the pod has gone quiet on its serving ports: no established connection left,
or every one idle (no byte received) for ``quiet_s``, read from tcp_info with sock_diag — so
an idle keep-alive connection does not hold the pod; the app's own SIGTERM handling closes
those. Or when the drain timeout ends. ``decide`` is the pure part; ``DrainManager`` does the
I/O and serves every caller (the in-pod listener, the node API, ``podlb-agent drain``).
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.clock import Clock
from agent.errors import NamespaceGone, NotFound, PodlbError
from agent.model import LB_READY, Pod, PodKey, Service

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = "podlb.io/drain-timeout"
GRACE_MARGIN_S = 3.0  # default drain timeout: the grace period less this (kubelet needs time)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


class Outcome(enum.StrEnum):
    DRAINED = "drained"
    TIMEOUT = "timeout"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Activity:
    """One established connection on a serving port: how long since its peer sent data."""

    port: int
    idle_ms: int


@dataclass(frozen=True, slots=True)
class Step:
    done: bool
    outcome: Outcome | None
    waiting_for: str  # what the drain still waits for (or why it ended)


def parse_duration(value: str) -> float | None:
    """``"25"``, ``"25s"``, ``"1500ms"``, ``"2m"`` -> seconds; None if malformed."""
    m = _DURATION.match(value)
    if not m:
        return None
    n = float(m.group(1))
    return {"ms": n / 1000, "m": n * 60}.get(m.group(2) or "s", n)


def drain_timeout_s(pod: Pod, services: Iterable[Service]) -> tuple[float, str | None]:
    """The pod's drain timeout (pod annotation, else a selecting Service's, else the grace
    period less a margin) and a problem message when an annotation is malformed."""
    grace = float(pod.deletion_grace_s if pod.deletion_grace_s is not None else pod.grace_period_s)
    default = max(1.0, grace - GRACE_MARGIN_S)
    sources = [("pod", pod.annotation(DRAIN_TIMEOUT))]
    sources += [
        (f"service {s.name}", s.annotation(DRAIN_TIMEOUT)) for s in services if s.selects(pod)
    ]
    for where, raw in sources:
        if raw is None:
            continue
        parsed = parse_duration(raw)
        if parsed is None:
            return (
                default,
                f"{DRAIN_TIMEOUT} on {where}: {raw!r} is not a duration; using {default:g}s",
            )
        return min(parsed, grace), None  # never past the grace period: kubelet kills then
    return default, None


def drain_started(pod: Pod, fallback: dt.datetime) -> dt.datetime:
    """When the deletion began: deletionTimestamp less the deletion grace period."""
    if pod.deletion_timestamp and pod.deletion_grace_s is not None:
        try:
            end = dt.datetime.fromisoformat(pod.deletion_timestamp.replace("Z", "+00:00"))
        except ValueError:
            return fallback
        return end - dt.timedelta(seconds=pod.deletion_grace_s)
    return fallback


def lb_managed(pod: Pod) -> bool:
    """Whether an LB decision is to be waited for: the pod has our gate or our condition."""
    return LB_READY in pod.readiness_gates or pod.condition(LB_READY) is not None


def decide(
    pod: Pod,
    connections: list[Activity] | None,
    serving_ports: frozenset[int],
    *,
    quiet_s: float,
    elapsed_s: float,
    timeout_s: float,
) -> Step:
    """One look at a draining pod (pure). ``connections`` None: the namespace is gone."""
    waits: list[str] = []
    if lb_managed(pod):
        cond = pod.condition(LB_READY)
        if cond is None or cond.reason != "Deregistered":
            state = f"{cond.status}/{cond.reason}" if cond else "none"
            waits.append(f"the LB to deregister the pod (lb-ready {state})")
    if connections is not None:
        quiet_ms = int(quiet_s * 1000)
        busy = [c for c in connections if c.port in serving_ports and c.idle_ms < quiet_ms]
        if busy:
            waits.append(f"{len(busy)} active connection(s) on port(s) "
                         f"{','.join(str(p) for p in sorted({c.port for c in busy}))}")  # fmt: skip
    if not waits:
        return Step(True, Outcome.DRAINED, "the LB dropped the pod and it is quiet")
    if elapsed_s >= timeout_s:
        return Step(True, Outcome.TIMEOUT, "drain timeout; was waiting for " + "; ".join(waits))
    return Step(False, None, "; ".join(waits))


@dataclass(frozen=True, slots=True)
class DrainResult:
    code: int  # HTTP status for the caller
    outcome: Outcome | None
    seconds: float
    message: str


class DrainMetrics:
    def __init__(
        self,
        finished: Callable[[str, float], None] = lambda outcome, s: None,
        started: Callable[[int], None] = lambda connections: None,
        in_flight: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.finished = finished
        self.started = started
        self.in_flight = in_flight


class DrainManager:
    """Serves drain requests; any number of callers for one pod share one drain."""

    def __init__(
        self,
        node_name: str,
        live_pod: Callable[[str, str], Pod],  # from the API server, not the cache (NotFound)
        cached_pod: Callable[[PodKey], Pod | None],
        services: Callable[[], Iterable[Service]],
        netns_of: Callable[[Pod], tuple[tuple[str, ...], int, frozenset[int]] | None],
        activity: Callable[[tuple[str, ...], int], list[Activity]],
        event: Callable[[Pod, str, str, str], None],
        clock: Clock,
        *,
        quiet_s: float = 1.0,
        poll_s: float = 0.2,
        max_concurrent: int = 256,
        metrics: DrainMetrics | None = None,
    ) -> None:
        self.node_name = node_name
        self.live_pod = live_pod
        self.cached_pod = cached_pod
        self.services = services
        self.netns_of = netns_of
        self.activity = activity
        self.event = event
        self.clock = clock
        self.quiet_s = quiet_s
        self.poll_s = poll_s
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.metrics = metrics or DrainMetrics()
        self._lock = threading.Lock()
        self._running: dict[PodKey, tuple[threading.Event, list[DrainResult]]] = {}

    def in_flight(self) -> int:
        with self._lock:
            return len(self._running)

    def drain(self, namespace: str, name: str, stop: threading.Event | None = None) -> DrainResult:
        stop = stop or threading.Event()
        key = PodKey(namespace, name)
        try:
            pod = self.live_pod(namespace, name)
        except NotFound:
            return DrainResult(404, Outcome.REFUSED, 0.0, f"pod {key} not found")
        except PodlbError as exc:
            return DrainResult(503, None, 0.0, f"cannot read pod {key} from the API: {exc}")
        if pod.node_name != self.node_name:
            self.metrics.finished(Outcome.REFUSED.value, 0.0)
            return DrainResult(
                404, Outcome.REFUSED, 0.0, f"pod {key} is not on node {self.node_name}"
            )
        if not pod.terminating:
            self.metrics.finished(Outcome.REFUSED.value, 0.0)
            log.warning("pod=%s: drain refused: the pod is not terminating", key)
            return DrainResult(409, Outcome.REFUSED, 0.0, f"pod {key} is not terminating: refused")
        with self._lock:
            shared = self._running.get(key)
            owner = shared is None
            if owner:
                shared = (threading.Event(), [])
                self._running[key] = shared
                self.metrics.in_flight(len(self._running))
        assert shared is not None
        done, results = shared
        if not owner:
            done.wait()
            return results[0]
        if not self.slots.acquire(blocking=False):
            result = DrainResult(429, None, 0.0, "too many drains in flight on this node")
        else:
            try:
                result = self._hold(pod, stop)
            except Exception as exc:  # never leave a kubelet hook hanging on a bug
                log.exception("pod=%s: drain failed", key)
                result = DrainResult(500, None, 0.0, f"drain failed: {exc}")
            finally:
                self.slots.release()
        with self._lock:
            results.append(result)
            del self._running[key]
            self.metrics.in_flight(len(self._running))
        done.set()
        return result

    def _hold(self, pod: Pod, stop: threading.Event) -> DrainResult:
        key = pod.key
        services = list(self.services())
        timeout, problem = drain_timeout_s(pod, services)
        if problem:
            self.event(pod, "Warning", "BadDrainTimeout", problem)
        now_wall = self.clock.now()
        started = drain_started(pod, now_wall)
        already = max(0.0, (now_wall - started).total_seconds())  # resumed after a restart
        t0 = self.clock.monotonic() - already
        first = True
        while True:
            current = self.cached_pod(key) or pod
            found = self.netns_of(current)
            connections: list[Activity] | None = None
            ports: frozenset[int] = frozenset()
            if found is not None:
                paths, inode, ports = found
                try:
                    connections = self.activity(paths, inode)
                except NamespaceGone:
                    connections = None
            if first:
                self.metrics.started(len([c for c in connections or [] if c.port in ports]))
                log.info("pod=%s: drain started (timeout %.1fs)", key, timeout)
                first = False
            elapsed = self.clock.monotonic() - t0
            step = decide(current, connections, ports, quiet_s=self.quiet_s,
                          elapsed_s=elapsed, timeout_s=timeout)  # fmt: skip
            if step.done:
                assert step.outcome is not None
                self.metrics.finished(step.outcome.value, elapsed)
                log.info(
                    "pod=%s: drain %s after %.2fs: %s", key, step.outcome, elapsed, step.waiting_for
                )
                if step.outcome is Outcome.TIMEOUT:
                    self.event(current, "Warning", "DrainTimeout", step.waiting_for)
                return DrainResult(200, step.outcome, elapsed, step.waiting_for)
            if self.clock.wait(stop, self.poll_s):
                return DrainResult(503, None, elapsed, "the agent is stopping")
