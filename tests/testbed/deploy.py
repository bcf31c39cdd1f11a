"""A Deployment-like helper: N replicas of a pod template, scaling and rolling updates.

::

    with RollingUpdate(api.api_client(), "web", template, replicas=3, nodes=["node-a"]) as d:
        d.scale(3)                      # creates pods, waits until they are Ready
        report = d.rolling_update(new_template, max_surge=1, max_unavailable=0)
        print(report.summary())

Like the Deployment controller, it reads its pods from a watch (list + watch by label, in a
thread: :class:`~tests.testbed.podsource.PodSource`), and after each of its own writes it waits
until the watch has seen it before it decides again (the controller's "expectations"); so it is
a context manager, or :meth:`RollingUpdate.close` ends the watch. Listing every pod each
``poll_interval`` instead cost 0.08 s a list at 375 pods: most of a core at 20 lists a second.

There is no ReplicaSet object and no scheduler: pods are created directly (through the official
``kubernetes`` client) with labels ``app=<name>`` and ``pod-template-hash=<hash of the
template>``, names ``<name>-<hash>-<5 chars>`` and ``spec.nodeName`` set to the node with the
fewest of this helper's pods (round robin). The rollout follows the Deployment controller's
rules: never more than ``replicas + max_surge`` pods that are not terminating, never fewer than
``replicas - max_unavailable`` Ready pods (condition ``Ready`` True, so readiness gates hold it
back), scale up the new template first, delete old pods (not-ready ones first) as the budget
allows, terminating pods do not count. Pods are deleted gracefully (the template's
``terminationGracePeriodSeconds``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.testbed.node import random_suffix
from tests.testbed.podsource import PodSource, pod_key
from tests.testbed.podstatus import resource_version

Obj = dict[str, Any]


def template_hash(template: Mapping[str, Any]) -> str:
    """A stable short hash of a pod template (like ``pod-template-hash``)."""
    raw = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:10]


def is_ready(pod: Obj) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False


def is_terminating(pod: Obj) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


class PodCache:
    """The pods of one label selector in one namespace, kept by a watch; :meth:`wait_seen`
    blocks until the watch has delivered a given resourceVersion (the writer's own write)."""

    def __init__(self, api_client: client.ApiClient, namespace: str, label_selector: str) -> None:
        self._pods: dict[str, Obj] = {}
        self._rv = 0
        self._cond = threading.Condition()
        self.errors: list[str] = []
        self._source = PodSource(
            api_client, label_selector, self._on_event, self._known, self.errors.append,
            field_selector=f"metadata.namespace={namespace}", label_selector=label_selector,
            watch_timeout=30, on_listed=self._on_listed,
        )  # fmt: skip
        self._started = False
        self._listed = False

    def _on_event(self, _: str, etype: str, obj: Obj) -> None:
        with self._cond:
            key = pod_key(obj)
            if etype == "DELETED":
                self._pods.pop(key, None)
            else:
                self._pods[key] = obj
            self._rv = max(self._rv, resource_version(obj))
            self._cond.notify_all()

    def _on_listed(self, _: str, rv: int) -> None:
        with self._cond:
            self._listed = True
            self._rv = max(self._rv, rv)
            self._cond.notify_all()

    def _known(self, _: str) -> dict[str, Obj]:
        with self._cond:
            return dict(self._pods)

    def pods(self) -> list[Obj]:
        with self._cond:
            return list(self._pods.values())

    def wait_seen(self, rv: int, timeout: float) -> None:
        """Until the first list is in and the watch has delivered resourceVersion ``rv``
        (TimeoutError after ``timeout`` s). Starts the watch the first time."""
        if not self._started:
            self._started = True
            self._source.start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._listed and self._rv >= rv, timeout):
                raise TimeoutError(
                    f"the pod watch did not see resourceVersion {rv} within {timeout}s "
                    f"(at {self._rv}; errors: {self.errors[-3:]})"
                )

    def close(self) -> None:
        self._source.stop()
        if self._started:
            self._source.join()


@dataclass
class PodTiming:
    name: str
    template_hash: str
    created_at: float | None = None  # seconds since the start of the operation
    ready_at: float | None = None
    delete_at: float | None = None
    gone_at: float | None = None


@dataclass
class Step:
    t: float  # seconds since the start of the operation
    action: str  # create | delete | ready | gone | done
    pod: str


@dataclass
class RolloutReport:
    """What :meth:`RollingUpdate.rolling_update` (or ``scale``) did, when."""

    old_hash: str
    new_hash: str
    started: float  # time.monotonic()
    total_s: float = 0.0
    steps: list[Step] = field(default_factory=list)
    pods: dict[str, PodTiming] = field(default_factory=dict)
    min_ready_seen: int | None = None
    max_pods_seen: int = 0

    def summary(self) -> str:
        new = [p for p in self.pods.values() if p.template_hash == self.new_hash]
        waits = [p.ready_at - p.created_at for p in new if p.ready_at and p.created_at]
        avg = sum(waits) / len(waits) if waits else 0.0
        return (
            f"rollout {self.old_hash}->{self.new_hash}: {self.total_s:.2f}s, {len(self.steps)} "
            f"steps, create->Ready avg {avg:.2f}s, min Ready {self.min_ready_seen}, "
            f"max pods {self.max_pods_seen}"
        )


class RollingUpdate:
    """Manages the pods of one app; see the module docstring."""

    def __init__(
        self,
        api_client: client.ApiClient,
        name: str,
        template: Mapping[str, Any],
        *,
        namespace: str = "default",
        replicas: int = 1,
        nodes: Sequence[str] = ("node-a",),
        poll_interval: float = 0.05,
        timeout: float = 120.0,
    ) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.name = name
        self.namespace = namespace
        self.template: Obj = copy.deepcopy(dict(template))
        self.replicas = replicas
        self.nodes = list(nodes)
        self.poll_interval = poll_interval
        self.timeout = timeout
        self._cache = PodCache(api_client, namespace, f"app={name}")
        self._written_rv = 0  # our last write's resourceVersion: the cache must reach it

    def close(self) -> None:
        """End the pod watch."""
        self._cache.close()

    def __enter__(self) -> RollingUpdate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def hash(self) -> str:
        return template_hash(self.template)

    # -- reading ------------------------------------------------------------------------
    def pods(self, include_terminating: bool = False) -> list[Obj]:
        """The app's pods as the watch has them, our own writes included (read-only)."""
        self._cache.wait_seen(self._written_rv, timeout=10)
        out = self._cache.pods()
        if not include_terminating:
            out = [p for p in out if not is_terminating(p)]
        return sorted(out, key=lambda p: p["metadata"]["name"])

    @staticmethod
    def _hash_of(pod: Obj) -> str:
        return str((pod["metadata"].get("labels") or {}).get("pod-template-hash", ""))

    # -- writing ------------------------------------------------------------------------
    def _create(self, template: Obj, counts: dict[str, int], report: RolloutReport) -> str:
        """One pod of ``template``, on the node with the fewest pods in ``counts`` (updated)."""
        h = template_hash(template)
        pod = copy.deepcopy(template)
        md = pod.setdefault("metadata", {})
        labels = dict(md.get("labels") or {})
        labels.update({"app": self.name, "pod-template-hash": h})
        md["labels"] = labels
        md["name"] = f"{self.name}-{h}-{random_suffix()}"
        md["namespace"] = self.namespace
        md.pop("resourceVersion", None)
        pod["apiVersion"] = "v1"
        pod["kind"] = "Pod"
        spec = pod.setdefault("spec", {})
        if not spec.get("nodeName"):
            node = min(self.nodes, key=lambda n: (counts[n], self.nodes.index(n)))
            counts[node] += 1
            spec["nodeName"] = node
        # Answers unread as models (building a V1Pod costs milliseconds; nothing reads it).
        resp = self.core.create_namespaced_pod(
            self.namespace, pod, _request_timeout=10, _preload_content=False
        )
        self._wrote(resp.data)
        self._step(report, "create", md["name"], h)
        return str(md["name"])

    def _by_node(self, pods: list[Obj]) -> dict[str, int]:
        counts = dict.fromkeys(self.nodes, 0)
        for p in pods:
            n = (p.get("spec") or {}).get("nodeName")
            if n in counts:
                counts[n] += 1
        return counts

    def _create_many(self, n: int, pods: list[Obj], report: RolloutReport) -> None:
        """``n`` pods of the current template, spread over the nodes counted once from ``pods``
        (not one list per pod: at 300 replicas that was O(n^2))."""
        counts = self._by_node(pods)
        for _ in range(n):
            self._create(self.template, counts, report)

    def _delete(self, name: str, report: RolloutReport | None = None) -> None:
        try:
            resp = self.core.delete_namespaced_pod(
                name, self.namespace, _request_timeout=10, _preload_content=False
            )
            self._wrote(resp.data)
        except ApiException as e:
            if e.status != 404:
                raise
        if report is not None:
            self._step(report, "delete", name, None)

    def _wrote(self, answer: bytes) -> None:
        """Note the resourceVersion of a write's answer (the pod as written)."""
        self._written_rv = max(self._written_rv, resource_version(json.loads(answer)))

    def _step(self, report: RolloutReport, action: str, pod: str, h: str | None) -> None:
        t = time.monotonic() - report.started
        report.steps.append(Step(t, action, pod))
        timing = report.pods.setdefault(pod, PodTiming(pod, h or ""))
        if action == "create":
            timing.created_at = t
        elif action == "ready":
            timing.ready_at = t
        elif action == "delete":
            timing.delete_at = t
        elif action == "gone":
            timing.gone_at = t

    # -- operations ---------------------------------------------------------------------
    def scale(self, replicas: int, *, wait: bool = True) -> RolloutReport:
        """Create or delete pods of the current template until there are ``replicas``."""
        self.replicas = replicas
        report = RolloutReport(self.hash, self.hash, time.monotonic())
        pods = self.pods()
        self._create_many(replicas - len(pods), pods, report)
        if len(pods) > replicas:
            extra = sorted(pods, key=lambda p: (is_ready(p), p["metadata"]["name"]))
            for p in extra[: len(pods) - replicas]:
                self._delete(p["metadata"]["name"], report)
        if wait:
            self._wait(report, lambda ps: len(ps) == replicas and all(is_ready(p) for p in ps))
        report.total_s = time.monotonic() - report.started
        return report

    def _wait(self, report: RolloutReport, done: Any) -> None:
        deadline = report.started + self.timeout
        while True:
            pods = self.pods()
            self._observe(report, pods)
            if done(pods):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: not done after {self.timeout}s: {report.steps}")
            time.sleep(self.poll_interval)

    def _observe(self, report: RolloutReport, pods: list[Obj]) -> None:
        for p in pods:
            name = p["metadata"]["name"]
            timing = report.pods.get(name)
            if is_ready(p) and (timing is None or timing.ready_at is None):
                if timing is None:
                    report.pods[name] = PodTiming(name, self._hash_of(p))
                self._step(report, "ready", name, self._hash_of(p))
        ready = sum(1 for p in pods if is_ready(p))
        if report.min_ready_seen is None or ready < report.min_ready_seen:
            report.min_ready_seen = ready
        report.max_pods_seen = max(report.max_pods_seen, len(pods))

    def rolling_update(
        self,
        new_template: Mapping[str, Any],
        *,
        max_surge: int = 1,
        max_unavailable: int = 0,
        wait_gone: bool = False,
    ) -> RolloutReport:
        """Replace every pod with one of ``new_template``; returns the timings.

        ``wait_gone``: also wait until the old pods have left the API server.
        """
        if max_surge < 0 or max_unavailable < 0 or max_surge + max_unavailable == 0:
            raise ValueError("max_surge + max_unavailable must be > 0")
        old_hash = self.hash
        self.template = copy.deepcopy(dict(new_template))
        new_hash = self.hash
        report = RolloutReport(old_hash, new_hash, time.monotonic())
        if old_hash == new_hash:
            return report
        deadline = report.started + self.timeout
        deleted: set[str] = set()
        while True:
            pods = self.pods()
            self._observe(report, pods)
            new = [p for p in pods if self._hash_of(p) == new_hash]
            old = [p for p in pods if self._hash_of(p) != new_hash]
            if not old and len(new) >= self.replicas and all(is_ready(p) for p in new):
                break
            # Scale up the new pods within the surge budget.
            room = self.replicas + max_surge - len(pods)
            self._create_many(max(0, min(room, self.replicas - len(new))), pods, report)
            # Scale down old pods while enough stay Ready (not-ready ones cost nothing).
            ready_total = sum(1 for p in pods if is_ready(p))
            min_ready = self.replicas - max_unavailable
            for p in sorted(old, key=lambda p: (is_ready(p), p["metadata"]["name"])):
                if is_ready(p):
                    if ready_total - 1 < min_ready:
                        break
                    ready_total -= 1
                self._delete(p["metadata"]["name"], report)
                deleted.add(p["metadata"]["name"])
            if time.monotonic() > deadline:
                raise TimeoutError(f"rollout not done after {self.timeout}s: {report.summary()}")
            time.sleep(self.poll_interval)
        if wait_gone:
            while True:
                names = {p["metadata"]["name"] for p in self.pods(include_terminating=True)}
                for n in deleted:
                    timing = report.pods.get(n)
                    if n not in names and timing is not None and timing.gone_at is None:
                        self._step(report, "gone", n, None)
                if not deleted & names:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"old pods not gone after {self.timeout}s")
                time.sleep(self.poll_interval)
        report.total_s = time.monotonic() - report.started
        report.steps.append(Step(report.total_s, "done", ""))
        return report

    def delete_all(self, *, wait: bool = False, timeout: float = 60.0) -> None:
        for p in self.pods():
            self._delete(p["metadata"]["name"])
        deadline = time.monotonic() + timeout
        while wait and self.pods(include_terminating=True):
            if time.monotonic() > deadline:
                raise TimeoutError("pods not gone")
            time.sleep(self.poll_interval)
