"""Every metric podlb exports, on an injected registry (never the global one).

Names follow ``podlb_<subsystem>_<name>_<unit>``; labels are bounded (no IPs). Per-pod series
come from a collector that reads the latest published view, so series of deleted pods vanish
with the pod.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agent import __version__
from agent.model import LinkKind, NetnsInfo, Pod
from agent.node.drainlog import DrainRecord


@dataclass(frozen=True, slots=True)
class PodView:
    """One local pod as the node agent sees it (for metrics and /v1/pods)."""

    pod: Pod
    netns: NetnsInfo | None
    opted_in: bool
    datapath_ready: bool | None  # None: not evaluated (not opted in)
    reason: str | None
    serving_ports: frozenset[int]


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        Gauge("podlb_build_info", "podlb build", ["version"], registry=r).labels(__version__).set(1)
        self.scan_duration = Histogram(
            "podlb_scan_duration_seconds",
            "Time of one full inspection of every pod network namespace",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.scan_namespaces = Gauge(
            "podlb_scan_namespaces", "Network namespaces seen by the last scan", registry=r
        )
        self.scan_skipped = Counter(
            "podlb_scan_namespaces_skipped_total",
            "Namespaces skipped during scans, by reason",
            ["reason"],
            registry=r,
        )
        self.scan_errors = Counter(
            "podlb_scan_errors_total", "Scans that failed as a whole", registry=r
        )
        self.scan_verdicts_deferred = Counter(
            "podlb_scan_verdicts_deferred_total",
            "False datapath verdicts not written because the pod changed while the scan they "
            "came from ran (the next scan, due at once, decides), by reason",
            ["reason"],
            registry=r,
        )
        self.scan_namespace_errors = Counter(
            "podlb_scan_namespace_errors_total",
            "Namespaces that exist but could not be read in a scan (their last good view is "
            "kept), by reason",
            ["reason"],
            registry=r,
        )
        self.api_requests = Counter(
            "podlb_kube_requests_total",
            "Kubernetes API requests by verb, resource and HTTP code (error: no answer)",
            ["verb", "resource", "code"],
            registry=r,
        )
        self.api_request_duration = Histogram(
            "podlb_kube_request_duration_seconds",
            "Time of Kubernetes API requests to their answer, by verb and resource (a watch: "
            "to its stream's start)",
            ["verb", "resource"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.condition_writes = Counter(
            "podlb_condition_writes_total",
            "Condition writes by condition type and outcome "
            "(written, skipped, deferred, gone, error)",
            ["condition", "outcome"],
            registry=r,
        )
        self.condition_pending = Gauge(
            "podlb_condition_writes_pending",
            "Pods whose condition is queued to be checked or written, waiting to retry, or being "
            "written, by condition type",
            ["condition"],
            registry=r,
        )
        self.condition_write_wait = Histogram(
            "podlb_condition_write_wait_seconds",
            "Time from a pod's condition becoming pending (a new desired condition, or found "
            "changed) to its write, by condition type",
            ["condition"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0),
            registry=r,
        )
        self.is_leader = Gauge(
            "podlb_leader_is_leader", "1 while this agent is the elected leader", registry=r
        )
        self.leader_transitions = Counter(
            "podlb_leader_transitions_total",
            "Times this agent started or stopped leading",
            registry=r,
        )
        self.informer_synced = Gauge(
            "podlb_kube_informer_synced", "1 once the informer listed", ["resource"], registry=r
        )

        self.reconcile_duration = Histogram(
            "podlb_leader_reconcile_duration_seconds",
            "Time of one leader reconcile round (observe LB, plan, apply)",
            ["outcome"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.lb_actions = Counter(
            "podlb_lb_actions_total",
            "LB actions applied by the leader, by operation and outcome",
            ["op", "outcome"],
            registry=r,
        )
        self.lb_commands = Counter(
            "podlb_lb_commands_total",
            "Commands and API calls sent to LBs, by command and outcome (ok, rejected, error, ...)",
            ["command", "outcome"],
            registry=r,
        )
        self.lb_backends = Gauge(
            "podlb_lb_backends",
            "Pods behind direct Services by lb-ready reason (Healthy, Registering, ...)",
            ["state"],
            registry=r,
        )
        self.service_problems = Counter(
            "podlb_leader_problems_total",
            "Problems found in Services and pods (each reported once as a Warning Event)",
            ["reason"],
            registry=r,
        )
        self.fail_static = Counter(
            "podlb_leader_fail_static_total",
            "Rounds or pools where nothing was removed on doubt, by reason",
            ["reason"],
            registry=r,
        )
        self.lb_servers_lost = Counter(
            "podlb_leader_lb_servers_lost_total",
            "Servers of pods in rotation an LB instance lost (restart, reload) and the leader "
            "re-added, by provider; their pods stayed ready",
            ["provider"],
            registry=r,
        )
        self.gate_timeouts = Counter(
            "podlb_leader_gate_timeouts_total",
            "Pods the LB did not confirm within their gate timeout (podlb.io/gate-timeout), by "
            "the Service whose bound applied and what followed (hold, admit)",
            ["namespace", "service", "policy"],
            registry=r,
        )

        # Drains by namespace and Service (never by pod: agent/node/drainlog.py).
        drain_labels = ["namespace", "service"]
        self.drain_duration = Histogram(
            "podlb_drain_duration_seconds",
            "preStop drains from the deletion (as the node first saw it) to the hook's answer, "
            "by outcome (deregistered+quiet, timeout, agent-shutdown, refused)",
            [*drain_labels, "outcome"],
            buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0),
            registry=r,
        )
        self.drain_deregister = Histogram(
            "podlb_drain_deregister_seconds",
            "Time from a pod's deletion (as the node first saw it) to the LB's Deregistered, "
            "as its drain saw it",
            drain_labels,
            buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0),
            registry=r,
        )
        self.drain_open_connections = Histogram(
            "podlb_drain_open_connections",
            "Established connections on serving ports during drains, at the LB's Deregistered "
            "(moment=deregistered) and when the hook was answered (moment=end)",
            [*drain_labels, "moment"],
            buckets=(0, 1, 2, 5, 10, 25, 50, 100, 250, 1000),
            registry=r,
        )
        self.drain_new_connections = Counter(
            "podlb_drain_connections_after_deregistered",
            "Connections on serving ports a draining pod accepted after the LB's Deregistered "
            "(should be 0)",
            drain_labels,
            registry=r,
        )
        self.drain_quiet_bytes = Counter(
            "podlb_drain_bytes_after_deregistered",
            "Bytes draining pods received on serving ports after the LB's Deregistered",
            drain_labels,
            registry=r,
        )
        self._drains: dict[str, int] = {}  # held drains since start, by outcome
        self._drains_lock = threading.Lock()
        registry.register(_Ratio(self.signal_ended_ratio))
        self.drain_connections = Histogram(
            "podlb_drain_connections_at_start",
            "Established connections on serving ports when a drain started",
            buckets=(0, 1, 2, 5, 10, 25, 50, 100, 250, 1000),
            registry=r,
        )
        self.drains_in_flight = Gauge(
            "podlb_drains_in_flight", "Drains being held right now", registry=r
        )

    def set_backends(self, by_state: dict[str, int]) -> None:
        for state in (
            "Healthy",
            "NotRegistered",
            "Registering",
            "Unhealthy",
            "Draining",
            "Deregistered",
            "GateTimeout",
            "GateTimeoutAdmitted",
        ):
            self.lb_backends.labels(state).set(by_state.get(state, 0))

    def observe_request(self, verb: str, resource: str, code: str) -> None:
        self.api_requests.labels(verb, resource, code).inc()

    def time_request(self, verb: str, resource: str, seconds: float) -> None:
        self.api_request_duration.labels(verb, resource).observe(seconds)

    def observe_drain(self, record: DrainRecord) -> None:
        """One drain record. A refusal of a pod nobody knows (no uid) is not labelled with the
        namespace it names: anyone may ask for any name."""
        namespace = record.namespace if record.uid else ""
        where = (namespace, record.service)
        self.drain_duration.labels(*where, record.outcome).observe(record.seconds)
        if record.outcome == "refused":
            return
        with self._drains_lock:
            self._drains[record.outcome] = self._drains.get(record.outcome, 0) + 1
        if record.deregistered_s is not None:
            self.drain_deregister.labels(*where).observe(record.deregistered_s)
        for moment, n in (
            ("deregistered", record.connections_at_deregistered),
            ("end", record.connections_at_end),
        ):
            if n is not None:
                self.drain_open_connections.labels(*where, moment).observe(n)
        self.drain_new_connections.labels(*where).inc(record.new_connections or 0)
        self.drain_quiet_bytes.labels(*where).inc(record.quiet_bytes or 0)

    def signal_ended_ratio(self) -> float | None:
        """Of the drains held since the agent started, the fraction that ended on the signals
        (deregistered+quiet) rather than by a timer or the agent's stop; None before any."""
        with self._drains_lock:
            held = sum(self._drains.values())
            return self._drains.get("deregistered+quiet", 0) / held if held else None


class _Ratio(Collector):
    """``podlb_drain_signal_ended_ratio``: no sample until a drain was held."""

    def __init__(self, ratio: Callable[[], float | None]) -> None:
        self.ratio = ratio

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "podlb_drain_signal_ended_ratio",
            "Fraction of the drains held since the agent started that ended by "
            "deregistered+quiet (not by the drain timeout or the agent's stop)",
        )
        value = self.ratio()
        if value is not None:
            family.add_metric([], value)
        yield family


_IFACE_COUNTERS = (
    ("receive_bytes", "rx_bytes"),
    ("transmit_bytes", "tx_bytes"),
    ("receive_packets", "rx_packets"),
    ("transmit_packets", "tx_packets"),
    ("receive_errors", "rx_errors"),
    ("transmit_errors", "tx_errors"),
    ("receive_drops", "rx_dropped"),
    ("transmit_drops", "tx_dropped"),
)


class PodCollector(Collector):
    """Per-pod series from the latest view: interface counters, link state, connections."""

    def __init__(self, views: Callable[[], Iterable[PodView]]) -> None:
        self.views = views

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        labels = ["namespace", "pod", "interface", "kind"]
        counters = {
            name: CounterMetricFamily(
                f"podlb_pod_interface_{name}",
                f"Pod interface {name.replace('_', ' ')}",
                labels=labels,
            )
            for name, _ in _IFACE_COUNTERS
        }
        up = GaugeMetricFamily(
            "podlb_pod_interface_up", "1 if the pod interface is operationally up", labels=labels
        )
        conns = GaugeMetricFamily(
            "podlb_pod_tcp_established_connections",
            "Established TCP connections on the pod's listening ports",
            labels=["namespace", "pod"],
        )
        listening = GaugeMetricFamily(
            "podlb_pod_tcp_listening_ports",
            "TCP ports the pod listens on",
            labels=["namespace", "pod"],
        )
        ready = GaugeMetricFamily(
            "podlb_pod_datapath_ready",
            "1 if the pod's datapath is ready (opted-in pods only)",
            labels=["namespace", "pod", "reason"],
        )
        for view in self.views():
            ns, name = view.pod.namespace, view.pod.name
            if view.datapath_ready is not None:
                ready.add_metric([ns, name, view.reason or ""], 1.0 if view.datapath_ready else 0.0)
            if view.netns is None:
                continue
            for iface in view.netns.interfaces:
                if iface.kind is LinkKind.LOOPBACK:
                    continue
                values = [ns, name, iface.name, iface.kind.value]
                for metric, attr in _IFACE_COUNTERS:
                    counters[metric].add_metric(values, float(getattr(iface.stats, attr)))
                up.add_metric(values, 1.0 if iface.is_up else 0.0)
            conns.add_metric([ns, name], float(sum(view.netns.tcp.established.values())))
            listening.add_metric([ns, name], float(len(view.netns.tcp.listening_ports())))
        yield from counters.values()
        yield from (up, conns, listening, ready)


class NodeCollector(Collector):
    """Node metrics from psutil and /proc: CPU, memory, load, NIC counters, conntrack."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
        psutil.cpu_percent(None)  # prime: later calls measure since the previous one

    def _read_int(self, rel: str) -> float | None:
        try:
            with open(os.path.join(self.proc_root, rel), encoding="ascii") as f:
                return float(f.read().strip())
        except (OSError, ValueError):
            return None

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        cpu = GaugeMetricFamily(
            "podlb_node_cpu_usage_ratio", "Node CPU busy ratio since last scrape"
        )
        cpu.add_metric([], psutil.cpu_percent(None) / 100.0)
        yield cpu
        mem = psutil.virtual_memory()
        total = GaugeMetricFamily("podlb_node_memory_total_bytes", "Node memory")
        total.add_metric([], float(mem.total))
        avail = GaugeMetricFamily("podlb_node_memory_available_bytes", "Node memory available")
        avail.add_metric([], float(mem.available))
        yield total
        yield avail
        load = GaugeMetricFamily("podlb_node_load", "Node load average", labels=["window"])
        for window, value in zip(("1m", "5m", "15m"), os.getloadavg(), strict=True):
            load.add_metric([window], value)
        yield load
        rx = CounterMetricFamily(
            "podlb_node_nic_receive_bytes", "Node NIC received bytes", labels=["interface"]
        )
        tx = CounterMetricFamily(
            "podlb_node_nic_transmit_bytes", "Node NIC transmitted bytes", labels=["interface"]
        )
        for nic, c in sorted(psutil.net_io_counters(pernic=True).items()):
            rx.add_metric([nic], float(c.bytes_recv))
            tx.add_metric([nic], float(c.bytes_sent))
        yield rx
        yield tx
        for name, rel, help_ in (
            (
                "podlb_node_conntrack_entries",
                "sys/net/netfilter/nf_conntrack_count",
                "Conntrack entries",
            ),
            (
                "podlb_node_conntrack_limit",
                "sys/net/netfilter/nf_conntrack_max",
                "Conntrack table size",
            ),
        ):
            found = self._read_int(rel)
            if found is not None:
                g = GaugeMetricFamily(name, help_)
                g.add_metric([], found)
                yield g
