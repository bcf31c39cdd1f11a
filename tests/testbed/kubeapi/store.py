"""The object store: one lock, one global resourceVersion, a bounded event log for watches.

Validation and defaulting of what is written are :mod:`.admission`."""

from __future__ import annotations

import builtins
import copy
import logging
import queue
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from .admission import Defaults, validate
from .errors import ApiError, already_exists, bad_request, conflict, invalid, not_found
from .resources import BY_KEY, Resource, lookup

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Subscriber = Callable[[str, str, Obj], None]

RETURN_DELETED = {"pods", "services", "namespaces"}
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


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
        self._defaults = Defaults()
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
        in commit order; ``obj`` is the stored object (read-only). Returns an unsubscribe
        function."""
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
                for cb in subs:  # the stored object: subscribers only read it
                    try:
                        cb(etype, rkey, obj)
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
        """Copies of the objects (sorted by namespace and name) and the resourceVersion."""
        items, rv = self.snapshot(resource, ns, match)
        return copy.deepcopy(items), rv

    def snapshot(
        self, resource: str, ns: str | None = None, match: Callable[[Obj], bool] | None = None
    ) -> tuple[builtins.list[Obj], int]:
        """The stored objects themselves (read-only: never change them), sorted by namespace
        and name, and the resourceVersion they are at. The lock is held only to take the
        references: a committed object is never mutated, so readers (a list's answer, the
        EndpointSlice controller) filter and serialize them without blocking writers (with
        copies made under the lock, a list of 375 pods held every write up for 0.1 s)."""
        res = lookup(resource)
        with self.lock:
            pairs = list(self._objs[res.key].items())
            rv = self._rv
        pairs.sort(key=lambda kv: kv[0])
        items = [o for k, o in pairs if (not ns or k[0] == ns) and (match is None or match(o))]
        return items, rv

    def list_at(
        self, resource: str, ns: str | None, match: Callable[[Obj], bool], rv: int
    ) -> builtins.list[Obj]:
        """The objects as they were at ``rv`` (a paged list's later pages: the API server
        serves them from the first page's snapshot), rebuilt from the event log; ``Expired``
        once ``rv`` has left it (etcd compacted it). Stored objects, read-only, as
        :meth:`snapshot`'s."""
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
        return [o for k, o in sorted(state.items()) if (not ns or k[0] == ns) and match(o)]

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
        validate(res, obj)
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
        self._defaults.on_create(res, obj)
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
            validate(res, result)
            self._defaults.on_update(res, cur, result)
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
