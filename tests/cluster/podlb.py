"""podlb on the real cluster: install it as users do, HAProxy on the node, test workloads."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from tests.cluster.cluster import NODE_IP, Cluster
from tests.cluster.images import APP
from tests.testbed.haproxy import HAProxy
from tests.testbed.slowlb import SlowRuntimeProxy
from tests.testbed.waiting import tcp_alive, wait_for

OVERLAY = Path(__file__).parent / "overlay"
SPLIT_OVERLAY = Path(__file__).parent / "overlay-split"
AGENT_NS = "podlb-system"
AGENT_SELECTOR = "app.kubernetes.io/component=agent"
RUNTIME_PORT = 19999  # the overlays' PODLB_HAPROXY_RUNTIME, on the node's address
APP_NS = "podlb-e2e"
# One HAProxy backend per Service the tests create: <namespace>.<service>.<port name>.
SERVICES = ("gate", "roll-podlb", "roll-exec", "roll-nohook", "roll-sleep", "agentroll", "split")
BACKENDS = tuple(f"{APP_NS}.{s}.http" for s in SERVICES)
LB_READY = "podlb.io/lb-ready"
DATAPATH_READY = "podlb.io/datapath-ready"


@dataclass
class NodeLB:
    """HAProxy on the node, its Runtime API behind a proxy on the node's address (port 19999,
    reached from host-network and pod-network agents alike) whose ``delay_s`` models a cloud
    LB's API latency (0: HAProxy as it is)."""

    haproxy: HAProxy
    api: SlowRuntimeProxy

    def servers(self, backend: str) -> dict[str, dict[str, str]]:
        return self.haproxy.servers(backend)

    def url(self, backend: str) -> str:
        return f"http://127.0.0.1:{self.haproxy.ports[backend]}/"


@contextlib.contextmanager
def node_haproxy() -> Iterator[NodeLB]:
    """HAProxy as a cloud L4 LB behaves: no retry on another server."""
    with (
        HAProxy(
            backends=BACKENDS, frontends=dict.fromkeys(BACKENDS, 0), extra_defaults=("retries 0",)
        ) as haproxy,
        SlowRuntimeProxy(haproxy.socket_path, 0.0, tcp_port=RUNTIME_PORT, tcp_host=NODE_IP) as api,
    ):
        yield NodeLB(haproxy, api)


def until(what: str, check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1) -> Any:
    """:func:`tests.testbed.waiting.wait_for`, but an exception from ``check`` (the cluster's
    API not answering yet) counts as "not yet"; the timeout says what ``check`` last gave."""
    last: list[Any] = [None]

    def attempt() -> Any:
        try:
            last[0] = check()
        except Exception as e:
            last[0] = e
            return None
        return last[0]

    try:
        return wait_for(attempt, timeout, what, interval=interval)
    except AssertionError:
        raise AssertionError(f"{what}: not after {timeout:.0f} s (last: {last[0]!r})") from None


def can(
    api: client.ApiClient,
    user: str,
    verb: str,
    resource: str,
    group: str = "",
    namespace: str = "",
) -> bool:
    """A SubjectAccessReview: may ``user`` (a service account of ``AGENT_NS``) do ``verb`` on
    ``resource`` (``pods/status``: a subresource) of ``group`` in ``namespace`` ("" = all)?"""
    res, _, sub = resource.partition("/")
    review = client.AuthorizationV1Api(api).create_subject_access_review({
        "spec": {"user": user, "groups": ["system:serviceaccounts",
                                          f"system:serviceaccounts:{AGENT_NS}"],
                 "resourceAttributes": {"verb": verb, "resource": res, "subresource": sub,
                                        "group": group, "namespace": namespace}},
    })  # fmt: skip
    return bool(review.status.allowed)


def condition(pod: Any, ctype: str) -> Any:
    for c in pod.status.conditions or ():
        if c.type == ctype:
            return c
    return None


class Podlb:
    """``kubectl apply -k tests/cluster/overlay`` and the handles the tests need."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.api = cluster.api_client()
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.installed: Path | None = None  # the overlay in place

    def install(self, overlay: Path = OVERLAY) -> None:
        """``overlay`` in place, an agent Ready: nothing to do when it is already, else what
        another overlay installed is removed first (the first install the next test module
        needs pays for the removal, not the last module that replaced the default)."""
        if self.installed == overlay:
            return
        if self.installed is not None:
            self.remove()
        until(
            "the last install removed",
            lambda: (
                not self.cluster.kubectl(
                    "get", "namespace", AGENT_NS, "--ignore-not-found", "-o", "name", check=False
                )
            ),
            120,
            0.5,
        )
        # A force-deleted pod's process lives on a moment: the next agent needs its port 9808.
        until("the old agent's port free", lambda: not tcp_alive(NODE_IP, 9808, 1.0), 60, 0.2)
        self.cluster.kubectl("apply", "-k", str(overlay), timeout=120)
        self.wait_ready()
        self.cluster.kubectl("create", "namespace", APP_NS, check=False)
        self.installed = overlay

    def remove(self) -> None:
        """The install removed at once, not waited for (:meth:`install` waits): its pods are
        force-deleted (nothing drains between tests)."""
        if self.installed is None:
            return
        self.cluster.kubectl("delete", "-k", str(self.installed), "--ignore-not-found",
                             "--wait=false", timeout=120, check=False)  # fmt: skip
        self.cluster.kubectl("-n", AGENT_NS, "delete", "pods", "--all", "--grace-period=0",
                             "--force", "--ignore-not-found", timeout=60, check=False)  # fmt: skip
        self.installed = None

    def uninstall(self) -> None:
        self.cluster.kubectl("delete", "namespace", APP_NS, "--wait=false", check=False)
        if self.installed is not None:
            self.cluster.kubectl("delete", "-k", str(self.installed), "--wait=false", check=False)
            self.installed = None

    def agent_pods(self) -> list[Any]:
        pods = self.core.list_namespaced_pod(AGENT_NS, label_selector=AGENT_SELECTOR).items
        return [p for p in pods if p.metadata.deletion_timestamp is None]

    def wait_ready(self, timeout: float = 120.0) -> Any:
        def ready() -> Any:
            pods = self.agent_pods()
            ok = [p for p in pods if (c := condition(p, "Ready")) and c.status == "True"]
            return ok[0] if ok else None

        try:
            return until("podlb agent Ready", ready, timeout)
        except AssertionError:
            raise AssertionError(self.describe()) from None

    def describe(self) -> str:
        out = self.cluster.kubectl("-n", AGENT_NS, "describe", "pods", check=False)
        logs = self.cluster.kubectl(
            "-n", AGENT_NS, "logs", "-l", AGENT_SELECTOR, "--tail=40", check=False
        )  # fmt: skip
        return f"{out[-4000:]}\n--- agent logs ---\n{logs[-4000:]}"

    def lease_holder(self) -> str | None:
        lease = client.CoordinationV1Api(self.api).read_namespaced_lease("podlb-leader", AGENT_NS)
        return lease.spec.holder_identity  # type: ignore[no-any-return]


def app_container(
    *, hook: str = "http", sleep_s: int = 0, version: str = "v1", delay_ms: int = 0
) -> dict[str, Any]:
    """The pod app (tests/testbed/app.py), its probe and the preStop hook of ``hook``.

    ``http`` is podlb's in-pod drain listener, ``exec`` the README's curl recipe against the
    node API, ``sleep`` the vendors' ``preStop: sleep N``, ``none`` no hook.
    """
    container: dict[str, Any] = {
        "name": "app",
        "image": APP,
        "imagePullPolicy": "Never",
        "args": ["--port", "8080", "--name", "$(POD_NAME)", "--delay-ms", str(delay_ms)],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE",
             "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "VERSION", "value": version},
        ],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
    }  # fmt: skip
    if hook == "http":
        container["lifecycle"] = {"preStop": {"httpGet": {"path": "/drain", "port": 9809}}}
    elif hook == "exec":
        curl = ("curl -fsS --retry 5 --retry-all-errors "
                "http://$HOST_IP:9808/v1/drain/$POD_NAMESPACE/$POD_NAME")  # fmt: skip
        container["lifecycle"] = {"preStop": {"exec": {"command": ["sh", "-c", curl]}}}
    elif hook == "sleep":
        container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", str(sleep_s)]}}}
    elif hook != "none":
        raise ValueError(f"hook {hook!r}")
    return container


def service(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A direct Service of ``name``'s pods (port http), with ``annotations`` added."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": APP_NS,
            "annotations": {"podlb.io/direct": "true", **(annotations or {})},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def deployment(
    name: str, replicas: int, container: dict[str, Any], *, gate: bool = True, grace: int = 30
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [container], "terminationGracePeriodSeconds": grace}
    if gate:
        spec["readinessGates"] = [{"conditionType": LB_READY}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": APP_NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }  # fmt: skip


@dataclass
class PodTimes:
    """Monotonic times at which the watch first saw each state of one pod."""

    containers_ready: float | None = None
    lb_ready: float | None = None
    ready: float | None = None
    deleting: float | None = None
    gone: float | None = None
    conditions: list[tuple[float, str, str, str]] = field(
        default_factory=list
    )  # t, type, status, reason


class PodWatch:
    """Watches the pods of one namespace and records when each condition first held."""

    def __init__(self, api: client.ApiClient, namespace: str, selector: str = "") -> None:
        self.core = client.CoreV1Api(api)
        self.namespace, self.selector = namespace, selector
        self.pods: dict[str, PodTimes] = {}
        self._seen: dict[str, dict[str, tuple[str, str]]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="podwatch")

    def __enter__(self) -> PodWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        rv = ""
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                kwargs: dict[str, Any] = {"timeout_seconds": 2, "label_selector": self.selector}
                if rv:
                    kwargs["resource_version"] = rv
                for event in w.stream(self.core.list_namespaced_pod, self.namespace, **kwargs):
                    pod = event["object"]
                    rv = pod.metadata.resource_version
                    self._record(event["type"], pod)
                    if self._stop.is_set():
                        break
            except client.ApiException as e:
                if e.status == 410:
                    rv = ""
            finally:
                w.stop()

    def _record(self, kind: str, pod: Any) -> None:
        now = time.monotonic()
        name = pod.metadata.name
        with self._lock:
            times = self.pods.setdefault(name, PodTimes())
            seen = self._seen.setdefault(name, {})
            for c in pod.status.conditions or ():
                state = (c.status, c.reason or "")
                if seen.get(c.type) != state:
                    seen[c.type] = state
                    times.conditions.append((now, c.type, c.status, c.reason or ""))
                if c.status != "True":
                    continue
                if c.type == "ContainersReady" and times.containers_ready is None:
                    times.containers_ready = now
                elif c.type == LB_READY and times.lb_ready is None:
                    times.lb_ready = now
                elif c.type == "Ready" and times.ready is None:
                    times.ready = now
            if pod.metadata.deletion_timestamp and times.deleting is None:
                times.deleting = now
            if kind == "DELETED" and times.gone is None:
                times.gone = now

    def flips(self, name: str, ctype: str) -> list[tuple[str, str]]:
        with self._lock:
            return [
                (s, r) for _, t, s, r in self.pods.get(name, PodTimes()).conditions if t == ctype
            ]
