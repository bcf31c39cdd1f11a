"""The leader's pods, decoded straight from the API server's JSON into its reduced model.

The leader keeps every pod of the cluster. A realistic pod is about 13 KiB of JSON (env,
probes, volumes, managedFields), of which the leader reads a few hundred bytes. ``json.loads``
builds all of it as dicts (about 40 MB for a page of 500 pods, 0.25-0.4 s of CPU here, much of
it the garbage collector walking the new dicts) only for :func:`for_leader` to drop nearly
everything. msgspec decodes into typed structs instead: the schema below names only the fields
the leader reads, every other field is skipped in C without being built (about 0.04 s a page,
a few hundred KB of transients).

The result is the same model as ``for_leader(pod_from_dict(json.loads(...)))`` gives (pinned
by ``tests/unit/test_leader_pods.py``), and a page or event whose fields have types the
schema does not expect (a string where a number belongs …) is decoded that way instead, so
both paths accept the same input; such a fallback is counted and logged.
"""

from __future__ import annotations

import json
import logging
import sys

import msgspec

from agent.errors import TransientError
from agent.model import ContainerPort, Pod

from .convert import (
    leader_annotations,
    leader_conditions,
    leader_gates,
    leader_labels,
    leader_pod_from_dict,
    leader_ports,
    leader_time,
)
from .decode import Decoder, Event, JsonDecoder, Page

log = logging.getLogger(__name__)
_intern = sys.intern

# -- the schema: only what the leader reads; every field may be absent or null -------------


class _Meta(msgspec.Struct, gc=False):
    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resourceVersion: str | None = None
    creationTimestamp: str | None = None
    deletionTimestamp: str | None = None
    deletionGracePeriodSeconds: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class _Port(msgspec.Struct, gc=False):
    containerPort: int | None = None
    name: str | None = None
    protocol: str | None = None


class _Container(msgspec.Struct, gc=False):
    ports: list[_Port] | None = None


class _Gate(msgspec.Struct, gc=False):
    conditionType: str | None = None


class _Spec(msgspec.Struct, gc=False):
    nodeName: str | None = None
    hostNetwork: bool | None = None
    terminationGracePeriodSeconds: int | None = None
    readinessGates: list[_Gate] | None = None
    containers: list[_Container] | None = None


class _PodIP(msgspec.Struct, gc=False):
    ip: str | None = None


class _Condition(msgspec.Struct, gc=False):
    type: str | None = None
    status: str | None = None
    reason: str | None = None
    lastTransitionTime: str | None = None


class _Status(msgspec.Struct, gc=False):
    phase: str | None = None
    podIP: str | None = None
    podIPs: list[_PodIP] | None = None
    conditions: list[_Condition] | None = None


class _Pod(msgspec.Struct, gc=False):
    metadata: _Meta | None = None
    spec: _Spec | None = None
    status: _Status | None = None


class _ListMeta(msgspec.Struct, gc=False):
    resourceVersion: str | None = None
    # "continue" is a Python keyword
    next: str | None = msgspec.field(default=None, name="continue")


class _PodList(msgspec.Struct, gc=False):
    metadata: _ListMeta | None = None
    items: list[_Pod] | None = None


class _WatchEvent(msgspec.Struct, gc=False):
    type: str | None = None
    object: msgspec.Raw = msgspec.Raw()  # kept as bytes until the type is known


_EMPTY_META, _EMPTY_SPEC, _EMPTY_STATUS = _Meta(), _Spec(), _Status()


def _pairs(mapping: dict[str, str] | None) -> list[tuple[str, str]]:
    return sorted((mapping or {}).items())


def leader_pod(p: _Pod) -> Pod:
    """A decoded pod as the leader keeps it (``convert.for_leader``), built in one step."""
    meta, spec, status = p.metadata or _EMPTY_META, p.spec or _EMPTY_SPEC, p.status or _EMPTY_STATUS
    ips = tuple(a.ip for a in status.podIPs or () if a.ip)
    if not ips and status.podIP:
        ips = (status.podIP,)
    grace = spec.terminationGracePeriodSeconds
    node = spec.nodeName
    ports = []
    for container in spec.containers or ():
        for port in container.ports or ():
            if port.containerPort is not None:
                name, protocol = port.name, port.protocol or "TCP"
                ports.append(
                    ContainerPort(
                        port.containerPort, _intern(name) if name else None, _intern(protocol)
                    )
                )
    return Pod(
        namespace=_intern(meta.namespace or ""),
        name=meta.name or "",
        uid=meta.uid or "",
        node_name=_intern(node) if node else None,
        ips=ips,
        phase=_intern(status.phase or ""),
        host_network=bool(spec.hostNetwork),
        terminating=meta.deletionTimestamp is not None,
        deletion_timestamp=meta.deletionTimestamp,
        deletion_grace_s=meta.deletionGracePeriodSeconds,
        grace_period_s=grace if grace is not None else 30,
        readiness_gates=leader_gates(
            g.conditionType for g in spec.readinessGates or () if g.conditionType is not None
        ),
        conditions=leader_conditions(
            (c.type or "", c.status or "Unknown", c.reason or "", c.lastTransitionTime)
            for c in status.conditions or ()
        ),
        ports=leader_ports(ports),
        labels=leader_labels(_pairs(meta.labels)),
        annotations=leader_annotations(_pairs(meta.annotations)),
        creation_timestamp=leader_time(meta.creationTimestamp),
    )


class LeaderPodDecoder(Decoder[Pod]):
    """Pages and watch events of pods, straight into the leader's reduced pods."""

    def __init__(self, resource: str = "pods") -> None:
        self.resource = resource
        self._list = msgspec.json.Decoder(_PodList)
        self._event = msgspec.json.Decoder(_WatchEvent)
        self._pod = msgspec.json.Decoder(_Pod)
        self._json = JsonDecoder(leader_pod_from_dict, resource)
        self.fallbacks = 0  # pages and events decoded the slow way (unexpected field types)

    def page(self, data: bytes | bytearray) -> Page[Pod]:
        try:
            body = self._list.decode(data)
        except msgspec.ValidationError as exc:
            self._fell_back("list page", exc)
            return self._json.page(data)
        except msgspec.DecodeError as exc:
            raise TransientError(f"list {self.resource}: unparsable response") from exc
        meta = body.metadata or _ListMeta()
        page: Page[Pod] = Page(resource_version=meta.resourceVersion or "", next=meta.next or "")
        for item in body.items or ():
            pod = leader_pod(item)
            page.items.append(((pod.namespace, pod.name), pod))
        return page

    def event(self, line: str | bytes) -> Event[Pod] | None:
        try:
            raw = self._event.decode(line)
        except msgspec.ValidationError:  # not an event object (a JSON value of another kind)
            return None
        etype, body = raw.type or "", raw.object
        if not body or (len(body) == 4 and bytes(body) == b"null"):
            body = msgspec.Raw(b"{}")  # no object: as an empty one, as the JSON path does
        if etype == "ERROR":
            status = json.loads(bytes(body))
            return Event(etype, error=status if isinstance(status, dict) else {})
        try:
            obj = self._pod.decode(body)
        except msgspec.ValidationError as exc:
            self._fell_back("watch event", exc)
            return self._json.event_of({"type": etype, "object": json.loads(bytes(body))})
        meta = obj.metadata or _EMPTY_META
        key = (meta.namespace or "", meta.name or "")
        rv = meta.resourceVersion or ""
        if etype not in ("ADDED", "MODIFIED"):
            return Event(etype, key, rv)
        return Event(etype, key, rv, leader_pod(obj))

    def _fell_back(self, what: str, exc: Exception) -> None:
        self.fallbacks += 1
        log.warning(
            "%s %s: a field of an unexpected type (%s); decoded as plain JSON (%d so far)",
            self.resource, what, exc, self.fallbacks,
        )  # fmt: skip
