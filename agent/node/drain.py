"""The drain: hold a terminating pod's preStop hook exactly as long as needed.

The hook returns as soon as (1) the LB confirms it sends the pod nothing more
(``podlb.io/lb-ready`` False with reason ``Deregistered``; skipped for pods the LB does not
manage) and (2) the pod has gone quiet on its serving ports: no established connection left,
or every one idle (no byte received) for ``quiet_s``, read from tcp_info with sock_diag — so
an idle keep-alive connection does not hold the pod; the app's own SIGTERM handling closes
those. Or when the drain timeout ends. ``admit`` and ``decide`` are the pure parts;
``DrainManager`` does the I/O and serves every caller (the in-pod listener, the node API,
``podlb-agent drain``).

Who may be drained (``admit``): a pod on this node that is being stopped -- deleted through
the API (``deletionTimestamp``), or stopped by its kubelet without an API deletion
(node-pressure eviction, graceful node shutdown: the kubelet marks the pod
``DisruptionTarget=True`` reason ``TerminationByKubelet`` before it runs the preStop hooks).
Both marks are written only by the API server or by holders of ``pods/status`` (the node's
kubelet): a caller cannot make a live pod drainable, so a drain request for a live pod is
refused. The request is checked against the informer's cache first; a pod the cache does not
show as stopping is re-read from the cache for ``announce_wait_s`` (the kubelet's status write
and the watch may trail its hook call) and then once from the API before it is refused.
"""

from __future__ import annotations

import enum
import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent.clock import Clock
from agent.errors import NamespaceGone, NotFound, PodlbError
from agent.model import LB_READY, Pod, PodKey, Service, Verdict

from .drainlog import NO_SERVICE, DrainRecord, Tally, service_label, summary, tally

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = "podlb.io/drain-timeout"
GRACE_MARGIN_S = 3.0  # default drain timeout: the grace period less this (kubelet needs time)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


class Outcome(enum.StrEnum):
    """How a drain ended (the record's ``outcome``, a metric label)."""

    DRAINED = "deregistered+quiet"  # ended on the signals: the LB confirmed, the pod is quiet
    TIMEOUT = "timeout"
    AGENT_SHUTDOWN = "agent-shutdown"  # the agent stopped while it held the hook
    REFUSED = "refused"


class Admission(enum.StrEnum):
    """Why a drain request is taken or refused (log lines and messages)."""

    DELETED = "Deleted"  # deletionTimestamp: deleted through the API
    STOPPED_BY_KUBELET = "TerminationByKubelet"  # eviction or graceful node shutdown
    NOT_STOPPING = "NotTerminating"
    OTHER_NODE = "OtherNode"


def admit(pod: Pod, node_name: str) -> Verdict[Admission]:
    """Whether a drain of ``pod`` may start on ``node_name`` (pure)."""
    if pod.node_name != node_name:
        return Verdict(False, Admission.OTHER_NODE, f"pod {pod.key} is not on node {node_name}")
    if pod.terminating:
        return Verdict(True, Admission.DELETED, "deleted")
    if pod.stopped_by_kubelet:
        return Verdict(True, Admission.STOPPED_BY_KUBELET, "stopped by its kubelet")
    return Verdict(
        False,
        Admission.NOT_STOPPING,
        f"pod {pod.key} is not terminating (no deletionTimestamp, no DisruptionTarget "
        "TerminationByKubelet): refused",
    )


@dataclass(frozen=True, slots=True)
class Activity:
    """One established connection on a serving port: how long since its peer sent data."""

    port: int
    idle_ms: int
    peer: str = ""  # "address:port" of the other end
    bytes_received: int | None = None  # tcpi_bytes_received (None: the kernel does not say)

    @property
    def key(self) -> tuple[int, str]:
        return self.port, self.peer


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


class DeletionsSeen:
    """When this node first saw each pod terminating, on its monotonic clock (fed by the node's
    pod informer). Drains count from there, never from ``deletionTimestamp`` against the
    node's wall clock: that mixes the API server's clock with ours, and a node clock running
    ahead cut drains short. A restarted agent counts from when it first saw the pod."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: dict[PodKey, tuple[str, float]] = {}  # key -> (uid, monotonic)

    def observe(self, key: PodKey, pod: Pod | None) -> None:
        """A change of the pod at ``key`` (None: gone)."""
        with self._lock:
            if pod is None or not pod.terminating:
                self._seen.pop(key, None)
            elif self._seen.get(key, ("", 0.0))[0] != pod.uid:
                self._seen[key] = (pod.uid, self.clock.monotonic())

    def first_seen(self, pod: Pod) -> float | None:
        with self._lock:
            uid, at = self._seen.get(pod.key, ("", 0.0))
        return at if uid == pod.uid else None


def lb_managed(pod: Pod) -> bool:
    """Whether an LB decision is to be waited for: the pod has our gate or our condition."""
    return LB_READY in pod.readiness_gates or pod.condition(LB_READY) is not None


def deregistered(pod: Pod) -> bool:
    """The LB confirms it sends the pod nothing more (or no LB manages the pod)."""
    cond = pod.condition(LB_READY)
    return not lb_managed(pod) or (cond is not None and cond.reason == "Deregistered")


def decide(
    pod: Pod,
    connections: list[Activity] | None,
    serving_ports: frozenset[int],
    *,
    quiet_s: float,
    elapsed_s: float,
    timeout_s: float,
    unread: bool = False,
) -> Step:
    """One look at a draining pod (pure). ``connections`` None: the namespace is gone;
    ``unread``: they could not be read this time (a netlink error), so they may be busy."""
    waits: list[str] = []
    if lb_managed(pod):
        cond = pod.condition(LB_READY)
        if cond is None or cond.reason != "Deregistered":
            state = f"{cond.status}/{cond.reason}" if cond else "none"
            waits.append(f"the LB to deregister the pod (lb-ready {state})")
    if unread:
        waits.append("its connections to be read (the last read failed)")
    elif connections is not None:
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


# How each way a held drain ends is told on the pod (agent/events.py lists them with README).
_EVENTS = {
    Outcome.DRAINED: ("Normal", "Drained"),
    Outcome.TIMEOUT: ("Warning", "DrainTimeout"),
    Outcome.AGENT_SHUTDOWN: ("Warning", "DrainAgentShutdown"),
}


@dataclass(frozen=True, slots=True)
class DrainResult:
    code: int  # HTTP status for the caller
    outcome: Outcome | None
    seconds: float
    message: str


class DrainMetrics:
    """Hooks into agent/metrics.py; each finished drain is a :class:`DrainRecord` (on_record)."""

    def __init__(
        self,
        started: Callable[[int], None] = lambda connections: None,
        in_flight: Callable[[int], None] = lambda n: None,
        read_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.started = started
        self.in_flight = in_flight
        self.read_error = read_error


@dataclass
class _Shared:
    """One pod's drain and every caller waiting for it."""

    waiters: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    result: DrainResult | None = None


class DrainManager:
    """Serves drain requests; any number of callers for one pod share one drain (and one
    admission), at most ``max_waiters_per_pod`` of them at a time. Each drain and each refusal
    ends in a :class:`DrainRecord` handed to ``on_record``; each drain also in an Event on the
    pod with its summary (Normal ``Drained``, Warning ``DrainTimeout`` or
    ``DrainAgentShutdown``)."""

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
        max_waiters_per_pod: int = 8,
        announce_wait_s: float = 5.0,
        api_reads: int = 4,
        metrics: DrainMetrics | None = None,
        on_record: Callable[[DrainRecord], None] = lambda record: None,
        first_seen: Callable[[Pod], float | None] | None = None,  # DeletionsSeen.first_seen
    ) -> None:
        self.node_name = node_name
        self.first_seen = first_seen or (lambda pod: None)
        self.live_pod = live_pod
        self.cached_pod = cached_pod
        self.services = services
        self.netns_of = netns_of
        self.activity = activity
        self.event = event
        self.clock = clock
        self.quiet_s = quiet_s
        self.poll_s = poll_s
        self.max_waiters_per_pod = max_waiters_per_pod
        self.announce_wait_s = announce_wait_s
        self.slots = threading.BoundedSemaphore(max_concurrent)
        # Live API reads in flight at once (requests the cache cannot answer): a flood of
        # requests for made-up pods costs the API server at most this many GETs at a time.
        self.api_reads = threading.BoundedSemaphore(api_reads)
        self.metrics = metrics or DrainMetrics()
        self.on_record = on_record
        self._lock = threading.Lock()
        self._running: dict[PodKey, _Shared] = {}
        self._holding = 0  # drains admitted and being held

    def in_flight(self) -> int:
        """Drains being held right now (admitted, not finished)."""
        with self._lock:
            return self._holding

    def requests(self) -> int:
        """Pods with a drain request being served (admitted or being checked)."""
        with self._lock:
            return len(self._running)

    def wait_idle(self, timeout_s: float, stop: threading.Event) -> int:
        """Wait until no drain request is being served (those that come meanwhile included),
        ``timeout_s`` at most or until ``stop``; returns how many still are. The agent's
        shutdown waits here, so drains in progress end by their own criteria."""
        deadline = self.clock.monotonic() + timeout_s
        while self.requests() and (left := deadline - self.clock.monotonic()) > 0:
            if self.clock.wait(stop, min(self.poll_s, left)):
                break
        return self.requests()

    def drain(self, namespace: str, name: str, stop: threading.Event | None = None) -> DrainResult:
        stop = stop or threading.Event()
        key = PodKey(namespace, name)
        with self._lock:
            shared = self._running.get(key)
            owner = shared is None
            if shared is None:
                shared = self._running[key] = _Shared()
            elif shared.waiters >= self.max_waiters_per_pod:
                return DrainResult(
                    429, None, 0.0, f"too many callers waiting for the drain of {key}"
                )
            shared.waiters += 1
        if not owner:
            shared.done.wait()
            with self._lock:
                shared.waiters -= 1
            assert shared.result is not None
            return shared.result
        try:
            result = self._admit_and_hold(key, stop)
        except Exception as exc:  # never leave a kubelet hook hanging on a bug
            log.exception("pod=%s: drain failed", key)
            result = DrainResult(500, None, 0.0, f"drain failed: {exc}")
        with self._lock:
            shared.result = result
            shared.waiters -= 1
            del self._running[key]
        shared.done.set()
        return result

    def _admit_and_hold(self, key: PodKey, stop: threading.Event) -> DrainResult:
        found = self._admitted(key, stop)
        if isinstance(found, DrainResult):
            return found
        if not self.slots.acquire(blocking=False):
            return DrainResult(429, None, 0.0, "too many drains in flight on this node")
        with self._lock:
            self._holding += 1
            self.metrics.in_flight(self._holding)
        try:
            return self._hold(found, stop)
        finally:
            with self._lock:
                self._holding -= 1
                self.metrics.in_flight(self._holding)
            self.slots.release()

    def _admitted(self, key: PodKey, stop: threading.Event) -> Pod | DrainResult:
        """The pod if it may be drained, else the refusal. The cache first; one that does not
        show the pod stopping is watched for ``announce_wait_s``, then asked of the API."""
        pod = self.cached_pod(key)
        if pod is not None and pod.node_name == self.node_name:
            deadline = self.clock.monotonic() + self.announce_wait_s
            while not admit(pod, self.node_name).ready and self.clock.monotonic() < deadline:
                if self.clock.wait(stop, self.poll_s):
                    return DrainResult(503, None, 0.0, "the agent is stopping")
                pod = self.cached_pod(key) or pod
            if admit(pod, self.node_name).ready:
                return pod
        if not self.api_reads.acquire(blocking=False):
            return DrainResult(503, None, 0.0, f"cannot check pod {key} now: too many requests")
        try:
            pod = self.live_pod(key.namespace, key.name)
        except NotFound:
            return self._refuse(key, None, 404, f"pod {key} not found")
        except PodlbError as exc:
            return DrainResult(503, None, 0.0, f"cannot read pod {key} from the API: {exc}")
        finally:
            self.api_reads.release()
        verdict = admit(pod, self.node_name)
        if verdict.ready:
            return pod
        if verdict.reason is Admission.OTHER_NODE:
            return self._refuse(key, pod, 404, verdict.message)
        log.warning("pod=%s: drain refused: %s", key, verdict.reason)
        return self._refuse(key, pod, 409, verdict.message)

    def _refuse(self, key: PodKey, pod: Pod | None, code: int, message: str) -> DrainResult:
        """A refusal, recorded (no Event: anyone may ask, an Event each time would be spam)."""
        self.on_record(
            DrainRecord(
                key.namespace, key.name, pod.uid if pod else "",
                service_label(pod, self.services()) if pod else NO_SERVICE,
                Outcome.REFUSED.value, self._stamp(), 0.0, None, None, None, None, None, message,
            )
        )  # fmt: skip
        return DrainResult(code, Outcome.REFUSED, 0.0, message)

    def _stamp(self) -> str:
        return self.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")

    def _finish(
        self, pod: Pod, service: str, outcome: Outcome, elapsed: float, looked: Tally, message: str
    ) -> None:
        """Record a drain that was held, and tell the pod how it went."""
        record = DrainRecord(
            pod.namespace, pod.name, pod.uid, service, outcome.value, self._stamp(), elapsed,
            looked.since_s if lb_managed(pod) else None, looked.at_reference, looked.last,
            looked.new, looked.bytes, message,
        )  # fmt: skip
        self.on_record(record)
        kind, reason = _EVENTS[outcome]
        try:
            self.event(pod, kind, reason, summary(record))
        except PodlbError as exc:
            log.warning("pod=%s: drain event not recorded: %s", pod.key, exc)

    def _hold(self, pod: Pod, stop: threading.Event) -> DrainResult:
        key = pod.key
        services = list(self.services())
        timeout, problem = drain_timeout_s(pod, services)
        if problem:
            self.event(pod, "Warning", "BadDrainTimeout", problem)
        # Counted on our monotonic clock from when this node first saw the deletion; the
        # timeout is at most the grace period (and the kubelet ends the hook then anyway).
        now = self.clock.monotonic()
        seen = self.first_seen(pod)
        t0 = now if seen is None else min(now, seen)
        first = True
        last: list[Activity] | None = None  # the last connections read
        service = service_label(pod, services)
        looked = Tally()  # what the looks so far saw (for the record)
        while True:
            current = self.cached_pod(key) or pod
            found = self.netns_of(current)
            connections: list[Activity] | None = None
            ports: frozenset[int] = frozenset()
            unread = False
            fresh = True  # the connections were read this time (or the namespace is gone)
            if found is not None:
                paths, inode, ports = found
                try:
                    connections = last = self.activity(paths, inode)
                except NamespaceGone:
                    connections = None
                except PodlbError as exc:  # a netlink error says nothing of the connections
                    self.metrics.read_error()
                    log.debug("pod=%s: connections not read: %s", key, exc)
                    connections, unread, fresh = last, last is None, False
            if first:
                self.metrics.started(len([c for c in connections or [] if c.port in ports]))
                log.info(
                    "pod=%s: drain started (%s, timeout %.1fs)",
                    key, admit(pod, self.node_name).reason, timeout,
                )  # fmt: skip
                first = False
            elapsed = self.clock.monotonic() - t0
            serving = [c for c in connections or [] if c.port in ports]
            looked = tally(
                looked, elapsed_s=elapsed, reference=deregistered(current),
                connections=serving if fresh else None,
            )  # fmt: skip
            step = decide(current, connections, ports, quiet_s=self.quiet_s,
                          elapsed_s=elapsed, timeout_s=timeout, unread=unread)  # fmt: skip
            if step.done:
                assert step.outcome is not None
                log.info(
                    "pod=%s: drain %s after %.2fs: %s", key, step.outcome, elapsed, step.waiting_for
                )
                self._finish(current, service, step.outcome, elapsed, looked, step.waiting_for)
                return DrainResult(200, step.outcome, elapsed, step.waiting_for)
            if self.clock.wait(stop, self.poll_s):
                message = f"the agent is stopping; was waiting for {step.waiting_for}"
                log.warning("pod=%s: drain cut short after %.2fs: %s", key, elapsed, message)
                self._finish(current, service, Outcome.AGENT_SHUTDOWN, elapsed, looked, message)
                return DrainResult(503, Outcome.AGENT_SHUTDOWN, elapsed, message)
