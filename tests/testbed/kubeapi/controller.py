"""An EndpointSlice controller like kube-controller-manager's, driven by store events."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import ipaddress
import json
import logging
import queue
import threading
from typing import Any

from .errors import ApiError
from .store import Obj, Store

log = logging.getLogger(__name__)

MANAGED_BY = "endpointslice-controller.k8s.io"
LABEL_SERVICE = "kubernetes.io/service-name"
LABEL_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
LABEL_HEADLESS = "service.kubernetes.io/headless"
MAX_ENDPOINTS = 100


def _family(ip: str) -> str | None:
    try:
        return "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"
    except ValueError:
        return None


def _pod_ips(pod: Obj) -> list[str]:
    st = pod.get("status") or {}
    ips = [p.get("ip") for p in st.get("podIPs") or [] if isinstance(p, dict) and p.get("ip")]
    if not ips and st.get("podIP"):
        ips = [st["podIP"]]
    return [str(i) for i in ips]


def _pod_ready(pod: Obj) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False


def _resolve_port(pod: Obj, svc_port: Obj) -> int | None:
    target = svc_port.get("targetPort", svc_port.get("port"))
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    proto = svc_port.get("protocol", "TCP")
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == target and p.get("protocol", "TCP") == proto:
                return int(p["containerPort"])
    return None


def _selector_matches(selector: dict[str, str], pod: Obj) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


class EndpointSliceController:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Any = None

    def start(self) -> None:
        self._unsubscribe = self.store.subscribe(self._on_event)
        self._thread = threading.Thread(target=self._run, name="endpointslice-ctrl", daemon=True)
        self._thread.start()
        for ns in {s["metadata"]["namespace"] for s in self.store.list("services")}:
            self._queue.put(ns)

    def stop(self) -> None:
        if self._unsubscribe:
            self._unsubscribe()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _on_event(self, etype: str, resource: str, obj: Obj) -> None:
        if resource in ("pods", "services", "nodes"):
            ns = (obj.get("metadata") or {}).get("namespace")
            if resource == "nodes":
                for ns2 in {s["metadata"]["namespace"] for s in self.store.snapshot("services")[0]}:
                    self._queue.put(ns2)
            elif ns:
                self._queue.put(ns)
        elif resource == "endpointslices":
            labels = (obj.get("metadata") or {}).get("labels") or {}
            if labels.get(LABEL_MANAGED_BY) == MANAGED_BY:
                self._queue.put(obj["metadata"]["namespace"])

    def _run(self) -> None:
        while True:
            ns = self._queue.get()
            if ns is None:
                return
            pending = {ns}
            while True:  # coalesce bursts
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    return
                pending.add(more)
            for n in sorted(pending):
                try:
                    self.sync_namespace(n)
                except Exception:
                    log.exception("endpointslice sync of %s failed", n)

    def sync_namespace(self, ns: str) -> None:
        # The stored objects, read-only (copies of 375 pods took 0.1 s a sync).
        services = self.store.snapshot("services", ns)[0]
        pods = self.store.snapshot("pods", ns)[0]
        nodes = {n["metadata"]["name"]: n for n in self.store.snapshot("nodes")[0]}
        slices = [
            s
            for s in self.store.snapshot("endpointslices", ns)[0]
            if (s["metadata"].get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGED_BY
        ]
        by_svc: dict[str, list[Obj]] = {}
        for s in slices:
            by_svc.setdefault(s["metadata"]["labels"].get(LABEL_SERVICE, ""), []).append(s)
        live = set()
        for svc in services:
            spec = svc.get("spec") or {}
            name = svc["metadata"]["name"]
            if not spec.get("selector") or spec.get("type") == "ExternalName":
                continue
            live.add(name)
            self._sync_service(svc, pods, nodes, by_svc.get(name, []))
        for svc_name, ss in by_svc.items():
            if svc_name not in live:
                for s in ss:
                    self._delete(s)

    def _delete(self, s: Obj) -> None:
        with contextlib.suppress(ApiError):
            self.store.delete("endpointslices", s["metadata"]["namespace"], s["metadata"]["name"])

    def _sync_service(
        self, svc: Obj, pods: list[Obj], nodes: dict[str, Obj], existing: list[Obj]
    ) -> None:
        spec = svc["spec"]
        meta = svc["metadata"]
        ns, name = meta["namespace"], meta["name"]
        families = list(spec.get("ipFamilies") or ["IPv4"])
        publish = bool(spec.get("publishNotReadyAddresses"))
        # (family, ports-json) -> endpoints
        groups: dict[tuple[str, str], list[Obj]] = {}
        for pod in pods:
            if not _selector_matches(spec["selector"], pod):
                continue
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            ips = _pod_ips(pod)
            if not ips:
                continue
            ports = []
            for sp in spec.get("ports") or []:
                num = _resolve_port(pod, sp)
                if num is None:
                    continue
                p: dict[str, Any] = {
                    "name": sp.get("name", ""),
                    "port": num,
                    "protocol": sp.get("protocol", "TCP"),
                }
                if sp.get("appProtocol"):
                    p["appProtocol"] = sp["appProtocol"]
                ports.append(p)
            pmeta = pod["metadata"]
            terminating = bool(pmeta.get("deletionTimestamp"))
            ready = _pod_ready(pod)
            pspec = pod.get("spec") or {}
            for fam in families:
                ip = next((i for i in ips if _family(i) == fam), None)
                if ip is None:
                    continue
                ep: dict[str, Any] = {
                    "addresses": [ip],
                    "conditions": {
                        "ready": publish or (ready and not terminating),
                        "serving": publish or ready,
                        "terminating": terminating,
                    },
                    "targetRef": {
                        "kind": "Pod",
                        "namespace": ns,
                        "name": pmeta["name"],
                        "uid": pmeta["uid"],
                    },
                }
                if pspec.get("nodeName"):
                    ep["nodeName"] = pspec["nodeName"]
                    zone = (
                        (nodes.get(pspec["nodeName"]) or {})
                        .get("metadata", {})
                        .get("labels", {})
                        .get("topology.kubernetes.io/zone")
                    )
                    if zone:
                        ep["zone"] = zone
                if pspec.get("hostname") and pspec.get("subdomain") == name:
                    ep["hostname"] = pspec["hostname"]
                key = (fam, json.dumps(ports, sort_keys=True))
                groups.setdefault(key, []).append(ep)
        desired: dict[str, Obj] = {}
        for fam in families:
            if not any(k[0] == fam for k in groups):
                # One placeholder slice per address family, like kube-controller-manager's
                # (v1.28 reconcileByAddressType): no endpoints, no ports.
                groups[(fam, "[]")] = []
        labels = dict(meta.get("labels") or {})
        labels.pop(LABEL_HEADLESS, None)
        labels[LABEL_SERVICE] = name
        labels[LABEL_MANAGED_BY] = MANAGED_BY
        if spec.get("clusterIP") == "None":
            labels[LABEL_HEADLESS] = ""
        for (fam, ports_json), eps in sorted(groups.items()):
            eps.sort(key=lambda e: e["targetRef"]["name"])
            chunks = [eps[i : i + MAX_ENDPOINTS] for i in range(0, len(eps), MAX_ENDPOINTS)] or [[]]
            for idx, chunk in enumerate(chunks):
                digest = hashlib.sha256(f"{fam}|{ports_json}|{idx}".encode()).hexdigest()
                sname = f"{name[:57]}-{_short(digest)}"
                desired[sname] = {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "name": sname,
                        "namespace": ns,
                        "labels": labels,
                        "annotations": {},
                        "ownerReferences": [
                            {
                                "apiVersion": "v1",
                                "kind": "Service",
                                "name": name,
                                "uid": meta["uid"],
                                "controller": True,
                                "blockOwnerDeletion": True,
                            }
                        ],
                    },
                    "addressType": fam,
                    # Empty lists come back from the real API server's storage as null: the
                    # placeholder of a Service without pods is endpoints null, ports null.
                    "endpoints": chunk or None,
                    "ports": json.loads(ports_json) or None,
                }
        current = {s["metadata"]["name"]: s for s in existing}
        for sname, want in desired.items():
            have = current.get(sname)
            try:
                if have is None:
                    self.store.create("endpointslices", want, ns)
                elif (
                    have.get("endpoints") != want["endpoints"]
                    or have.get("ports") != want["ports"]
                    or have["metadata"].get("labels") != labels
                    or have["metadata"].get("ownerReferences")
                    != want["metadata"]["ownerReferences"]
                ):
                    upd = copy.deepcopy(have)
                    upd["metadata"]["labels"] = labels
                    upd["metadata"]["ownerReferences"] = want["metadata"]["ownerReferences"]
                    upd["endpoints"] = want["endpoints"]
                    upd["ports"] = want["ports"]
                    self.store.update("endpointslices", upd, ns)
            except ApiError as e:  # raced with someone: the next event resyncs
                log.debug("endpointslice %s/%s: %s", ns, sname, e)
                if e.code == 409:
                    self._requeue(ns)
        for sname, have in current.items():
            if sname not in desired:
                self._delete(have)

    def _requeue(self, ns: str) -> None:
        self._queue.put(ns)


_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def _short(hexdigest: str) -> str:
    n = int(hexdigest[:16], 16)
    out = ""
    for _ in range(5):
        n, r = divmod(n, len(_ALPHABET))
        out += _ALPHABET[r]
    return out
