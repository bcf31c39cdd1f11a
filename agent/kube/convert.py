"""Raw API objects (dicts, as read from the wire) to podlb's frozen model types.

A node agent keeps its node's pods whole (``pod_from_dict``: its API shows them); the leader
keeps every pod of the cluster, so ``leader_pod_from_dict`` keeps only what the leader decides
on, and one copy of what pods share (label sets, ports, conditions, repeated strings).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Hashable, Iterable
from dataclasses import replace
from typing import Any, TypeVar, cast

from agent.model import (
    DATAPATH_READY,
    DISRUPTION_TARGET,
    LB_READY,
    Condition,
    ContainerPort,
    Endpoint,
    EndpointSlice,
    Pod,
    PodKey,
    Service,
    ServicePort,
    SlicePort,
)

H = TypeVar("H", bound=Hashable)

# The conditions the leader reads (desired.py, reconcile.py): ContainersReady and
# datapath-ready make a backend, DisruptionTarget a pod its kubelet stops, lb-ready its own.
LEADER_CONDITIONS = frozenset({"ContainersReady", DATAPATH_READY, DISRUPTION_TARGET, LB_READY})
PODLB_ANNOTATIONS = "podlb.io/"  # the only pod annotations podlb reads
# Never read, often the largest annotation of an object (kubectl apply's copy of it).
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


class Shared:
    """One copy of each equal value among many objects (a ReplicaSet's pods have the same
    labels, ports, conditions). Bounded: past ``size`` distinct values it starts afresh
    (what is shared stays shared)."""

    def __init__(self, size: int = 16384) -> None:
        self.size = size
        self._values: dict[Hashable, Hashable] = {}
        self._lock = threading.Lock()

    def __call__(self, value: H) -> H:
        with self._lock:
            got = self._values.get(value)
            if got is None:
                if len(self._values) >= self.size:
                    self._values.clear()
                self._values[value] = got = value
            return cast(H, got)


_shared = Shared()
_intern = sys.intern


def _pairs(mapping: dict[str, Any] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in (mapping or {}).items()))


def pod_from_dict(obj: dict[str, Any]) -> Pod:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    ips = tuple(p["ip"] for p in status.get("podIPs") or [] if p.get("ip"))
    if not ips and status.get("podIP"):
        ips = (status["podIP"],)
    grace = spec.get("terminationGracePeriodSeconds")
    return Pod(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        node_name=spec.get("nodeName"),
        ips=ips,
        phase=status.get("phase", ""),
        host_network=bool(spec.get("hostNetwork")),
        terminating=meta.get("deletionTimestamp") is not None,
        deletion_timestamp=meta.get("deletionTimestamp"),
        deletion_grace_s=meta.get("deletionGracePeriodSeconds"),
        grace_period_s=int(grace) if grace is not None else 30,
        readiness_gates=tuple(
            g["conditionType"] for g in spec.get("readinessGates") or [] if "conditionType" in g
        ),
        conditions=tuple(
            Condition(
                type=c.get("type", ""),
                status=c.get("status", "Unknown"),
                reason=c.get("reason") or "",
                message=c.get("message") or "",
                last_transition_time=c.get("lastTransitionTime"),
            )
            for c in status.get("conditions") or []
        ),
        ports=_container_ports(spec),
        labels=_pairs(meta.get("labels")),
        annotations=_pairs(meta.get("annotations")),
        resource_version=meta.get("resourceVersion", ""),
        creation_timestamp=meta.get("creationTimestamp"),
    )


def leader_pod_from_dict(obj: dict[str, Any]) -> Pod:
    """A pod of the cluster as the leader keeps it (:func:`for_leader`)."""
    return for_leader(pod_from_dict(obj))


def for_leader(pod: Pod) -> Pod:
    """``pod`` reduced to what the leader decides on: only the conditions it reads (with no
    message, and a ``lastTransitionTime`` only on its own lb-ready), only ``podlb.io/``
    annotations, no resourceVersion (so a write that changes nothing the leader reads is no
    change to its cache), and shared copies of what pods have in common."""
    return replace(
        pod,
        namespace=_intern(pod.namespace),
        node_name=_intern(pod.node_name) if pod.node_name else None,
        phase=_intern(pod.phase),
        readiness_gates=leader_gates(pod.readiness_gates),
        conditions=leader_conditions(
            (c.type, c.status, c.reason, c.last_transition_time) for c in pod.conditions
        ),
        ports=leader_ports(pod.ports),
        labels=leader_labels(pod.labels),
        annotations=leader_annotations(pod.annotations),
        resource_version="",
        creation_timestamp=leader_time(pod.creation_timestamp),
    )


def leader_conditions(
    conditions: Iterable[tuple[str, str, str, str | None]],
) -> tuple[Condition, ...]:
    """(type, status, reason, lastTransitionTime) of a pod's conditions, as the leader keeps
    them: those it reads, shared, with the time only on its own lb-ready."""
    kept = []
    for ctype, status, reason, since in conditions:
        if ctype in LEADER_CONDITIONS:
            if ctype == LB_READY:
                mine = Condition(
                    _intern(ctype), _intern(status), _intern(reason), "", leader_time(since)
                )
                kept.append(mine)
            else:
                kept.append(_shared(Condition(_intern(ctype), _intern(status), _intern(reason))))
    return _shared(tuple(kept))


def leader_time(stamp: str | None) -> str | None:
    """A timestamp, one copy for every pod of the same second (a ReplicaSet makes its pods
    within seconds of each other)."""
    return _intern(stamp) if stamp else stamp


def leader_ports(ports: Iterable[ContainerPort]) -> tuple[ContainerPort, ...]:
    return _shared(tuple(ports))


def leader_gates(gates: Iterable[str]) -> tuple[str, ...]:
    return _shared(tuple(_intern(g) for g in gates))


def leader_labels(labels: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Sorted (key, value) pairs, interned and shared."""
    return _shared(tuple((_intern(k), _intern(v)) for k, v in labels))


def leader_annotations(
    annotations: Iterable[tuple[str, str]],
) -> tuple[tuple[str, str], ...]:
    """Only podlb's own annotations (sorted pairs in, sorted pairs out)."""
    return _shared(
        tuple((_intern(k), v) for k, v in annotations if k.startswith(PODLB_ANNOTATIONS))
    )


def _container_ports(spec: dict[str, Any]) -> tuple[ContainerPort, ...]:
    ports: list[ContainerPort] = []
    for container in spec.get("containers") or []:
        for port in container.get("ports") or []:
            if "containerPort" in port:
                name = port.get("name")
                ports.append(
                    ContainerPort(
                        int(port["containerPort"]),
                        _intern(name) if name else None,
                        _intern(port.get("protocol", "TCP")),
                    )
                )
    return tuple(ports)


def service_from_dict(obj: dict[str, Any]) -> Service:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    selector = spec.get("selector")
    ports = []
    for p in spec.get("ports") or []:
        target = p.get("targetPort", p.get("port"))
        if isinstance(target, str) and target.isdigit():
            target = int(target)
        ports.append(
            ServicePort(
                port=int(p.get("port", 0)),
                target_port=target if target is not None else int(p.get("port", 0)),
                protocol=p.get("protocol", "TCP"),
                name=p.get("name"),
            )
        )
    return Service(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        type=spec.get("type", "ClusterIP"),
        selector=_pairs(selector) if selector else None,
        ports=tuple(ports),
        annotations=_pairs(
            {k: v for k, v in (meta.get("annotations") or {}).items() if k != LAST_APPLIED}
        ),
        resource_version=meta.get("resourceVersion", ""),
    )


def endpointslice_from_dict(obj: dict[str, Any]) -> EndpointSlice:
    meta = obj.get("metadata") or {}
    ns = _intern(meta.get("namespace", ""))
    endpoints = []
    for ep in obj.get("endpoints") or []:
        cond = ep.get("conditions") or {}
        ref = ep.get("targetRef") or {}
        pod = None
        if ref.get("kind") == "Pod" and ref.get("name"):
            pod = PodKey(_intern(ref.get("namespace") or ns), ref["name"])
        node = ep.get("nodeName")
        endpoints.append(
            Endpoint(
                addresses=tuple(ep.get("addresses") or ()),
                ready=cond.get("ready"),
                serving=cond.get("serving"),
                terminating=cond.get("terminating"),
                node_name=_intern(node) if node else None,
                pod=pod,
            )
        )
    return EndpointSlice(
        namespace=ns,
        name=meta.get("name", ""),
        service=(meta.get("labels") or {}).get("kubernetes.io/service-name"),
        address_type=obj.get("addressType", "IPv4"),
        ports=tuple(
            SlicePort(p.get("name") or "", int(p["port"]), p.get("protocol", "TCP"))
            for p in obj.get("ports") or []
            if p.get("port") is not None
        ),
        endpoints=tuple(endpoints),
        resource_version=meta.get("resourceVersion", ""),
    )
