"""The resources the testbed API server serves."""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
NS_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class Resource:
    name: str  # plural, as in URLs
    group: str  # "" for core
    version: str
    kind: str
    namespaced: bool
    singular: str
    subresources: tuple[str, ...] = ()
    short_names: tuple[str, ...] = ()
    has_generation: bool = False
    # field labels accepted by fieldSelector besides metadata.name / metadata.namespace
    fields: tuple[str, ...] = ()
    verbs: list[str] = field(default_factory=lambda: list(ALL_VERBS))

    @property
    def key(self) -> str:
        """Storage key: the plural name for core, ``<plural>.<group>`` otherwise (events only)."""
        if self.group and self.name == "events":
            return f"{self.name}.{self.group}"
        return self.name

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES: list[Resource] = [
    Resource(
        "namespaces",
        "",
        "v1",
        "Namespace",
        False,
        "namespace",
        ("status",),
        ("ns",),
        fields=("status.phase",),
        verbs=NS_VERBS,
    ),
    Resource(
        "nodes",
        "",
        "v1",
        "Node",
        False,
        "node",
        ("status",),
        ("no",),
        fields=("spec.unschedulable",),
    ),
    Resource(
        "pods",
        "",
        "v1",
        "Pod",
        True,
        "pod",
        ("status", "binding"),
        ("po",),
        has_generation=True,
        fields=(
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ),
    ),
    Resource(
        "services",
        "",
        "v1",
        "Service",
        True,
        "service",
        ("status",),
        ("svc",),
        verbs=["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
    ),
    Resource("configmaps", "", "v1", "ConfigMap", True, "configmap", (), ("cm",)),
    Resource(
        "events",
        "",
        "v1",
        "Event",
        True,
        "event",
        (),
        ("ev",),
        fields=(
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ),
    ),
    Resource(
        "endpointslices",
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        True,
        "endpointslice",
        has_generation=True,
        fields=("addressType",),
    ),
    Resource("leases", "coordination.k8s.io", "v1", "Lease", True, "lease"),
    Resource(
        "events",
        "events.k8s.io",
        "v1",
        "Event",
        True,
        "event",
        (),
        ("ev",),
        fields=(
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "reason",
            "reportingController",
            "type",
        ),
    ),
]
BY_KEY: dict[str, Resource] = {r.key: r for r in RESOURCES}
BY_GV: dict[tuple[str, str, str], Resource] = {(r.group, r.version, r.name): r for r in RESOURCES}
GROUPS: dict[str, list[str]] = {}
for _r in RESOURCES:
    if _r.group and _r.version not in GROUPS.setdefault(_r.group, []):
        GROUPS[_r.group].append(_r.version)


def lookup(resource: str) -> Resource:
    """Find by storage key (``pods``, ``endpointslices``, ``events.events.k8s.io``...)."""
    try:
        return BY_KEY[resource]
    except KeyError:
        raise KeyError(f"unknown resource {resource!r}") from None
