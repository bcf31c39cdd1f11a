"""The node agent's decisions loop: scan namespaces, match them to local pods, decide readiness.

Watch events only mark work (``poke``); each pass recomputes every local pod's view from the
latest snapshot and the informer caches, and hands the desired condition to the reporter.
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

from .readiness import direct_by_namespace, evaluate, find_namespace, opted_in, serving_ports
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

    # -- inputs ---------------------------------------------------------------------------
    def poke(self, key: object = None) -> None:
        """Something changed (a pod, a Service): re-decide soon, with a fresh scan."""
        del key
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
        self.decide()

    def decide(self) -> None:
        """Recompute every local pod's view and desired condition (level-triggered)."""
        snap = self.snapshot()
        if snap is None or not self.synced():
            return
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
