"""Raw API objects (dicts, as read from the wire) to podlb's frozen model types."""

from __future__ import annotations

from typing import Any

from agent.model import (
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


def _pairs(mapping: dict[str, Any] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in (mapping or {}).items()))


def pod_from_dict(obj: dict[str, Any]) -> Pod:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    ips = tuple(p["ip"] for p in status.get("podIPs") or [] if p.get("ip"))
    if not ips and status.get("podIP"):
        ips = (status["podIP"],)
    ports: list[ContainerPort] = []
    for container in spec.get("containers") or []:
        for port in container.get("ports") or []:
            if "containerPort" in port:
                ports.append(
                    ContainerPort(
                        int(port["containerPort"]), port.get("name"), port.get("protocol", "TCP")
                    )
                )
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
        ports=tuple(ports),
        labels=_pairs(meta.get("labels")),
        annotations=_pairs(meta.get("annotations")),
        resource_version=meta.get("resourceVersion", ""),
        creation_timestamp=meta.get("creationTimestamp"),
    )


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
        annotations=_pairs(meta.get("annotations")),
        resource_version=meta.get("resourceVersion", ""),
    )


def endpointslice_from_dict(obj: dict[str, Any]) -> EndpointSlice:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace", "")
    endpoints = []
    for ep in obj.get("endpoints") or []:
        cond = ep.get("conditions") or {}
        ref = ep.get("targetRef") or {}
        pod = None
        if ref.get("kind") == "Pod" and ref.get("name"):
            pod = PodKey(ref.get("namespace") or ns, ref["name"])
        endpoints.append(
            Endpoint(
                addresses=tuple(ep.get("addresses") or ()),
                ready=cond.get("ready"),
                serving=cond.get("serving"),
                terminating=cond.get("terminating"),
                node_name=ep.get("nodeName"),
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
