"""Datapath readiness of a pod (pure): is the LB able to reach it on its pod IP right now?

``evaluate`` maps (pod, its inspected namespace, its serving ports) to the condition
``podlb.io/datapath-ready``. Reasons are typed and flow unchanged into the condition, the log
line and the metric label.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from agent.model import (
    LB_READY,
    LinkKind,
    NetnsInfo,
    Pod,
    Service,
    Snapshot,
    Verdict,
    direct_mode,
)


class Reason(enum.StrEnum):
    READY = "Ready"
    NO_POD_IP = "NoPodIP"  # the API has no IP for the pod yet
    NAMESPACE_NOT_FOUND = "NamespaceNotFound"
    NO_INTERFACE = "NoInterface"
    NO_ADDRESS = "NoAddress"
    LINK_DOWN = "LinkDown"
    NOT_LISTENING = "NotListening"


def is_direct(service: Service) -> bool:
    """Whether a Service is in direct pod mode (the leader's definition: ``direct_mode``)."""
    return direct_mode(service)[0]


def direct_by_namespace(services: Iterable[Service]) -> dict[str, list[Service]]:
    """The direct Services, by namespace: a Service selects only pods of its own, and a node
    agent looks through them for each of its pods (1,000 Services x 110 pods per scan)."""
    out: dict[str, list[Service]] = {}
    for s in services:
        if is_direct(s):
            out.setdefault(s.namespace, []).append(s)
    return out


def direct_services_for(pod: Pod, services: Iterable[Service]) -> list[Service]:
    return [s for s in services if is_direct(s) and s.selects(pod)]


def opted_in(pod: Pod, services: Iterable[Service]) -> bool:
    """podlb writes conditions only on pods with its readiness gate or behind a direct Service."""
    if pod.host_network:
        return False  # shares the node's namespace: nothing of its own to inspect
    return LB_READY in pod.readiness_gates or bool(direct_services_for(pod, services))


def serving_ports(pod: Pod, services: Iterable[Service]) -> frozenset[int]:
    """The ports the LB will send to: each direct Service's targetPort resolved on this pod.

    A named targetPort resolves through the pod's container ports (a name the pod lacks
    resolves to nothing, as in kube-proxy). Without a direct Service (readiness gate only),
    every declared TCP container port.
    """
    ports: set[int] = set()
    svcs = direct_services_for(pod, services)
    for svc in svcs:
        for sp in svc.ports:
            if sp.protocol != "TCP":
                continue
            if isinstance(sp.target_port, int):
                ports.add(sp.target_port)
            else:
                ports.update(cp.port for cp in pod.ports if cp.name == sp.target_port)
    if not svcs:
        ports.update(cp.port for cp in pod.ports if cp.protocol == "TCP")
    return frozenset(ports)


def find_namespace(pod: Pod, snapshot: Snapshot) -> NetnsInfo | None:
    """The pod's namespace: by UID (from cgroups) first, else by pod IP."""
    by_uid = snapshot.by_pod_uid.get(pod.uid)
    if by_uid is not None:
        return by_uid
    for ip in pod.ips:
        if ip in snapshot.by_ip:
            return snapshot.by_ip[ip]
    return None


def evaluate(pod: Pod, ns: NetnsInfo | None, ports: frozenset[int]) -> Verdict[Reason]:
    if not pod.ips:
        return Verdict(False, Reason.NO_POD_IP, "the pod has no IP yet")
    if ns is None:
        return Verdict(
            False, Reason.NAMESPACE_NOT_FOUND, f"no network namespace holds {pod.ips[0]}"
        )
    ifaces = [i for i in ns.interfaces if i.kind is not LinkKind.LOOPBACK]
    if not ifaces:
        return Verdict(False, Reason.NO_INTERFACE, "the pod's namespace has no interface")
    for ip in pod.ips:
        iface = ns.interface_with_ip(ip)
        if iface is None:
            return Verdict(False, Reason.NO_ADDRESS, f"{ip} is on no interface of the pod")
        if not iface.is_up:
            return Verdict(False, Reason.LINK_DOWN, f"{iface.name} holding {ip} is {iface.state}")
    listening = ns.tcp.listening_ports()
    missing = sorted(ports - listening)
    if missing:
        shown = ",".join(str(p) for p in missing)
        return Verdict(False, Reason.NOT_LISTENING, f"nothing listens on TCP port(s) {shown}")
    served = ",".join(str(p) for p in sorted(ports)) or "none declared"
    return Verdict(True, Reason.READY, f"{pod.ips[0]} up, listening on {served}")
