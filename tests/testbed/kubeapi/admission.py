"""Admission as kube-apiserver's validation and defaulting strategies do it here: what a new or
updated object must hold (:func:`validate`), and what is filled in (:class:`Defaults`: pod spec
defaults and QoS class, Service cluster IPs, IP families and node ports, namespace labels)."""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Callable
from typing import Any

from .errors import invalid
from .resources import Resource

Obj = dict[str, Any]

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


Causes = list[tuple[str, str, str]]  # (field, reason, message)


def validate(res: Resource, obj: Obj) -> None:
    """422 Invalid, with every cause, for what kube-apiserver's validation refuses here."""
    causes = _meta_causes(res, obj["metadata"])
    check = _SPEC_CHECKS.get(res.key)
    if check is not None:
        check(obj, obj.get("spec"), causes)
    if causes:
        raise invalid(res.kind, res.group, obj["metadata"].get("name") or "", causes)


def _meta_causes(res: Resource, meta: Obj) -> Causes:
    name = meta.get("name") or ""
    causes: list[tuple[str, str, str]] = []
    if not name:
        causes.append(
            (
                "metadata.name",
                "FieldValueRequired",
                "Required value: name or generateName is required",
            )
        )
    else:
        regex = _LABEL_RE if res.key in ("namespaces", "services") else _NAME_RE
        if len(name) > (63 if regex is _LABEL_RE else 253) or not regex.match(name):
            causes.append(
                (
                    "metadata.name",
                    "FieldValueInvalid",
                    f'Invalid value: "{name}": a lowercase RFC 1123 name must consist '
                    "of lower case alphanumeric characters, '-' or '.'",
                )
            )
    for fld in ("labels", "annotations"):
        if meta.get(fld) is not None and not isinstance(meta[fld], dict):
            causes.append((f"metadata.{fld}", "FieldValueInvalid", "Invalid value"))
    return causes


def _pod_causes(obj: Obj, spec: Any, causes: Causes) -> None:
    containers = (spec or {}).get("containers") if isinstance(spec, dict) else None
    if not containers or not isinstance(containers, list):
        causes.append(("spec.containers", "FieldValueRequired", "Required value"))
    else:
        for i, c in enumerate(containers):
            if not isinstance(c, dict) or not c.get("name"):
                causes.append(
                    (f"spec.containers[{i}].name", "FieldValueRequired", "Required value")
                )
            elif not c.get("image"):
                causes.append(
                    (f"spec.containers[{i}].image", "FieldValueRequired", "Required value")
                )


def _service_causes(obj: Obj, spec: Any, causes: Causes) -> None:
    spec = spec if isinstance(spec, dict) else {}
    ports = spec.get("ports") or []
    if not ports and spec.get("type") != "ExternalName" and spec.get("clusterIP") != "None":
        causes.append(("spec.ports", "FieldValueRequired", "Required value"))
    for i, p in enumerate(ports):
        port = p.get("port") if isinstance(p, dict) else None
        if not isinstance(port, int) or not 1 <= port <= 65535:
            causes.append(
                (
                    f"spec.ports[{i}].port",
                    "FieldValueInvalid",
                    f"Invalid value: {port}: must be between 1 and 65535, inclusive",
                )
            )
        if len(ports) > 1 and isinstance(p, dict) and not p.get("name"):
            causes.append((f"spec.ports[{i}].name", "FieldValueRequired", "Required value"))


def _endpointslice_causes(obj: Obj, spec: Any, causes: Causes) -> None:
    if obj.get("addressType") not in ("IPv4", "IPv6", "FQDN"):
        causes.append(
            (
                "addressType",
                "FieldValueNotSupported",
                f'Unsupported value: "{obj.get("addressType")}": supported values: '
                '"FQDN", "IPv4", "IPv6"',
            )
        )
    # null is an empty list (what the real API server returns for an empty slice)
    endpoints = obj.get("endpoints")
    if endpoints is not None and not isinstance(endpoints, list):
        causes.append(("endpoints", "FieldValueInvalid", "Invalid value"))


def _lease_causes(obj: Obj, spec: Any, causes: Causes) -> None:
    spec = spec if isinstance(spec, dict) else {}
    d = spec.get("leaseDurationSeconds")
    if d is not None and (not isinstance(d, int) or d <= 0):
        causes.append(
            (
                "spec.leaseDurationSeconds",
                "FieldValueInvalid",
                f"Invalid value: {d}: must be greater than 0",
            )
        )


_SPEC_CHECKS: dict[str, Callable[[Obj, Any, Causes], None]] = {
    "pods": _pod_causes,
    "services": _service_causes,
    "endpointslices": _endpointslice_causes,
    "leases": _lease_causes,
}


class Defaults:
    """Fills in defaults; allocates cluster IPs and node ports (callers hold the store's lock)."""

    def __init__(self) -> None:
        self.next_v4 = int(ipaddress.IPv4Address("10.96.0.10"))
        self.next_v6 = int(ipaddress.IPv6Address("fd00:10:96::a"))
        self.next_node_port = 30000

    def on_create(self, res: Resource, obj: Obj) -> None:
        """Defaults and the initial status of a new object."""
        if res.key == "pods":
            self._pod_spec(obj)
            obj["status"] = {"phase": "Pending", "qosClass": _qos(obj["spec"])}
        elif res.key == "services":
            self._service(obj, None)
            obj["status"] = {"loadBalancer": {}}
        elif res.key == "namespaces":
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
            labels = obj["metadata"].setdefault("labels", {})
            labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]

    def on_update(self, res: Resource, cur: Obj, new: Obj) -> None:
        """Defaults of an update; 422 for a change of a field that may not change."""
        if res.key == "pods":
            self._pod_spec(new)
            a, b = _mutable_pod_spec(cur["spec"]), _mutable_pod_spec(new["spec"])
            if a != b:
                raise invalid(
                    "Pod",
                    "",
                    cur["metadata"]["name"],
                    [
                        (
                            "spec",
                            "FieldValueForbidden",
                            "Forbidden: pod updates may not change fields other than "
                            "`spec.containers[*].image`,`spec.initContainers[*].image`,"
                            "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to "
                            "existing tolerations),`spec.terminationGracePeriodSeconds` "
                            "(allow it to be set to 1 if it was previously negative)",
                        )
                    ],
                )
        elif res.key == "services":
            self._service(new, cur)
        elif res.key == "namespaces":
            new.setdefault("spec", copy.deepcopy(cur.get("spec", {})))
            new["status"] = copy.deepcopy(cur.get("status", {}))
            labels = new["metadata"].setdefault("labels", {})
            labels["kubernetes.io/metadata.name"] = new["metadata"]["name"]

    @staticmethod
    def _pod_spec(obj: Obj) -> None:
        spec = obj.setdefault("spec", {})
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("securityContext", {})
        spec.setdefault("enableServiceLinks", True)
        for c in list(spec.get("containers") or []) + list(spec.get("initContainers") or []):
            if not isinstance(c, dict):
                continue
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            image = str(c.get("image", ""))
            tag = image.rsplit("/", 1)[-1]
            c.setdefault(
                "imagePullPolicy",
                "Always" if ":" not in tag or tag.endswith(":latest") else "IfNotPresent",
            )
            c.setdefault("resources", {})
            for p in c.get("ports") or []:
                if isinstance(p, dict):
                    p.setdefault("protocol", "TCP")

    def _alloc_ip(self, family: str) -> str:
        if family == "IPv6":
            ip = str(ipaddress.IPv6Address(self.next_v6))
            self.next_v6 += 1
        else:
            ip = str(ipaddress.IPv4Address(self.next_v4))
            self.next_v4 += 1
        return ip

    def _service(self, obj: Obj, cur: Obj | None) -> None:
        spec = obj.setdefault("spec", {})
        cspec = (cur or {}).get("spec") or {}
        stype = spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for p in spec.get("ports") or []:
            p.setdefault("protocol", "TCP")
            p.setdefault("targetPort", p.get("port"))
        if stype == "ExternalName":
            return
        spec.setdefault("internalTrafficPolicy", "Cluster")
        if cur is not None:
            for k in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                if k in cspec and not spec.get(k):
                    spec[k] = copy.deepcopy(cspec[k])
            if spec.get("clusterIP") != cspec.get("clusterIP"):
                raise invalid(
                    "Service",
                    "",
                    obj["metadata"]["name"],
                    [
                        (
                            "spec.clusterIPs[0]",
                            "FieldValueInvalid",
                            f'Invalid value: []string{{"{spec.get("clusterIP")}"}}: may not change '
                            "once set",
                        )
                    ],
                )
        else:
            cip = spec.get("clusterIP")
            policy = spec.get("ipFamilyPolicy")
            fams = spec.get("ipFamilies")
            if cip == "None":
                fams = fams or (["IPv4", "IPv6"] if spec.get("selector") else ["IPv4"])
                policy = policy or ("RequireDualStack" if len(fams) > 1 else "SingleStack")
                spec["clusterIPs"] = ["None"]
            else:
                if not fams:
                    fams = ["IPv6" if ":" in cip else "IPv4"] if cip else ["IPv4"]
                    if policy in ("PreferDualStack", "RequireDualStack"):
                        fams = [fams[0], "IPv6" if fams[0] == "IPv4" else "IPv4"]
                policy = policy or ("SingleStack" if len(fams) == 1 else "RequireDualStack")
                ips = [cip] if cip else []
                for fam in fams[len(ips) :]:
                    ips.append(self._alloc_ip(fam))
                spec["clusterIP"] = ips[0]
                spec["clusterIPs"] = ips
            spec["ipFamilies"] = fams
            spec["ipFamilyPolicy"] = policy
        if stype in ("NodePort", "LoadBalancer"):
            spec.setdefault("externalTrafficPolicy", "Cluster")
            old_ports = {
                (p.get("port"), p.get("protocol")): p.get("nodePort")
                for p in cspec.get("ports") or []
            }
            for p in spec.get("ports") or []:
                if not p.get("nodePort"):
                    prev = old_ports.get((p.get("port"), p.get("protocol")))
                    if prev:
                        p["nodePort"] = prev
                    else:
                        p["nodePort"] = self.next_node_port
                        self.next_node_port += 1
            if (
                stype == "LoadBalancer"
                and spec.get("externalTrafficPolicy") == "Local"
                and not spec.get("healthCheckNodePort")
            ):
                spec["healthCheckNodePort"] = cspec.get("healthCheckNodePort") or (
                    self.next_node_port
                )
                if not cspec.get("healthCheckNodePort"):
                    self.next_node_port += 1


def _mutable_pod_spec(spec: Obj) -> Obj:
    s = copy.deepcopy(spec)
    for k in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"):
        s.pop(k, None)
    for lst in ("containers", "initContainers"):
        for c in s.get(lst) or []:
            if isinstance(c, dict):
                c.pop("image", None)
    return s


def _qos(spec: Obj) -> str:
    containers = [c for c in spec.get("containers") or [] if isinstance(c, dict)]
    reqs = [(c.get("resources") or {}) for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in reqs):
        return "BestEffort"
    for r in reqs:
        limits = r.get("limits") or {}
        requests = r.get("requests") or {}
        if not ("cpu" in limits and "memory" in limits):
            return "Burstable"
        if any(requests.get(k, limits[k]) != limits[k] for k in ("cpu", "memory")):
            return "Burstable"
    return "Guaranteed"
