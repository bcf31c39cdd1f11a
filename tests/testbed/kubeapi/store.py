"""The object store: one lock, one global resourceVersion, a bounded event log for watches."""

from __future__ import annotations

import builtins
import copy
import ipaddress
import logging
import queue
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from .errors import ApiError, already_exists, bad_request, conflict, invalid, not_found
from .resources import BY_KEY, Resource, lookup

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Subscriber = Callable[[str, str, Obj], None]

RETURN_DELETED = {"pods", "services", "namespaces"}
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def now_iso(offset: float = 0.0) -> str:
    t = datetime.now(UTC) + timedelta(seconds=offset)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Event(NamedTuple):
    rv: int
    type: str  # ADDED / MODIFIED / DELETED
    resource: str  # storage key
    obj: Obj  # never mutated after commit
    old: Obj | None  # previous state for MODIFIED


class Expired(Exception):
    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")


@dataclass(eq=False)
class Watcher:
    resource: str
    namespace: str | None
    queue: queue.Queue[Event | None] = field(default_factory=queue.Queue)
    cut: bool = False


def _meta(obj: Obj) -> dict[str, Any]:
    m = obj.get("metadata")
    if not isinstance(m, dict):
        m = {}
        obj["metadata"] = m
    return m


def _ns_name(obj: Obj) -> tuple[str, str]:
    m = obj.get("metadata") or {}
    return (m.get("namespace") or "", m.get("name") or "")


class Store:
    """Thread-safe object store. Objects handed out are copies; stored dicts are immutable."""

    def __init__(self, watch_window: int = 1000, grace_timer: bool = True) -> None:
        self.lock = threading.RLock()
        self.watch_window = watch_window
        self.grace_timer = grace_timer
        self._objs: dict[str, dict[tuple[str, str], Obj]] = {k: {} for k in BY_KEY}
        self._rv = 0
        self._log: deque[Event] = deque()
        self._compacted = 0  # rv of the newest event dropped from the log
        self._watchers: set[Watcher] = set()
        self._subscribers: list[Subscriber] = []
        self._pending: deque[tuple[str, str, Obj]] = deque()
        self._drain_lock = threading.Lock()
        self._draining = False
        self._deadlines: dict[tuple[str, str], float] = {}  # terminating pods -> monotonic
        self._grace_done: set[tuple[str, str, str]] = set()
        self._wake = threading.Event()
        self._stopping = False
        self._next_v4 = int(ipaddress.IPv4Address("10.96.0.10"))
        self._next_v6 = int(ipaddress.IPv6Address("fd00:10:96::a"))
        self._next_node_port = 30000
        for ns in INITIAL_NAMESPACES:
            self.create("namespaces", {"metadata": {"name": ns}})
        self._reaper = threading.Thread(target=self._reap_loop, name="kubeapi-reaper", daemon=True)
        self._reaper.start()

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        with self.lock:
            for w in list(self._watchers):
                w.queue.put(None)
            self._watchers.clear()

    @property
    def resource_version(self) -> int:
        with self.lock:
            return self._rv

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """callback(event_type, resource, obj) after each committed change, outside the lock,
        in commit order. Returns an unsubscribe function."""
        with self.lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self.lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def _commit(self, etype: str, res: Resource, obj: Obj, old: Obj | None) -> Obj:
        """Assign a new rv, store (or remove) and log. Caller holds the lock."""
        self._rv += 1
        obj = copy.deepcopy(obj)
        obj["kind"] = res.kind
        obj["apiVersion"] = res.api_version
        _meta(obj)["resourceVersion"] = str(self._rv)
        key = _ns_name(obj)
        if etype == "DELETED":
            self._objs[res.key].pop(key, None)
            if res.key == "pods":
                self._deadlines.pop(key, None)
            self._grace_done.discard((res.key, *key))
        else:
            self._objs[res.key][key] = obj
        ev = Event(self._rv, etype, res.key, obj, old)
        self._log.append(ev)
        while len(self._log) > self.watch_window:
            self._compacted = self._log.popleft().rv
        for w in self._watchers:
            if w.resource == res.key:
                w.queue.put(ev)
        if self._subscribers:
            self._pending.append((etype, res.key, obj))
        return obj

    def _drain(self) -> None:
        """Deliver pending notifications outside the store lock, in order, one thread at a time."""
        with self._drain_lock:
            if self._draining:
                return
            self._draining = True
        try:
            while True:
                with self.lock:
                    if not self._pending:
                        with self._drain_lock:
                            self._draining = False
                        return
                    etype, rkey, obj = self._pending.popleft()
                    subs = list(self._subscribers)
                for cb in subs:
                    try:
                        cb(etype, rkey, copy.deepcopy(obj))
                    except Exception:
                        log.exception("store subscriber failed")
        except BaseException:
            with self._drain_lock:
                self._draining = False
            raise

    # ------------------------------------------------------------------ reads
    def get(self, resource: str, ns: str | None, name: str) -> Obj | None:
        res = lookup(resource)
        with self.lock:
            obj = self._objs[res.key].get((ns or "" if res.namespaced else "", name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, resource: str, ns: str | None = None) -> list[Obj]:
        return self.list_rv(resource, ns)[0]

    def list_rv(
        self, resource: str, ns: str | None = None, match: Callable[[Obj], bool] | None = None
    ) -> tuple[builtins.list[Obj], int]:
        res = lookup(resource)
        with self.lock:
            items = [
                o
                for k, o in sorted(self._objs[res.key].items())
                if (not ns or k[0] == ns) and (match is None or match(o))
            ]
            return copy.deepcopy(items), self._rv

    def list_at(
        self, resource: str, ns: str | None, match: Callable[[Obj], bool], rv: int
    ) -> builtins.list[Obj]:
        """The objects as they were at ``rv`` (a paged list's later pages: the API server
        serves them from the first page's snapshot), rebuilt from the event log; ``Expired``
        once ``rv`` has left it (etcd compacted it)."""
        res = lookup(resource)
        with self.lock:
            if rv < self._compacted:
                raise Expired(rv, self._log[0].rv if self._log else self._rv)
            state = dict(self._objs[res.key])
            for ev in reversed(self._log):
                if ev.rv <= rv:
                    break
                if ev.resource != res.key:
                    continue
                key = _ns_name(ev.obj)
                if ev.type == "ADDED":
                    state.pop(key, None)
                else:  # MODIFIED: the state before; DELETED: the last state
                    state[key] = ev.old if ev.old is not None else ev.obj
            items = [o for k, o in sorted(state.items()) if (not ns or k[0] == ns) and match(o)]
            return copy.deepcopy(items)

    def watch(self, resource: str, ns: str | None, resource_version: str | None) -> Watcher:
        """Register a watcher; its queue first holds the replay, then live events."""
        res = lookup(resource)
        w = Watcher(res.key, ns or None)
        with self.lock:
            if resource_version in (None, "", "0"):
                for k, o in sorted(self._objs[res.key].items()):
                    if not ns or k[0] == ns:
                        w.queue.put(Event(self._rv, "ADDED", res.key, o, None))
            else:
                try:
                    since = int(resource_version)
                except ValueError:
                    raise bad_request(f'invalid resource version "{resource_version}"') from None
                if since < self._compacted:
                    raise Expired(since, self._log[0].rv if self._log else self._rv)
                for ev in self._log:
                    if ev.rv > since and ev.resource == res.key:
                        w.queue.put(ev)
            self._watchers.add(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        with self.lock:
            self._watchers.discard(w)

    def cut_watches(self) -> int:
        with self.lock:
            ws = list(self._watchers)
            self._watchers.clear()
        for w in ws:
            w.cut = True
            w.queue.put(None)
        return len(ws)

    # ------------------------------------------------------------------ writes
    def create(self, resource: str, obj: Obj, ns: str | None = None) -> Obj:
        res = lookup(resource)
        try:
            with self.lock:
                return copy.deepcopy(self._create(res, obj, ns))
        finally:
            self._drain()

    def _create(self, res: Resource, obj: Obj, ns: str | None) -> Obj:
        if not isinstance(obj, dict):
            raise bad_request("the body of the request was in an unknown format")
        obj = copy.deepcopy(obj)
        meta = _meta(obj)
        if res.namespaced:
            body_ns = meta.get("namespace")
            if ns and body_ns and body_ns != ns:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request"
                )
            ns = ns or body_ns or "default"
            meta["namespace"] = ns
            if ("", ns) not in self._objs["namespaces"]:
                raise not_found("namespaces", "", ns)
        else:
            meta.pop("namespace", None)
            ns = ""
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(
                secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5)
            )
        self._validate(res, obj)
        name = meta["name"]
        if (ns, name) in self._objs[res.key]:
            raise already_exists(res.name, res.group, name)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso()
        for k in (
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ):
            meta.pop(k, None)
        if res.has_generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        self._default_create(res, obj)
        return self._commit("ADDED", res, obj, None)

    def update(
        self, resource: str, obj: Obj, ns: str | None = None, subresource: str | None = None
    ) -> Obj:
        """PUT semantics; conflict when metadata.resourceVersion is set and stale."""
        res = lookup(resource)
        try:
            with self.lock:
                meta = obj.get("metadata") or {}
                name = meta.get("name") or ""
                ns = (ns or meta.get("namespace") or "default") if res.namespaced else ""
                cur = self._objs[res.key].get((ns, name))
                if cur is None:
                    raise not_found(res.name, res.group, name)
                return copy.deepcopy(self._update(res, cur, obj, subresource))
        finally:
            self._drain()

    def mutate(
        self,
        resource: str,
        ns: str | None,
        name: str,
        fn: Callable[[Obj], Obj],
        subresource: str | None = None,
    ) -> Obj:
        """Read-modify-write under the lock (PATCH): ``fn`` gets a copy of the current object."""
        res = lookup(resource)
        try:
            with self.lock:
                key = ((ns or "") if res.namespaced else "", name)
                cur = self._objs[res.key].get(key)
                if cur is None:
                    raise not_found(res.name, res.group, name)
                new = fn(copy.deepcopy(cur))
                if not isinstance(new, dict):
                    raise ApiError(422, "the patched object is not a JSON object")
                uid = _meta(new).get("uid")
                if uid != cur["metadata"]["uid"]:
                    # kube-apiserver: the patch sets it, update validation refuses the change
                    # (a PUT with another uid is a 409 precondition failure instead).
                    why = f'Invalid value: "{uid}": field is immutable'
                    raise invalid(
                        res.kind, res.group, name, [("metadata.uid", "FieldValueInvalid", why)]
                    )
                return copy.deepcopy(self._update(res, cur, new, subresource))
        finally:
            self._drain()

    def _update(self, res: Resource, cur: Obj, new: Obj, subresource: str | None) -> Obj:
        new = copy.deepcopy(new)
        nmeta = _meta(new)
        cmeta = cur["metadata"]
        if nmeta.get("name") and nmeta["name"] != cmeta["name"]:
            raise bad_request(
                f"the name of the object ({nmeta['name']}) does not match the name on the URL "
                f"({cmeta['name']})"
            )
        if res.namespaced and nmeta.get("namespace") and nmeta["namespace"] != cmeta["namespace"]:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        rv = nmeta.get("resourceVersion")
        if rv and rv != cmeta["resourceVersion"]:
            raise conflict(res.name, res.group, cmeta["name"])
        if nmeta.get("uid") and nmeta["uid"] != cmeta["uid"]:
            raise conflict(
                res.name,
                res.group,
                cmeta["name"],
                f"Precondition failed: UID in precondition: {nmeta['uid']}, "
                f"UID in object meta: {cmeta['uid']}",
            )
        if subresource == "status":
            result = copy.deepcopy(cur)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
        else:
            result = new
            rmeta = result["metadata"]
            for k in (
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
            ):
                if k in cmeta:
                    rmeta[k] = cmeta[k]
                else:
                    rmeta.pop(k, None)
            if res.subresources and "status" in res.subresources:
                if "status" in cur:
                    result["status"] = copy.deepcopy(cur["status"])
                else:
                    result.pop("status", None)
            if cmeta.get("deletionTimestamp") and set(rmeta.get("finalizers") or []) - set(
                cmeta.get("finalizers") or []
            ):
                raise invalid(
                    res.kind,
                    res.group,
                    cmeta["name"],
                    [
                        (
                            "metadata.finalizers",
                            "FieldValueForbidden",
                            "Forbidden: no new finalizers can be added if the object is being "
                            "deleted",
                        )
                    ],
                )
            self._validate(res, result)
            self._default_update(res, cur, result)
        result["kind"] = res.kind
        result["apiVersion"] = res.api_version
        result["metadata"]["resourceVersion"] = cmeta["resourceVersion"]
        if result == cur:
            return cur  # no-op writes do not bump resourceVersion, like etcd3 storage
        if res.has_generation and self._spec_of(res, result) != self._spec_of(res, cur):
            result["metadata"]["generation"] = int(cmeta.get("generation") or 0) + 1
        out = self._commit("MODIFIED", res, result, cur)
        self._maybe_remove(res, out)
        return out

    @staticmethod
    def _spec_of(res: Resource, obj: Obj) -> Any:
        if res.name == "endpointslices":
            return (obj.get("addressType"), obj.get("endpoints"), obj.get("ports"))
        return obj.get("spec")

    def _maybe_remove(self, res: Resource, obj: Obj) -> bool:
        """Remove an object whose deletion is pending once nothing holds it any more."""
        meta = obj["metadata"]
        if not meta.get("deletionTimestamp") or meta.get("finalizers"):
            return False
        key = (res.key, meta.get("namespace") or "", meta["name"])
        if (
            res.key == "pods"
            and key not in self._grace_done
            and meta.get("deletionGracePeriodSeconds")
        ):
            return False
        self._commit("DELETED", res, obj, None)
        return True

    def delete(
        self,
        resource: str,
        ns: str | None,
        name: str,
        grace_period_seconds: int | None = None,
        preconditions: dict[str, Any] | None = None,
    ) -> tuple[Obj, bool]:
        """Returns (object, gone). Pods bound to a node terminate gracefully."""
        res = lookup(resource)
        try:
            with self.lock:
                obj, gone = self._delete(res, ns, name, grace_period_seconds, preconditions)
                return copy.deepcopy(obj), gone
        finally:
            self._drain()

    def _delete(
        self,
        res: Resource,
        ns: str | None,
        name: str,
        grace: int | None,
        preconditions: dict[str, Any] | None,
    ) -> tuple[Obj, bool]:
        key = ((ns or "") if res.namespaced else "", name)
        cur = self._objs[res.key].get(key)
        if cur is None:
            raise not_found(res.name, res.group, name)
        cmeta = cur["metadata"]
        pre = preconditions or {}
        if pre.get("uid") and pre["uid"] != cmeta["uid"]:
            raise conflict(
                res.name,
                res.group,
                name,
                f"Precondition failed: UID in precondition: {pre['uid']}, "
                f"UID in object meta: {cmeta['uid']}",
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != cmeta["resourceVersion"]:
            raise conflict(
                res.name,
                res.group,
                name,
                f"Precondition failed: ResourceVersion in precondition: "
                f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                f"{cmeta['resourceVersion']}",
            )
        if res.key == "namespaces":
            for rkey, objs in self._objs.items():
                if BY_KEY[rkey].namespaced:
                    for k in [k for k in objs if k[0] == name]:
                        self._commit("DELETED", BY_KEY[rkey], objs[k], None)
            gone = dict(cur)
            gone["status"] = {"phase": "Terminating"}
            return self._commit("DELETED", res, gone, None), True
        is_pod = res.key == "pods"
        if is_pod:
            spec = cur.get("spec") or {}
            if grace is None:
                grace = spec.get("terminationGracePeriodSeconds")
                grace = 30 if grace is None else int(grace)
            phase = (cur.get("status") or {}).get("phase")
            if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
                grace = 0
            grace = max(0, int(grace))
        else:
            grace = 0
        if cmeta.get("deletionTimestamp"):
            # already terminating: only a shorter grace period may be given
            old = cmeta.get("deletionGracePeriodSeconds")
            if not is_pod or old is None or grace >= int(old):
                return cur, False
            obj = copy.deepcopy(cur)
            start = datetime.strptime(cmeta["deletionTimestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=UTC
            ) - timedelta(seconds=int(old))
            obj["metadata"]["deletionTimestamp"] = (start + timedelta(seconds=grace)).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
            obj["metadata"]["deletionGracePeriodSeconds"] = grace
            if grace == 0:
                self._grace_done.add((res.key, *key))
                if self._maybe_remove(res, obj):
                    return self._objs[res.key].get(key) or obj, True
            out = self._commit("MODIFIED", res, obj, cur)
            if grace > 0:
                self._deadlines[key] = time.monotonic() + grace
                self._wake.set()
            return out, False
        if grace > 0 or cmeta.get("finalizers"):
            obj = copy.deepcopy(cur)
            obj["metadata"]["deletionTimestamp"] = now_iso(grace)
            obj["metadata"]["deletionGracePeriodSeconds"] = grace
            if cmeta.get("generation"):
                obj["metadata"]["generation"] = int(cmeta["generation"]) + 1
            if grace == 0:
                self._grace_done.add((res.key, *key))
            out = self._commit("MODIFIED", res, obj, cur)
            if grace > 0 and is_pod:
                self._deadlines[key] = time.monotonic() + grace
                self._wake.set()
            return out, False
        return self._commit("DELETED", res, cur, None), True

    def finalize_delete(self, resource: str, ns: str | None, name: str) -> bool:
        """The kubelet is done with a terminating object: remove it now (unless finalizers hold
        it, then it goes when they are removed). Returns True if it was removed."""
        res = lookup(resource)
        try:
            with self.lock:
                key = ((ns or "") if res.namespaced else "", name)
                cur = self._objs[res.key].get(key)
                if cur is None:
                    return False
                self._grace_done.add((res.key, *key))
                self._deadlines.pop(key, None)
                if cur["metadata"].get("finalizers"):
                    return False
                self._commit("DELETED", res, cur, None)
                return True
        finally:
            self._drain()

    def _reap_loop(self) -> None:
        while not self._stopping:
            with self.lock:
                now = time.monotonic()
                due = [k for k, t in self._deadlines.items() if t <= now]
                nxt = min(self._deadlines.values(), default=now + 1.0)
            for ns, name in due:
                if self.grace_timer:
                    self.finalize_delete("pods", ns, name)
                else:
                    with self.lock:
                        self._deadlines.pop((ns, name), None)
            self._wake.wait(max(0.01, min(1.0, nxt - time.monotonic())))
            self._wake.clear()

    # ------------------------------------------------------------------ validation / defaults
    def _validate(self, res: Resource, obj: Obj) -> None:
        meta = obj["metadata"]
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
        spec = obj.get("spec")
        if res.key == "pods":
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
        elif res.key == "services":
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
        elif res.key == "endpointslices":
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
        elif res.key == "leases":
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
        if causes:
            raise invalid(res.kind, res.group, name, causes)

    def _default_create(self, res: Resource, obj: Obj) -> None:
        if res.key == "pods":
            self._default_pod_spec(obj)
            obj["status"] = {"phase": "Pending", "qosClass": _qos(obj["spec"])}
        elif res.key == "services":
            self._default_service(obj, None)
            obj["status"] = {"loadBalancer": {}}
        elif res.key == "namespaces":
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
            labels = obj["metadata"].setdefault("labels", {})
            labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]

    def _default_update(self, res: Resource, cur: Obj, new: Obj) -> None:
        if res.key == "pods":
            self._default_pod_spec(new)
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
            self._default_service(new, cur)
        elif res.key == "namespaces":
            new.setdefault("spec", copy.deepcopy(cur.get("spec", {})))
            new["status"] = copy.deepcopy(cur.get("status", {}))
            labels = new["metadata"].setdefault("labels", {})
            labels["kubernetes.io/metadata.name"] = new["metadata"]["name"]

    @staticmethod
    def _default_pod_spec(obj: Obj) -> None:
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
            ip = str(ipaddress.IPv6Address(self._next_v6))
            self._next_v6 += 1
        else:
            ip = str(ipaddress.IPv4Address(self._next_v4))
            self._next_v4 += 1
        return ip

    def _default_service(self, obj: Obj, cur: Obj | None) -> None:
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
                        p["nodePort"] = self._next_node_port
                        self._next_node_port += 1
            if (
                stype == "LoadBalancer"
                and spec.get("externalTrafficPolicy") == "Local"
                and not spec.get("healthCheckNodePort")
            ):
                spec["healthCheckNodePort"] = cspec.get("healthCheckNodePort") or (
                    self._next_node_port
                )
                if not cspec.get("healthCheckNodePort"):
                    self._next_node_port += 1


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
