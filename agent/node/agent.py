"""The node agent's decisions loop: scan namespaces, match them to local pods, decide readiness.

Watch events only mark work (``poke``, ``pod_changed``); each pass recomputes every local pod's
view from the latest snapshot and the informer caches, and hands the desired condition to the
reporter.

A pod being created (no condition of ours yet, not ContainersReady) gets no False verdict: it
has no IP, or its app does not listen, yet, as expected; its first condition is the verdict once
its containers are ready. A False written then cost a write and an Event per pod, and, written
late (the writers take it last), could land after the pod was ready and take it out of its pool.
Nor does a pod being stopped (deleted, or stopped by its kubelet): its app stops listening
because it is stopped, and the leader drains such a pod whatever its datapath says.

A scan may predate what the pod object says: a pod that got its IP, or whose app started
listening (ContainersReady), while the scan ran is matched against namespaces read before. Its
False verdict from that scan (``NamespaceNotFound``, ``NotListening``, ...) is not written; the
next scan, due at once (the change woke the loop), decides. Without this a ready pod was marked
False for a scan's time, and the leader took it out of its pool and put it back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from agent.clock import Clock, relay
from agent.errors import PodlbError
from agent.metrics import Metrics, PodView
from agent.model import Pod, PodKey, Service, Snapshot

from .readiness import (
    Reason,
    direct_by_namespace,
    evaluate,
    find_namespace,
    opted_in,
    serving_ports,
)
from .reporter import ConditionReporter, Desired

log = logging.getLogger(__name__)


class Scanner(Protocol):
    def scan(self) -> Snapshot: ...


class NodeAgent:
    def __init__(
        self,
        node_name: str,
        scanner: Scanner,
        pods: Callable[[], Iterable[Pod]],
        services: Callable[[], Iterable[Service]],
        reporter: ConditionReporter,
        metrics: Metrics,
        clock: Clock,
        *,
        scan_interval_s: float = 5.0,
        synced: Callable[[], bool] = lambda: True,
        on_decided: Callable[[list[PodView]], None] = lambda views: None,
    ) -> None:
        self.node_name = node_name
        self.scanner = scanner
        self.pods = pods
        self.services = services
        self.reporter = reporter
        self.metrics = metrics
        self.clock = clock
        self.scan_interval_s = scan_interval_s
        self.synced = synced
        self.on_decided = on_decided
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._views: dict[PodKey, PodView] = {}
        self._wake = threading.Event()
        self.scans = 0
        self._scans_begun = 0
        # pod -> how many scans had begun when it last changed (see the module's docstring)
        self._changed: dict[PodKey, int] = {}

    # -- inputs ---------------------------------------------------------------------------
    def poke(self, key: object = None) -> None:
        """Something changed (a pod, a Service): re-decide soon, with a fresh scan."""
        del key
        self._wake.set()

    def pod_changed(self, key: PodKey) -> None:
        """A pod's watch event: re-decide soon; a False verdict for it from a scan under way
        now waits for the next one."""
        with self._lock:
            self._changed[key] = self._scans_begun
        self._wake.set()

    def ready(self) -> bool:
        return self.synced() and self._snapshot is not None

    # -- outputs --------------------------------------------------------------------------
    def views(self) -> list[PodView]:
        with self._lock:
            return list(self._views.values())

    def view(self, key: PodKey) -> PodView | None:
        with self._lock:
            return self._views.get(key)

    def snapshot(self) -> Snapshot | None:
        with self._lock:
            return self._snapshot

    # -- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        relay(stop, self._wake, "scanner-stop")  # between scans it waits on _wake
        while not stop.is_set():
            self._wake.clear()
            self.scan_once()
            if stop.is_set():  # set (and relayed) before the clear above
                break
            # Coalesce bursts of watch events: at most one extra scan per 100 ms.
            if self.clock.wait(self._wake, self.scan_interval_s) and not stop.is_set():
                self.clock.wait(stop, 0.1)

    def scan_once(self) -> None:
        with self._lock:
            self._scans_begun += 1
            scan = self._scans_begun
        try:
            snap = self.scanner.scan()
        except PodlbError as exc:
            self.metrics.scan_errors.inc()
            log.warning("scan failed: %s", exc)
            return
        self.metrics.scan_duration.observe(snap.duration_s)
        self.metrics.scan_namespaces.set(len(snap.namespaces))
        for reason, n in snap.skipped.items():
            self.metrics.scan_skipped.labels(reason).inc(n)
        for reason, n in snap.errors.items():
            self.metrics.scan_namespace_errors.labels(reason).inc(n)
        with self._lock:
            self._snapshot = snap
        self.scans += 1
        self.decide(scan)

    def decide(self, scan: int) -> None:
        """Recompute every local pod's view and desired condition (level-triggered) from the
        snapshot of ``scan`` (the number of scans begun when it began)."""
        snap = self.snapshot()
        if snap is None or not self.synced():
            return
        with self._lock:
            changed = self._changed
            self._changed = {k: n for k, n in changed.items() if n > scan}
            previous = self._views
        direct = direct_by_namespace(self.services())
        views: dict[PodKey, PodView] = {}
        for pod in self.pods():
            if pod.node_name != self.node_name:
                continue
            ns = None if pod.host_network else find_namespace(pod, snap)
            # A pod reported Failed by a graceful node shutdown may still be in its preStop
            # hook: it keeps its view (and drain listener) while its namespace is there.
            if pod.phase in ("Succeeded", "Failed") and not (pod.stopped_by_kubelet and ns):
                continue
            services = [s for s in direct.get(pod.namespace, ()) if s.selects(pod)]
            if not opted_in(pod, services):
                views[pod.key] = PodView(pod, ns, False, None, None, frozenset())
                continue
            ports = serving_ports(pod, services)
            verdict = evaluate(pod, ns, ports)
            views[pod.key] = PodView(pod, ns, True, verdict.ready, verdict.reason.value, ports)
            if verdict.ready or self._writes_false(pod, verdict.reason, scan, changed, previous):
                self.reporter.set_desired(
                    pod.key, Desired(pod.uid, verdict.status, verdict.reason.value, verdict.message)
                )
        with self._lock:
            gone = set(self._views) - set(views)
            self._views = views
        for key in gone:
            self.reporter.forget(key)
        for key, view in views.items():
            if not view.opted_in:
                self.reporter.forget(key)
        self.on_decided(list(views.values()))

    def _writes_false(
        self,
        pod: Pod,
        reason: Reason,
        scan: int,
        changed: dict[PodKey, int],
        previous: dict[PodKey, PodView],
    ) -> bool:
        """Whether a False verdict is to be written now (see the module's docstring)."""
        if pod.leaving:
            return False  # it stops listening because it is stopped: no news
        if not pod.containers_ready and pod.condition(self.reporter.condition_type) is None:
            desired = self.reporter.desired(pod.key)
            if desired is None or desired.uid != pod.uid:
                return False  # being created: no IP or no listener yet is expected, not news
        if (
            reason is not Reason.NO_POD_IP  # from the pod object, not the scan
            and changed.get(pod.key, 0) >= scan
            and _inputs(view.pod if (view := previous.get(pod.key)) else None) != _inputs(pod)
        ):
            self.metrics.scan_verdicts_deferred.labels(reason.value).inc()
            return False
        return True

    def netns_of(self, pod: Pod) -> tuple[tuple[str, ...], int, frozenset[int]] | None:
        """The pod's namespace (paths, inode) and serving ports (for the drain), from the last
        scan."""
        view = self.view(pod.key)
        if view is not None and view.netns is not None and view.pod.uid == pod.uid:
            return view.netns.paths, view.netns.inode, view.serving_ports
        snap = self.snapshot()
        ns = find_namespace(pod, snap) if snap is not None else None
        if ns is None:
            return None
        return ns.paths, ns.inode, serving_ports(pod, list(self.services()))


def _inputs(pod: Pod | None) -> tuple[object, ...] | None:
    """What of a pod a scan is matched against: its UID and IPs, and ContainersReady (its app
    listens)."""
    return None if pod is None else (pod.uid, pod.ips, pod.containers_ready)
