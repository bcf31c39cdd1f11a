"""The composition root: builds every adapter and worker from the settings, runs them, stops
them on SIGTERM within a deadline. An unexpected exception in any worker stops the process with
a non-zero exit, so Kubernetes restarts it instead of it limping on.
"""

from __future__ import annotations

import json
import logging
import resource
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import FrameType

from prometheus_client import CollectorRegistry

from agent import __version__
from agent.clock import Clock
from agent.datapath import Inspector, InspectorConfig
from agent.datapath.netlink import inside
from agent.kube.calls import Calls
from agent.kube.client import KubeAccess
from agent.kube.factory import KubeAdapters
from agent.kube.informer import Informer
from agent.lb.base import LBProvider
from agent.leader.election import ElectionConfig, LeaderElector, LeaderScope
from agent.leader.reconcile import Leader
from agent.leader.sinks import LeaderMetrics
from agent.metrics import Metrics, NodeCollector, PodCollector, PodView
from agent.model import DATAPATH_READY, LB_READY, Pod, PodKey, Service
from agent.node.agent import NodeAgent
from agent.node.api import NodeAPI
from agent.node.drain import Activity, DeletionsSeen, DrainManager, DrainMetrics
from agent.node.drainlog import DrainLog, DrainRecord, record_json
from agent.node.drainport import DrainListeners, result_body
from agent.node.eventqueue import EventQueue
from agent.node.reporter import ConditionReporter, StatusSink
from agent.settings import RunSettings

log = logging.getLogger(__name__)

EXIT_OK = 0
APPLY_WORKERS = 8  # LB change batches in flight at once (each for different servers)
EXIT_WORKER_FAILED = 1


@dataclass
class Supervisor:
    """Runs named workers in threads; the first to fail stops everyone."""

    stop: threading.Event = field(default_factory=threading.Event)
    failed: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, name: str, target: Callable[[threading.Event], None]) -> None:
        def body() -> None:
            try:
                target(self.stop)
            except BaseException:
                log.exception("worker %s failed: stopping the agent", name)
                self.failed.append(name)
                self.stop.set()

        thread = threading.Thread(target=body, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def join(self, timeout_s: float) -> list[str]:
        """Wait for every worker up to ``timeout_s`` in all; return those still running."""
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self.threads if t.is_alive()]


def build_providers(settings: RunSettings, metrics: Metrics, clock: Clock) -> dict[str, LBProvider]:
    """The configured LB providers by name (SDKs are imported only when configured)."""
    providers: dict[str, LBProvider] = {}

    def on_call(api: str, outcome: str) -> None:
        metrics.lb_commands.labels(api, outcome).inc()

    if "haproxy" in settings.lb:
        from agent.lb.haproxy import HAProxyProvider

        providers["haproxy"] = HAProxyProvider(
            settings.haproxy_runtime,
            server_options=settings.haproxy_server_options,
            clock=clock,
            on_command=lambda instance, command, outcome: on_call(command, outcome),
        )
    creds = settings.credentials
    if "tencent-clb" in settings.lb:
        from agent.lb.tencent_clb import TencentCLBProvider

        providers["tencent-clb"] = TencentCLBProvider(
            secret_id=creds["PODLB_TENCENT_SECRET_ID"],
            secret_key=creds["PODLB_TENCENT_SECRET_KEY"],
            region=settings.tencent_region,
            endpoint=settings.tencent_endpoint,
            clock=clock,
            on_call=on_call,
        )
    if "baidu-blb" in settings.lb:
        from agent.lb.baidu_blb import BaiduBLBProvider

        providers["baidu-blb"] = BaiduBLBProvider(
            access_key_id=creds["PODLB_BAIDU_ACCESS_KEY_ID"],
            secret_access_key=creds["PODLB_BAIDU_SECRET_ACCESS_KEY"],
            endpoint=settings.baidu_endpoint,
            max_backends=settings.baidu_max_backends or None,
            clock=clock,
            on_call=on_call,
        )
    return providers


def condition_reporter(
    condition: str,
    sink: StatusSink,
    lookup: Callable[[PodKey], Pod | None],
    settings: RunSettings,
    metrics: Metrics,
    clock: Clock,
) -> ConditionReporter:
    """The writers of ``condition``: ``--status-rate`` writes a second (burst twice that), as
    many writers as that rate needs (:func:`agent.node.reporter.writers_for`), and metrics."""
    reporter = ConditionReporter(
        condition,
        sink,
        lookup,
        clock,
        rate_per_s=settings.status_rate_per_s,
        burst=max(10, int(settings.status_rate_per_s * 2)),
        on_write=lambda outcome, reason: metrics.condition_writes.labels(condition, outcome).inc(),
        on_wait=metrics.condition_write_wait.labels(condition).observe,
    )
    metrics.condition_pending.labels(condition).set_function(reporter.pending)
    return reporter


def leader_relevant(pod: Pod) -> tuple[object, ...]:
    """What of a pod the leader's decisions read (not its own lb-ready condition)."""
    conds = tuple(
        (c.type, c.status) for c in pod.conditions if c.type in ("ContainersReady", DATAPATH_READY)
    )
    return (pod.uid, pod.ips, pod.leaving, conds, pod.labels, pod.annotations, pod.ports)


def leader_work(
    settings: RunSettings, kube: KubeAdapters, metrics: Metrics, clock: Clock
) -> Callable[[LeaderScope], None]:
    """What the elected agent runs: fresh informers and state for every leadership term."""
    providers = build_providers(settings, metrics, clock)

    def lead(scope: LeaderScope) -> None:
        leader_ref: list[Leader] = []

        def poke(key: object = None) -> None:
            if leader_ref:
                leader_ref[0].poke(key)

        # Our own lb-ready writes change pods too: only changes the leader decides on wake it
        # (at 30,000 pods a round costs 0.15-0.5 s of CPU).
        seen: dict[tuple[str, str], object] = {}
        reporter_ref: list[ConditionReporter] = []

        def pod_changed(key: tuple[str, str]) -> None:
            pod = pods.get(key)
            if reporter_ref:
                # Checked against the API again (a skipped check costs no request): a write of
                # ours the cache had not shown yet, or one of an earlier term, is not left as is.
                reporter_ref[0].mark_dirty(PodKey(*key))
            mark = None if pod is None else leader_relevant(pod)
            if seen.get(key) != mark:
                if mark is None:
                    seen.pop(key, None)
                else:
                    seen[key] = mark
                poke()

        pods = kube.all_pods(pod_changed, poke, settings.resync_s)
        sink = kube.status_sink("podlb-leader", settings.identity)

        def lookup(key: PodKey) -> Pod | None:
            return pods.get((key.namespace, key.name))

        reporter = condition_reporter(LB_READY, sink, lookup, settings, metrics, clock)
        reporter_ref.append(reporter)
        leader = Leader(
            services=kube.services(poke, poke, settings.resync_s),
            slices=kube.endpointslices(poke, poke, settings.resync_s),
            pods=pods,
            providers=providers,
            default_provider=settings.lb[0] if settings.lb else "haproxy",
            apply_executor=ThreadPoolExecutor(APPLY_WORKERS, thread_name_prefix="lb-apply"),
            reporter=reporter,
            events=sink,
            clock=clock,
            metrics=LeaderMetrics(
                reconcile=lambda s, outcome: metrics.reconcile_duration.labels(outcome).observe(s),
                lb_action=lambda op, outcome: metrics.lb_actions.labels(op, outcome).inc(),
                backends=metrics.set_backends,
                finding=lambda reason: metrics.service_problems.labels(reason).inc(),
                fail_static=lambda why: metrics.fail_static.labels(why).inc(),
                servers_lost=lambda provider, n: metrics.lb_servers_lost.labels(provider).inc(n),
                gate_timeout=lambda namespace, service, policy: metrics.gate_timeouts.labels(
                    namespace, service, policy
                ).inc(),
            ),
            resync_s=settings.leader_resync_s,
            drain_timeout_s=settings.lb_drain_timeout_s,
            freeze_gc=True,
        )
        leader_ref.append(leader)
        try:
            leader.run(scope)
        finally:  # the term's writes end with it
            metrics.condition_pending.labels(LB_READY).set_function(lambda: 0)

    return lead


def raise_fd_limit() -> None:
    """The inspector keeps two netlink sockets per pod namespace open: lift the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def drain_route(drains: DrainManager, stop: threading.Event, rest: str) -> tuple[int, str, bytes]:
    """GET /v1/drain/{namespace}/{name}: long-poll until the pod is drained."""
    parts = rest.strip("/").split("/")
    if len(parts) != 2 or not all(parts) or any(len(p) > 253 for p in parts):
        return 400, "application/json", b'{"error": "expected /v1/drain/{namespace}/{name}"}\n'
    result = drains.drain(parts[0], parts[1], stop)
    body = json.dumps(result_body(PodKey(parts[0], parts[1]), result)).encode() + b"\n"
    return result.code, "application/json", body


def drains_route(records: DrainLog) -> tuple[int, str, bytes]:
    """GET /v1/drains: the last drain records, oldest first (README, "Drain records")."""
    body = json.dumps({"drains": [record_json(r) for r in records.records()]}, indent=1)
    return 200, "application/json", body.encode() + b"\n"


@dataclass
class NodeSide:
    """The node role: this node's pods and Services, the datapath scanner, the
    datapath-ready writer, drains, the node HTTP API and the in-pod drain listeners."""

    pods: Informer[Pod]
    services: Informer[Service]
    inspector: Inspector
    reporter: ConditionReporter
    agent: NodeAgent
    drains: DrainManager
    api: NodeAPI
    listeners: DrainListeners | None
    events: EventQueue | None = None  # drain summaries, written apart from the hooks

    def start(self, sup: Supervisor) -> None:
        sup.start("informer-pods", self.pods.run)
        sup.start("informer-services", self.services.run)
        sup.start("scanner", self.agent.run)
        sup.start("condition-writer", self.reporter.run)
        sup.start("node-api", self.api.serve)
        if self.listeners is not None:
            sup.start("drain-listeners", self.listeners.run)
        if self.events is not None:
            sup.start("drain-events", self.events.run)

    def stop_watches(self) -> None:
        """End the watches now: a quiet watch would otherwise hold its worker."""
        self.pods.stop_watch()
        self.services.stop_watch()

    def close(self) -> None:
        self.inspector.close()

    def finish_drains(self, stop: threading.Event, wait_s: float) -> None:
        """On SIGTERM, before anything stops: the drains in progress (and any that start
        meanwhile) end by their own criteria, ``wait_s`` at most. A kubelet never repeats a
        preStop hook, so a hook cut off here would let its app stop while the LB still
        sends it traffic."""
        held = self.drains.requests()
        if not held:
            return
        log.info("stopping: waiting for %d drain(s) in progress (%.0fs at most)", held, wait_s)
        left = self.drains.wait_idle(wait_s, stop)
        if left:
            log.warning("stopping with %d drain(s) still in progress after %.0fs", left, wait_s)
        else:
            log.info("drains done: stopping")


def build_node(
    settings: RunSettings,
    kube: KubeAdapters,
    metrics: Metrics,
    registry: CollectorRegistry,
    clock: Clock,
    stop: threading.Event,
) -> NodeSide:
    """Build the node role (nothing runs until :meth:`NodeSide.start`)."""
    agent_ref: list[NodeAgent] = []
    reporter_ref: list[ConditionReporter] = []

    def poke(key: object = None) -> None:
        if agent_ref:
            agent_ref[0].poke(key)

    deletions = DeletionsSeen(clock)

    def on_pod_change(key: tuple[str, str]) -> None:
        deletions.observe(PodKey(*key), pods.get(key))
        if reporter_ref:
            reporter_ref[0].mark_dirty(PodKey(*key))
        if agent_ref:
            agent_ref[0].pod_changed(PodKey(*key))

    def on_resync() -> None:
        metrics.informer_synced.labels("pods").set(1)
        if reporter_ref:
            reporter_ref[0].resync()
        poke()

    def on_services_resync() -> None:
        metrics.informer_synced.labels("services").set(1)
        poke()

    pods = kube.node_pods(settings.node_name, on_pod_change, on_resync, settings.resync_s)
    services = kube.services(poke, on_services_resync, settings.resync_s)

    def lookup(key: PodKey) -> Pod | None:
        return pods.get((key.namespace, key.name))

    reporter = condition_reporter(
        DATAPATH_READY,
        kube.status_sink("podlb-agent", settings.node_name),
        lookup,
        settings,
        metrics,
        clock,
    )
    reporter_ref.append(reporter)
    inspector = Inspector(
        InspectorConfig(proc_root=settings.proc_root, netns_dirs=settings.netns_dirs)
    )
    sink = kube.status_sink("podlb-agent", settings.node_name)
    listeners_ref: list[DrainListeners] = []

    def on_decided(views: list[PodView]) -> None:
        if listeners_ref:
            listeners_ref[0].sync(
                {
                    v.pod.key: (v.pod, v.netns.paths, v.netns.inode, v.netns.tcp.listening_ports())
                    for v in views
                    if v.opted_in and v.netns is not None
                }
            )

    agent = NodeAgent(
        settings.node_name,
        inspector,
        pods.items,
        services.items,
        reporter,
        metrics,
        clock,
        scan_interval_s=settings.scan_interval_s,
        synced=lambda: pods.synced.is_set() and services.synced.is_set(),
        on_decided=on_decided,
    )
    agent_ref.append(agent)
    drain_log = DrainLog()
    events = EventQueue(sink.emit_event, clock, busy=lambda: bool(drains_ref[0].requests()))

    def on_record(record: DrainRecord) -> None:
        drain_log.add(record)
        metrics.observe_drain(record)

    drains = DrainManager(
        settings.node_name,
        sink.get_pod,
        lookup,
        services.items,
        agent.netns_of,
        lambda paths, inode: [
            Activity(a.sport, a.idle_ms, f"{a.dst}:{a.dport}", a.bytes_received)
            for a in inspector.activity(paths, inode)
        ],
        events.emit,
        clock,
        quiet_s=settings.drain_quiet_s,
        max_concurrent=settings.drain_max_concurrent,
        first_seen=deletions.first_seen,
        metrics=DrainMetrics(
            started=metrics.drain_connections.observe,
            in_flight=metrics.drains_in_flight.set,
        ),
        on_record=on_record,
    )
    drains_ref = [drains]
    registry.register(PodCollector(agent.views))
    registry.register(NodeCollector(settings.proc_root))
    api = NodeAPI((settings.listen_host, settings.listen_port), registry, agent.views, agent.ready)
    api.prefix_routes["/v1/drain/"] = lambda h, rest: drain_route(drains, stop, rest)
    api.routes["/v1/drains"] = lambda h: drains_route(drain_log)
    log.info("node API listening on %s:%d", *api.address)
    if settings.drain_port:
        listeners_ref.append(
            DrainListeners(
                settings.drain_port,
                drains.drain,
                inside,
                sink.emit_event,
            )
        )
    return NodeSide(
        pods, services, inspector, reporter, agent, drains, api,
        listeners_ref[0] if listeners_ref else None, events,
    )  # fmt: skip


@dataclass
class LeaderSide:
    """The leader role: the Lease election and, while this agent holds it, the leader work
    (its own informers, the LB providers, lb-ready)."""

    elector: LeaderElector
    lead: Callable[[LeaderScope], None]

    def start(self, sup: Supervisor) -> None:
        sup.start("leader-election", lambda stop: self.elector.run(stop, self.lead))


def build_leader(
    settings: RunSettings, kube: KubeAdapters, metrics: Metrics, clock: Clock
) -> LeaderSide:
    """Build the leader role: a candidate for the Lease that leads when elected."""

    def on_leader_change(leading: bool, holder: str | None) -> None:
        metrics.is_leader.set(1 if leading else 0)
        if not leading:
            metrics.set_backends({})  # only the leader's view of the LB counts
        metrics.leader_transitions.inc()

    # A hung renewal must leave time for another attempt within the renew deadline.
    lease_timeout_s = min(settings.kube_timeout_s, settings.renew_deadline_s / 2)
    elector = LeaderElector(
        kube.lease_store(settings.namespace, settings.lease_name, lease_timeout_s),
        settings.identity,
        clock,
        ElectionConfig(
            lease_duration_s=settings.lease_duration_s,
            renew_deadline_s=settings.renew_deadline_s,
            retry_period_s=settings.retry_period_s,
        ),
        on_change=on_leader_change,
    )
    return LeaderSide(elector, leader_work(settings, kube, metrics, clock))


def stop_on_signals(sup: Supervisor) -> threading.Event:
    """Install SIGTERM/SIGINT handlers; the returned event is set by the first signal.

    The first signal asks for a clean stop (drains in progress end first), a second one stops
    at once. Called before any worker starts: a SIGTERM that arrives once /readyz answers must
    take this path, never Python's default (killed mid-write).
    """
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        name = signal.Signals(signum).name
        if stopping.is_set():
            log.info("received %s again: stopping now", name)
            sup.stop.set()
        else:
            log.info("received %s: stopping", name)
            stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stopping


def run(settings: RunSettings, *, install_signals: bool = True) -> int:
    log.info("podlb-agent %s starting: %s", __version__, settings.describe())
    raise_fd_limit()
    clock = Clock()
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    calls = Calls(metrics.observe_request, metrics.time_request)
    token = None
    if settings.kube_token_file:
        with open(settings.kube_token_file, encoding="utf-8") as f:
            token = f.read().strip()
    kube = KubeAdapters(
        KubeAccess(
            kubeconfig=settings.kubeconfig,
            host=settings.kube_server,
            token=token,
            timeout_s=settings.kube_timeout_s,
            watch_idle_s=settings.watch_idle_s,
        ),
        calls,
        clock,
    )
    sup = Supervisor()
    stopping = stop_on_signals(sup) if install_signals else threading.Event()
    node = leader = None
    if settings.role in ("all", "node"):
        node = build_node(settings, kube, metrics, registry, clock, sup.stop)
        node.start(sup)
    if settings.role in ("all", "leader"):
        leader = build_leader(settings, kube, metrics, clock)
        leader.start(sup)
    if node is None:
        # The leader role's HTTP API: /healthz, /readyz and /metrics (no pods of its own).
        api = NodeAPI((settings.listen_host, settings.listen_port), registry, list, lambda: True)
        log.info("API listening on %s:%d", *api.address)
        sup.start("api", api.serve)

    while not stopping.wait(0.2) and not sup.stop.is_set():  # a signal wakes it at once
        pass
    if node is not None and not sup.stop.is_set():
        node.finish_drains(sup.stop, settings.shutdown_drain_wait_s)
    sup.stop.set()
    if node is not None:
        node.stop_watches()
    stuck = sup.join(settings.shutdown_timeout_s)
    kube.close()
    if node is not None:
        node.close()
    if stuck:
        log.error("workers still running after %.0fs: %s", settings.shutdown_timeout_s, stuck)
    if sup.failed:
        log.error("stopped because worker(s) failed: %s", ", ".join(sup.failed))
        return EXIT_WORKER_FAILED
    if not stuck:  # a worker still running (a scan of many namespaces) ends with the process
        log.info("stopped cleanly")
    return EXIT_OK
