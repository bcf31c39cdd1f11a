"""Plain value types shared by every part of podlb: no I/O, no Kubernetes, no netlink."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

R = TypeVar("R", bound=enum.StrEnum)


class LinkKind(enum.StrEnum):
    """How a pod is attached to the node's network."""

    VETH = "veth"
    IPVLAN = "ipvlan"
    MACVLAN = "macvlan"
    ENI = "eni"  # a whole NIC (no link kind) moved into the pod
    TUN = "tun"  # tun or tap (mode tells which)
    LOOPBACK = "loopback"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Verdict(Generic[R]):
    """A decision on one of podlb's conditions: a typed reason that goes unchanged into the
    condition's ``reason``, the log line and the metric label."""

    ready: bool
    reason: R
    message: str

    @property
    def status(self) -> str:
        return "True" if self.ready else "False"


@dataclass(frozen=True, slots=True)
class LinkRef:
    """A link in another namespace (a veth's host-side peer, an ipvlan's parent)."""

    name: str | None
    ifindex: int


@dataclass(frozen=True, slots=True)
class LinkStats:
    """64-bit interface counters (``struct rtnl_link_stats64``)."""

    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    rx_errors: int = 0
    tx_errors: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    ifindex: int
    kind: LinkKind
    mode: str | None  # ipvlan l2/l3/l3s, macvlan bridge/vepa/..., tun/tap
    mac: str | None
    mtu: int
    state: str  # operational state: up, down, unknown, lowerlayerdown, ...
    addresses: tuple[str, ...]  # "ip/prefixlen", IPv4 then IPv6
    peer: LinkRef | None = None
    parent: LinkRef | None = None
    stats: LinkStats = field(default_factory=LinkStats)
    flags: int = 0  # IFF_* (not in the JSON)

    @property
    def is_up(self) -> bool:
        # Operational state "up"; a tun/tap without a reader is "unknown" with IFF_UP + LOWER_UP.
        up_lower_up = 0x1 | 0x10000  # IFF_UP | IFF_LOWER_UP
        return self.state == "up" or (
            self.state == "unknown" and (self.flags & up_lower_up) == up_lower_up
        )

    @property
    def ips(self) -> tuple[str, ...]:
        return tuple(a.split("/", 1)[0] for a in self.addresses)


@dataclass(frozen=True, slots=True)
class ListeningSocket:
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class TcpState:
    """TCP sockets of one namespace, read with sock_diag."""

    listening: tuple[ListeningSocket, ...] = ()
    # established connections per *listening* local port (server side connections)
    established: dict[int, int] = field(default_factory=dict)
    # established connections whose local port is not a listening one (outbound)
    outbound: int = 0

    def listening_ports(self) -> frozenset[int]:
        return frozenset(s.port for s in self.listening)


@dataclass(frozen=True, slots=True)
class PodHint:
    """What the host alone tells about the pod owning a namespace."""

    uid: str | None
    ips: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NetnsInfo:
    """One inspected network namespace."""

    inode: int
    path: str  # the path it was opened through
    paths: tuple[str, ...]  # every bind mount and /proc path found for it
    pids: tuple[int, ...]
    pod: PodHint | None
    interfaces: tuple[Interface, ...]
    tcp: TcpState

    def interface_with_ip(self, ip: str) -> Interface | None:
        for iface in self.interfaces:
            if ip in iface.ips:
                return iface
        return None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The result of one full scan: immutable, published to readers as a whole."""

    namespaces: tuple[NetnsInfo, ...]
    host_inode: int
    started_at: float  # wall clock, seconds
    duration_s: float
    skipped: dict[str, int]  # namespaces skipped this scan, by reason
    # Namespaces that exist but could not be read this scan (a netlink error, a dump
    # interrupted too often), by reason: each keeps its last good view (``stale``).
    errors: dict[str, int] = field(default_factory=dict)
    stale: frozenset[int] = frozenset()  # inodes whose view is from an earlier scan
    # Lookups, built once per snapshot (every pod of the node is matched against them).
    by_pod_uid: dict[str, NetnsInfo] = field(init=False, repr=False, compare=False)
    by_ip: dict[str, NetnsInfo] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_uid = {ns.pod.uid: ns for ns in self.namespaces if ns.pod and ns.pod.uid}
        by_ip: dict[str, NetnsInfo] = {}
        for ns in self.namespaces:
            for iface in ns.interfaces:
                if iface.kind is LinkKind.LOOPBACK:
                    continue
                for ip in iface.ips:
                    by_ip.setdefault(ip, ns)
        object.__setattr__(self, "by_pod_uid", by_uid)
        object.__setattr__(self, "by_ip", by_ip)


# -- Kubernetes objects, reduced to what podlb decides on ---------------------------------

DATAPATH_READY = "podlb.io/datapath-ready"
LB_READY = "podlb.io/lb-ready"
# kubelet's mark on a pod it stops on its own (node-pressure eviction, graceful node shutdown;
# Kubernetes 1.26+, feature PodDisruptionConditions): no API deletion announces those.
DISRUPTION_TARGET = "DisruptionTarget"
TERMINATION_BY_KUBELET = "TerminationByKubelet"

DIRECT_ANNOTATIONS: dict[str, str] = {
    "podlb.io/direct": "true",
    "service.cloud.tencent.com/direct-access": "true",
    "service.beta.kubernetes.io/cce-load-balancer-backend-type": "eni",
}


class PodKey(NamedTuple):
    """A pod's (namespace, name): a tuple, so it hashes in C (the leader looks up tens of
    thousands a round) and equals the informers' plain ``(namespace, name)`` keys."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None  # RFC 3339, as stored


@dataclass(frozen=True, slots=True)
class ContainerPort:
    port: int
    name: str | None = None
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    uid: str
    node_name: str | None
    ips: tuple[str, ...]
    phase: str
    host_network: bool = False
    terminating: bool = False  # metadata.deletionTimestamp is set
    grace_period_s: int = 30  # spec.terminationGracePeriodSeconds
    deletion_timestamp: str | None = None  # RFC 3339: when the grace period ends
    deletion_grace_s: int | None = None  # metadata.deletionGracePeriodSeconds
    readiness_gates: tuple[str, ...] = ()
    conditions: tuple[Condition, ...] = ()
    ports: tuple[ContainerPort, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    resource_version: str = ""
    creation_timestamp: str | None = None  # RFC 3339, as the API server stores it
    # stopped_by_kubelet, decided once: a leader round looks at every pod of the cluster
    _stopped: bool = field(init=False, repr=False, compare=False, default=False)

    def __post_init__(self) -> None:
        cond = self.condition(DISRUPTION_TARGET)
        stopped = (
            cond is not None and cond.status == "True" and cond.reason == TERMINATION_BY_KUBELET
        )
        object.__setattr__(self, "_stopped", stopped)

    @property
    def key(self) -> PodKey:
        return PodKey(self.namespace, self.name)

    def condition(self, ctype: str) -> Condition | None:
        for cond in self.conditions:
            if cond.type == ctype:
                return cond
        return None

    @property
    def stopped_by_kubelet(self) -> bool:
        """kubelet stops the pod without an API deletion (eviction, node shutdown): it marks
        it ``DisruptionTarget=True`` reason ``TerminationByKubelet`` before the preStop hooks."""
        return self._stopped

    @property
    def containers_ready(self) -> bool:
        """``ContainersReady`` is True: its containers pass their readiness probes (not
        ``Ready``, which also waits on readiness gates, podlb's own among them)."""
        cond = self.condition("ContainersReady")
        return cond is not None and cond.status == "True"

    @property
    def leaving(self) -> bool:
        """Being stopped: deleted through the API, or stopped by its kubelet."""
        return self.terminating or self.stopped_by_kubelet

    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    target_port: int | str  # number, or a container port name
    protocol: str = "TCP"
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    uid: str
    type: str
    selector: tuple[tuple[str, str], ...] | None  # None: no selector
    ports: tuple[ServicePort, ...]
    annotations: tuple[tuple[str, str], ...] = ()
    resource_version: str = ""

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)

    def selects(self, pod: Pod) -> bool:
        if not self.selector or pod.namespace != self.namespace:
            return False
        labels = pod.label_map()
        return all(labels.get(k) == v for k, v in self.selector)


@dataclass(frozen=True, slots=True)
class SlicePort:
    name: str  # "" when the Service port has no name
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool | None
    serving: bool | None
    terminating: bool | None
    node_name: str | None = None
    pod: PodKey | None = None  # targetRef of kind Pod


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service: str | None  # label kubernetes.io/service-name
    address_type: str  # IPv4 | IPv6 | FQDN
    ports: tuple[SlicePort, ...]
    endpoints: tuple[Endpoint, ...]
    resource_version: str = ""


def direct_mode(svc: Service) -> tuple[bool, str | None]:
    """Whether a Service is in direct pod mode, and a problem message if an annotation value
    is invalid. ``podlb.io/direct: "true"`` counts on any type; the TKE and CCE annotations
    only on ``type: LoadBalancer`` (as their cloud controllers read them)."""
    raw = svc.annotation("podlb.io/direct")
    if raw is not None and raw.strip().lower() not in ("true", "false"):
        return False, f'podlb.io/direct: "{raw}" is not "true" or "false"'
    if raw is not None and raw.strip().lower() == "true":
        return True, None
    if svc.type != "LoadBalancer":
        return False, None
    for key, value in DIRECT_ANNOTATIONS.items():
        got = svc.annotation(key)
        if key != "podlb.io/direct" and got is not None and got.strip().lower() == value:
            return True, None
    return False, None
