"""A simulated kubelet: pods scheduled to its nodes become real network namespaces.

::

    with KubeAPIServer(port=0) as api, Kubelet.for_api(api, ["node-a", "node-b"]) as kubelet:
        core.create_namespaced_pod("default", pod_with_node_name_node_a)
        kubelet.wait_ready("default", "web-1")
        kubelet.records["default/web-1"].prestop_s   # after deletion

It talks to the API server only through the official ``kubernetes`` client, like kubelet:
list + watch of pods with ``fieldSelector=spec.nodeName=<node>`` (relist on 410), strategic
merge patches of ``pods/status``.

For each pod on one of its nodes:

* a veth pod namespace (:class:`~tests.testbed.netns.NetnsPool`) with an IP from the node's
  ``/24`` of ``10.244.0.0/16`` (a free ``/24`` is picked per node at start, the node is
  registered with that ``spec.podCIDR`` when the API serves nodes). Like a real node (Calico
  installs a blackhole route for its block), the host routes the whole ``/24`` locally: an
  ``unreachable`` route, removed on :meth:`Kubelet.stop`, under the pods' own ``/32`` routes,
  so a connection to a deleted pod's IP fails at once ("no route to host") instead of leaving
  through the default route to whatever answers there;
* each container with a ``containerPort`` runs :mod:`tests.testbed.app` in the namespace on its
  first port (``--name`` = pod name). The container's ``env`` (literal values) is passed on, so
  ``APP_DELAY_MS`` selects a delay; ``args`` starting with ``--`` are passed to the app (e.g.
  ``["--delay-ms", "50"]``); ``image`` and ``command`` are ignored. Containers without ports
  run nothing (a "pause" container);
* status like kubelet: ``podIP``/``podIPs``, ``hostIP``/``hostIPs`` (``127.0.0.1``),
  ``startTime``, phase ``Running``, ``containerStatuses``, conditions ``PodScheduled``,
  ``Initialized``, ``ContainersReady`` (True once the readiness probe passes: the container's
  ``readinessProbe.httpGet`` / ``tcpSocket`` if given, else a TCP connect to its port, checked
  from the host every ``probe_interval`` seconds, one failure is enough either way; period,
  thresholds and initial delay of the probe are not honoured) and ``Ready`` = ContainersReady
  and every ``spec.readinessGates[].conditionType`` has a condition ``True``. Ready is
  re-evaluated on every watch event of the pod, so patching a gate condition flips it, as with
  kubelet;
* on deletion (``deletionTimestamp`` set): the ``preStop`` hooks of all containers run in
  parallel -- ``httpGet`` (to ``host`` or the pod IP, ``port`` by number or name, ``path``,
  ``httpHeaders``; HTTP only), ``sleep`` (``seconds``), or ``exec``: **the command runs on the
  host, not in the container** (with ``POD_NAME``, ``POD_NAMESPACE``, ``POD_IP`` and the
  container's literal env) -- for up to the grace period (``deletionGracePeriodSeconds``);
  then SIGTERM; SIGKILL when the rest of the grace period (at least 2 s, kubelet's minimum) is
  over; status ``ContainersReady``/``Ready`` False with terminated containers and a terminal
  phase; the namespace is removed; finally ``finalize_delete("pods", ns, name)``.
  :class:`PodRecord` keeps the timings (``prestop_s`` = how long the hooks ran);
* :meth:`Kubelet.stop_pod` stops a pod as a kubelet does on its own, with no API deletion:
  node-pressure eviction (``"eviction"``) or graceful node shutdown (``"shutdown"``). As kubelet
  1.26+ (PodDisruptionConditions) it first writes ``DisruptionTarget=True`` reason
  ``TerminationByKubelet`` (a shutdown also phase ``Failed``, reason ``Terminated``, at once),
  then runs the hooks, SIGTERM, SIGKILL as above, phase ``Failed`` (eviction: reason
  ``Evicted``); the namespace is removed and the pod stays in the API server.

:meth:`Kubelet.stop` stops the watches and removes every process and namespace it made (pods
still in the API server are left there, like a node going away).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import os
import random
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.testbed.app import _env, _repo_root, app_argv
from tests.testbed.netns import NetnsPool, Pod, ip

log = logging.getLogger(__name__)

Obj = dict[str, Any]
FinalizeFn = Callable[[str, str, str], None]
MIN_KILL_GRACE = 2.0  # kubelet's minimumGracePeriodInSeconds


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rv(obj: Obj) -> int:
    """resourceVersion as a number for ordering (the testbed's are integers)."""
    try:
        return int(obj.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _conditions(obj: Obj) -> dict[str, Obj]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def pod_ready_condition(containers_ready: bool, obj: Obj) -> tuple[str, str | None, str | None]:
    """kubelet's Ready condition: ``(status, reason, message)`` from ContainersReady and the
    readiness gates of ``obj`` (a pod dict). Pure."""
    if not containers_ready:
        return "False", "ContainersNotReady", "containers with unready status"
    conds = _conditions(obj)
    missing: list[str] = []
    unready: list[str] = []
    for gate in (obj.get("spec") or {}).get("readinessGates") or []:
        ctype = gate.get("conditionType")
        c = conds.get(ctype)
        if c is None:
            missing.append(ctype)
        elif c.get("status") != "True":
            unready.append(ctype)
    if missing or unready:
        msgs = [
            f'corresponding condition of pod readiness gate "{t}" does not exist.' for t in missing
        ]
        msgs += [
            f'the status of pod readiness gate "{t}" is not "True", but False' for t in unready
        ]
        return "False", "ReadinessGatesNotReady", ", ".join(msgs)
    return "True", None, None


@dataclass
class PodRecord:
    """What happened to one pod on this kubelet; times are ``time.monotonic()`` values."""

    namespace: str
    name: str
    node: str
    uid: str = ""
    ip: str = ""
    netns: str = ""
    seen_at: float = 0.0
    running_at: float | None = None
    containers_ready_at: float | None = None
    ready_at: float | None = None
    unready_at: float | None = None
    deletion_seen_at: float | None = None
    prestop_s: float | None = None  # how long the preStop hooks ran (None: none ran)
    prestop_errors: list[str] = field(default_factory=list)
    prestop_timed_out: bool = False
    sigterm_at: float | None = None
    exited_at: float | None = None
    sigkilled: bool = False
    exit_codes: dict[str, int] = field(default_factory=dict)
    finalized_at: float | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class _Container:
    name: str
    port: int | None
    spec: Obj
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""


class _PodRuntime:
    def __init__(self, node: str, obj: Obj) -> None:
        md = obj["metadata"]
        self.node = node
        self.obj = obj  # the latest object seen (watch) or written (patch answer)
        self.lock = threading.RLock()  # serializes status writers (held over HTTP calls)
        self.obj_lock = threading.Lock()  # guards ``obj`` only, never held over I/O
        self.pod: Pod | None = None
        self.containers: list[_Container] = []
        self.containers_ready = False
        self.started = threading.Event()
        self.wake = threading.Event()  # the pod's own thread re-checks status when set
        self.terminating = False
        self.gone = threading.Event()
        self.record = PodRecord(md.get("namespace", "default"), md["name"], node, md.get("uid", ""))
        self.record.seen_at = time.monotonic()

    @property
    def ns(self) -> str:
        return self.record.namespace

    @property
    def name(self) -> str:
        return self.record.name


def _route_unreachable(cidr: str) -> bool:
    """Add ``unreachable <cidr>`` on the host; False when a route to it exists already."""
    return ip("route", "add", "unreachable", cidr, check=False).returncode == 0


class Kubelet:
    """Plays kubelet for ``nodes``; see the module docstring. A context manager."""

    def __init__(
        self,
        api_client: client.ApiClient,
        nodes: Sequence[str] = ("node-a",),
        *,
        finalize_delete: FinalizeFn | None = None,
        pod_cidrs: Mapping[str, str] | None = None,
        host_ip: str = "127.0.0.1",
        probe_interval: float = 0.05,
        ready_probe_interval: float = 0.5,
        watch_timeout: int = 2,
        register_nodes: bool = True,
        pool_prefix: str = "kl",
    ) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.nodes = list(nodes)
        self.finalize_delete = finalize_delete
        self.host_ip = host_ip
        self.probe_interval = probe_interval
        self.ready_probe_interval = ready_probe_interval
        self.watch_timeout = watch_timeout
        self.register_nodes = register_nodes
        self.pool = NetnsPool(prefix=pool_prefix)
        self._routes: list[str] = []  # the unreachable routes this kubelet added
        self.pod_cidrs = dict(pod_cidrs) if pod_cidrs else self._pick_cidrs(self.nodes)
        for cidr in self.pod_cidrs.values():
            if cidr not in self._routes and _route_unreachable(cidr):
                self._routes.append(cidr)
        self._ip_free: dict[str, list[str]] = {
            n: [str(h) for h in ipaddress.ip_network(c).hosts()][1:]  # .1 is the "gateway"
            for n, c in self.pod_cidrs.items()
        }
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pods: dict[str, _PodRuntime] = {}
        self.records: dict[str, PodRecord] = {}
        self._threads: list[threading.Thread] = []
        self._watches: list[watch.Watch] = []
        self._pod_threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()
        self.errors: list[str] = []

    @classmethod
    def for_api(cls, api: Any, nodes: Sequence[str] = ("node-a",), **kw: Any) -> Kubelet:
        """From a ``KubeAPIServer``: admin client and ``api.store.finalize_delete``."""
        return cls(api.api_client(), nodes, finalize_delete=api.store.finalize_delete, **kw)

    # -- setup --------------------------------------------------------------------------
    def _pick_cidrs(self, nodes: Sequence[str]) -> dict[str, str]:
        """A free ``10.244.X.0/24`` per node (no route into it on this host yet), claimed by
        adding its unreachable route (which fails when another kubelet was quicker)."""
        out: dict[str, str] = {}
        candidates = list(range(100, 250))
        random.shuffle(candidates)
        for node in nodes:
            while True:
                if not candidates:
                    raise RuntimeError("no free /24 in 10.244.0.0/16")
                cidr = f"10.244.{candidates.pop()}.0/24"
                taken = ip("-4", "route", "show", "root", cidr, check=False).stdout.strip()
                if not taken and _route_unreachable(cidr):
                    self._routes.append(cidr)
                    out[node] = cidr
                    break
        return out

    def start(self) -> Kubelet:
        if self.register_nodes:
            for node in self.nodes:
                self._register_node(node)
        for node in self.nodes:
            t = threading.Thread(target=self._watch_loop, args=(node,), name=f"kubelet-{node}")
            t.daemon = True
            self._threads.append(t)
            t.start()
        return self

    def _register_node(self, node: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}},
            "spec": {"podCIDR": self.pod_cidrs[node], "podCIDRs": [self.pod_cidrs[node]]},
        }
        try:
            self.core.create_node(body)
        except ApiException as e:
            if e.status not in (404, 405, 409):
                log.warning("register node %s: %s", node, e.reason)
        with contextlib.suppress(ApiException):
            self.core.patch_node_status(
                node,
                {
                    "status": {
                        "addresses": [{"type": "InternalIP", "address": self.host_ip}],
                        "conditions": [
                            {
                                "type": "Ready",
                                "status": "True",
                                "reason": "KubeletReady",
                                "lastHeartbeatTime": now_iso(),
                                "lastTransitionTime": now_iso(),
                            }
                        ],
                    }
                },
            )

    def stop(self) -> None:
        """Stop watching and remove every local process and namespace."""
        self._stop.set()
        for w in self._watches:
            w.stop()
        for t in self._threads:
            t.join(self.watch_timeout + 5)
        with self._lock:
            runtimes = list(self._pods.values())
        with self._threads_lock:
            threads = [t for t in self._pod_threads if t.name.startswith("start-")]
        for rt in runtimes:
            rt.wake.set()
        for t in threads:
            t.join(5)
        with self._lock:
            runtimes = list(self._pods.values())
        for rt in runtimes:
            self._kill(rt, grace=0)
        self.pool.close()
        while self._routes:
            ip("route", "del", "unreachable", self._routes.pop(), check=False)

    def __enter__(self) -> Kubelet:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- queries for tests --------------------------------------------------------------
    def record(self, name: str, namespace: str = "default") -> PodRecord:
        return self.records[f"{namespace}/{name}"]

    def pod_netns(self, name: str, namespace: str = "default") -> Pod | None:
        rt = self._pods.get(f"{namespace}/{name}")
        return rt.pod if rt else None

    def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what or pred}")
            time.sleep(0.02)

    def wait_ready(self, name: str, namespace: str = "default", timeout: float = 10.0) -> None:
        key = f"{namespace}/{name}"
        self.wait_for(
            lambda: key in self.records and self.records[key].ready_at is not None,
            timeout,
            f"{key} Ready",
        )

    def wait_gone(self, name: str, namespace: str = "default", timeout: float = 40.0) -> None:
        key = f"{namespace}/{name}"
        self.wait_for(
            lambda: key in self.records and self.records[key].finalized_at is not None,
            timeout,
            f"{key} finalized",
        )

    # -- watch --------------------------------------------------------------------------
    def _watch_loop(self, node: str) -> None:
        selector = f"spec.nodeName={node}"
        while not self._stop.is_set():
            try:
                lst = self.core.list_pod_for_all_namespaces(
                    field_selector=selector, _request_timeout=10
                )
                rv = lst.metadata.resource_version
                seen: set[str] = set()
                for item in lst.items:
                    obj = self.api_client.sanitize_for_serialization(item)
                    seen.add(self._key(obj))
                    self._on_event(node, "ADDED", obj)
                with self._lock:
                    vanished = [
                        rt.obj for k, rt in self._pods.items() if rt.node == node and k not in seen
                    ]
                for obj in vanished:
                    self._on_event(node, "DELETED", obj)
                while not self._stop.is_set():
                    w = watch.Watch()
                    self._watches.append(w)
                    try:
                        for ev in w.stream(
                            self.core.list_pod_for_all_namespaces,
                            field_selector=selector,
                            resource_version=rv,
                            allow_watch_bookmarks=True,
                            timeout_seconds=self.watch_timeout,
                            _request_timeout=self.watch_timeout + 10,
                        ):
                            obj = ev["raw_object"]
                            rv = obj.get("metadata", {}).get("resourceVersion") or rv
                            if ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                                self._on_event(node, ev["type"], obj)
                            if self._stop.is_set():
                                break
                    finally:
                        self._watches.remove(w)
            except ApiException as e:
                if e.status != 410:
                    self._err(f"watch {node}: {e.status} {e.reason}")
                    self._stop.wait(0.5)
            except Exception as e:
                if not self._stop.is_set():
                    self._err(f"watch {node}: {e!r}")
                    self._stop.wait(0.5)

    @staticmethod
    def _key(obj: Obj) -> str:
        md = obj["metadata"]
        return f"{md.get('namespace', 'default')}/{md['name']}"

    def _err(self, msg: str) -> None:
        log.warning("%s", msg)
        self.errors.append(msg)

    def _on_event(self, node: str, etype: str, obj: Obj) -> None:
        key = self._key(obj)
        uid = obj["metadata"].get("uid", "")
        with self._lock:
            rt = self._pods.get(key)
            if rt is not None and uid and rt.record.uid and uid != rt.record.uid:
                rt = None  # same name, new pod: the old one is being torn down already
            if rt is None:
                if etype == "DELETED" or obj["metadata"].get("deletionTimestamp"):
                    return
                phase = (obj.get("status") or {}).get("phase")
                if phase in ("Succeeded", "Failed"):
                    return
                rt = _PodRuntime(node, obj)
                self._pods[key] = rt
                self.records[key] = rt.record
                self._spawn(self._start_pod, rt, name=f"start-{key}")
                return
        with rt.obj_lock:
            if etype != "DELETED" and _rv(obj) >= _rv(rt.obj):
                rt.obj = obj
        if etype == "DELETED":
            # Removed from the API server (force delete, or finalized): kill at once.
            if not rt.terminating:
                rt.terminating = True
                self._spawn(self._kill_and_forget, rt, name=f"kill-{key}")
            return
        if obj["metadata"].get("deletionTimestamp"):
            if not rt.terminating:
                rt.terminating = True
                rt.record.deletion_seen_at = time.monotonic()
                self._spawn(self._terminate, rt, name=f"term-{key}")
            return
        rt.wake.set()  # Ready is re-evaluated by the pod's thread, never here

    def _spawn(self, fn: Callable[[_PodRuntime], None], rt: _PodRuntime, name: str) -> None:
        def run() -> None:
            try:
                fn(rt)
            except Exception as e:
                self._err(f"{name}: {e!r}")
                log.exception("%s", name)

        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        with self._threads_lock:
            self._pod_threads = [x for x in self._pod_threads if x.is_alive()] + [t]

    # -- start --------------------------------------------------------------------------
    def _alloc_ip(self, node: str) -> str:
        with self._lock:
            return self._ip_free[node].pop(0)

    def _start_pod(self, rt: _PodRuntime) -> None:
        try:
            self._setup_pod(rt)
        finally:
            rt.started.set()
        self._probe_loop(rt)

    def _setup_pod(self, rt: _PodRuntime) -> None:
        spec = rt.obj.get("spec") or {}
        pod_ip = self._alloc_ip(rt.node)
        pod = self.pool.add_many_veth(1, ips=[pod_ip])[0]
        rt.pod = pod
        rt.record.ip = pod_ip
        rt.record.netns = pod.name
        for c in spec.get("containers") or []:
            ports = c.get("ports") or []
            port = int(ports[0]["containerPort"]) if ports else None
            cont = _Container(c["name"], port, c)
            if port is not None:
                argv = app_argv(port, rt.name)
                args = [str(a) for a in c.get("args") or []]
                if args and args[0].startswith("--"):
                    argv += args
                env = _env()
                env.update(self._pod_env(rt, c))
                with rt.lock:
                    if rt.terminating:
                        break
                    cont.proc = pod.popen(argv, cwd=_repo_root(), env=env)
            cont.started_at = now_iso()
            rt.containers.append(cont)
        rt.record.running_at = time.monotonic()
        start_time = now_iso()
        self._patch_status(
            rt,
            {
                "phase": "Running",
                "hostIP": self.host_ip,
                "hostIPs": [{"ip": self.host_ip}],
                "podIP": pod_ip,
                "podIPs": [{"ip": pod_ip}],
                "startTime": start_time,
                "conditions": [
                    self._cond(rt, "PodScheduled", "True"),
                    self._cond(rt, "Initialized", "True"),
                    self._cond(rt, "ContainersReady", "False", "ContainersNotReady"),
                    self._cond(rt, "Ready", "False", "ContainersNotReady"),
                ],
                "containerStatuses": self._container_statuses(rt, ready=False),
            },
        )

    def _pod_env(self, rt: _PodRuntime, c: Obj) -> dict[str, str]:
        env = {e["name"]: str(e["value"]) for e in c.get("env") or [] if "value" in e}
        env.update(POD_NAME=rt.name, POD_NAMESPACE=rt.ns, POD_IP=rt.record.ip)
        return env

    def _container_statuses(
        self, rt: _PodRuntime, *, ready: bool, exit_codes: Mapping[str, int] | None = None
    ) -> list[Obj]:
        out = []
        for c in rt.containers:
            if exit_codes is not None:
                code = exit_codes.get(c.name, 0)
                state: Obj = {
                    "terminated": {
                        "exitCode": code,
                        "reason": "Completed" if code == 0 else "Error",
                        "startedAt": c.started_at,
                        "finishedAt": now_iso(),
                    }
                }
            else:
                state = {"running": {"startedAt": c.started_at}}
            out.append(
                {
                    "name": c.name,
                    "image": c.spec.get("image", "testbed/app"),
                    "imageID": "testbed://app",
                    "containerID": f"testbed://{rt.record.netns}/{c.name}",
                    "ready": ready,
                    "started": exit_codes is None,
                    "restartCount": 0,
                    "state": state,
                }
            )
        return out

    # -- readiness ----------------------------------------------------------------------
    def _probe(self, rt: _PodRuntime, c: _Container) -> bool:
        if c.proc is not None and c.proc.poll() is not None:
            return False
        probe = c.spec.get("readinessProbe") or {}
        pod_ip = rt.record.ip
        try:
            if "httpGet" in probe:
                hg = probe["httpGet"]
                port = self._port(rt, hg.get("port", c.port))
                conn = http.client.HTTPConnection(hg.get("host") or pod_ip, port, timeout=1)
                try:
                    conn.request("GET", hg.get("path", "/"))
                    return 200 <= conn.getresponse().status < 400
                finally:
                    conn.close()
            port_v = (probe.get("tcpSocket") or {}).get("port", c.port)
            if port_v is None:
                return c.proc is None or c.proc.poll() is None
            socket.create_connection((pod_ip, self._port(rt, port_v)), timeout=1).close()
            return True
        except (OSError, http.client.HTTPException):
            return False

    def _probe_loop(self, rt: _PodRuntime) -> None:
        while not self._stop.is_set() and not rt.terminating:
            ok = all(self._probe(rt, c) for c in rt.containers)
            if ok != rt.containers_ready:
                with rt.lock:
                    if rt.terminating:
                        return
                    rt.containers_ready = ok
                    now = time.monotonic()
                    if ok and rt.record.containers_ready_at is None:
                        rt.record.containers_ready_at = now
                    self._patch_status(
                        rt,
                        {
                            "conditions": [
                                self._cond(
                                    rt,
                                    "ContainersReady",
                                    "True" if ok else "False",
                                    None if ok else "ContainersNotReady",
                                )
                            ],
                            "containerStatuses": self._container_statuses(rt, ready=ok),
                        },
                    )
            self._sync_ready(rt)
            interval = self.ready_probe_interval if ok else self.probe_interval
            rt.wake.wait(interval)
            rt.wake.clear()

    def _sync_ready(self, rt: _PodRuntime) -> None:
        """Write Ready when it differs from what the latest object says."""
        with rt.lock:
            if rt.terminating and rt.containers_ready:
                return  # Ready goes False with the containers (see _terminate)
            status, reason, message = pod_ready_condition(rt.containers_ready, rt.obj)
            cur = _conditions(rt.obj).get("Ready", {})
            if cur.get("status") == status and cur.get("reason") == reason:
                self._note_ready(rt, status)
                return
            self._patch_status(
                rt, {"conditions": [self._cond(rt, "Ready", status, reason, message)]}
            )
            self._note_ready(rt, status)

    @staticmethod
    def _note_ready(rt: _PodRuntime, status: str) -> None:
        if status == "True" and rt.record.ready_at is None:
            rt.record.ready_at = time.monotonic()
        elif status != "True" and rt.record.ready_at is not None and rt.record.unready_at is None:
            rt.record.unready_at = time.monotonic()

    def _cond(
        self,
        rt: _PodRuntime,
        ctype: str,
        status: str,
        reason: str | None = None,
        message: str | None = None,
    ) -> Obj:
        cur = _conditions(rt.obj).get(ctype, {})
        same = cur.get("status") == status
        return {
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message,
            "lastProbeTime": None,
            "lastTransitionTime": cur.get("lastTransitionTime") if same else now_iso(),
        }

    def _patch_status(self, rt: _PodRuntime, status: Obj) -> None:
        """Strategic merge patch of ``pods/status`` (conditions merge by ``type``)."""
        try:
            resp = self.core.patch_namespaced_pod_status(
                rt.name, rt.ns, {"status": status}, _request_timeout=10
            )
        except ApiException as e:
            if e.status != 404:
                self._err(f"patch status {rt.ns}/{rt.name}: {e.status} {e.reason}")
            return
        obj = self.api_client.sanitize_for_serialization(resp)
        with rt.obj_lock:
            if _rv(obj) >= _rv(rt.obj):
                rt.obj = obj

    def _port(self, rt: _PodRuntime, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for c in (rt.obj.get("spec") or {}).get("containers") or []:
            for p in c.get("ports") or []:
                if p.get("name") == port:
                    return int(p["containerPort"])
        raise ValueError(f"no port named {port!r}")

    # -- termination --------------------------------------------------------------------
    def stop_pod(
        self, name: str, namespace: str = "default", *, why: str = "eviction",
        grace: int | None = None,
    ) -> None:  # fmt: skip
        """Stop a pod without an API deletion, as a kubelet's eviction manager (``why``
        ``"eviction"``) or its graceful node shutdown (``"shutdown"``) does; see the module
        docstring. ``grace``: the kubelet's override (default: the pod's own)."""
        if why not in ("eviction", "shutdown"):
            raise ValueError(f"why: eviction or shutdown, not {why!r}")
        key = f"{namespace}/{name}"
        with self._lock:
            rt = self._pods[key]
            if rt.terminating:
                return
            rt.terminating = True
        rt.record.deletion_seen_at = time.monotonic()
        message = (
            "The node was low on resource: memory."
            if why == "eviction"
            else "Pod was terminated in response to imminent node shutdown."
        )
        cond = self._cond(rt, "DisruptionTarget", "True", "TerminationByKubelet", message)
        first: Obj = {"conditions": [cond]}
        if why == "shutdown":  # the shutdown manager sets the terminal phase before the hooks
            first.update(phase="Failed", reason="Terminated", message=message)
        with rt.lock:
            self._patch_status(rt, first)
        final = {"reason": "Evicted" if why == "eviction" else "Terminated", "message": message}
        self._spawn(
            lambda r: self._terminate(r, grace=grace, finalize=False, final=final), rt,
            name=f"stop-{key}",
        )  # fmt: skip

    def _terminate(
        self,
        rt: _PodRuntime,
        *,
        grace: float | None = None,
        finalize: bool = True,
        final: Obj | None = None,
    ) -> None:
        rt.started.wait(30)
        md = rt.obj["metadata"]
        spec = rt.obj.get("spec") or {}
        if grace is None:
            grace = md.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        t0 = time.monotonic()
        deadline = t0 + float(grace)
        hooks = [
            (c, c.spec["lifecycle"]["preStop"])
            for c in rt.containers
            if (c.spec.get("lifecycle") or {}).get("preStop")
        ]
        if hooks:
            threads = [
                threading.Thread(target=self._run_hook, args=(rt, c, h, deadline), daemon=True)
                for c, h in hooks
            ]
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive() and not self._stop.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    t.join(min(left, 0.1))
            rt.record.prestop_s = time.monotonic() - t0
            rt.record.prestop_timed_out = any(t.is_alive() for t in threads)
        left = deadline - time.monotonic()
        self._kill(rt, grace=max(left, MIN_KILL_GRACE) if grace > 0 else 0)
        codes = rt.record.exit_codes
        with rt.lock:
            rt.containers_ready = False
            self._patch_status(
                rt,
                {
                    **(final or {}),
                    "phase": "Succeeded"
                    if all(v == 0 for v in codes.values()) and final is None
                    else "Failed",
                    "conditions": [
                        self._cond(rt, "ContainersReady", "False", "PodCompleted"),
                        self._cond(rt, "Ready", "False", "PodCompleted"),
                    ],
                    "containerStatuses": self._container_statuses(
                        rt, ready=False, exit_codes=codes
                    ),
                },
            )
            self._note_ready(rt, "False")
        self._remove(rt)
        if finalize and self.finalize_delete is not None:
            try:
                self.finalize_delete("pods", rt.ns, rt.name)
            except Exception as e:
                log.debug("finalize %s/%s: %r", rt.ns, rt.name, e)
        rt.record.finalized_at = time.monotonic()

    def _run_hook(self, rt: _PodRuntime, c: _Container, hook: Obj, deadline: float) -> None:
        left = max(0.01, deadline - time.monotonic())
        try:
            if "httpGet" in hook:
                hg = hook["httpGet"]
                if (hg.get("scheme") or "HTTP").upper() != "HTTP":
                    raise ValueError("only HTTP preStop hooks")
                port = self._port(rt, hg.get("port", c.port or 80))
                conn = http.client.HTTPConnection(
                    hg.get("host") or rt.record.ip, port, timeout=left
                )
                try:
                    headers = {h["name"]: h["value"] for h in hg.get("httpHeaders") or []}
                    conn.request("GET", hg.get("path", "/"), headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status >= 400:
                        rt.record.prestop_errors.append(f"{c.name}: HTTP {resp.status}")
                finally:
                    conn.close()
            elif "exec" in hook:
                env = dict(os.environ)
                env.update(self._pod_env(rt, c.spec))
                proc = subprocess.Popen(hook["exec"]["command"], env=env, start_new_session=True)
                try:
                    code = proc.wait(left)
                    if code != 0:
                        rt.record.prestop_errors.append(f"{c.name}: exit {code}")
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    rt.record.prestop_errors.append(f"{c.name}: timed out")
            elif "sleep" in hook:
                self._stop.wait(min(float(hook["sleep"]["seconds"]), left))
        except Exception as e:
            rt.record.prestop_errors.append(f"{c.name}: {e!r}")

    def _kill(self, rt: _PodRuntime, grace: float) -> None:
        """SIGTERM every container process, SIGKILL after ``grace`` seconds."""
        with rt.lock:
            rt.terminating = True
            procs = [(c.name, c.proc) for c in rt.containers if c.proc is not None]
        live = [(n, p) for n, p in procs if p.poll() is None]
        if live and rt.record.sigterm_at is None:
            rt.record.sigterm_at = time.monotonic()
        for _, p in live:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM if grace > 0 else signal.SIGKILL)
        deadline = time.monotonic() + grace
        for name, p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                rt.record.sigkilled = True
                p.kill()
                p.wait()
            code = p.returncode
            rt.record.exit_codes[name] = 128 - code if code < 0 else code
        if procs and rt.record.exited_at is None:
            rt.record.exited_at = time.monotonic()

    def _remove(self, rt: _PodRuntime) -> None:
        if rt.pod is not None:
            self.pool.remove(rt.pod.name)
        key = f"{rt.ns}/{rt.name}"
        with self._lock:
            if self._pods.get(key) is rt:
                del self._pods[key]
        rt.gone.set()

    def _kill_and_forget(self, rt: _PodRuntime) -> None:
        rt.started.wait(30)
        self._kill(rt, grace=0)
        self._remove(rt)
        rt.record.finalized_at = rt.record.finalized_at or time.monotonic()


@contextlib.contextmanager
def kubelet(api: Any, nodes: Sequence[str] = ("node-a",), **kw: Any) -> Iterator[Kubelet]:
    """``with kubelet(api, ["node-a"]) as k:`` -- :meth:`Kubelet.for_api` as a context."""
    k = Kubelet.for_api(api, nodes, **kw)
    with k:
        yield k


def make_pod(
    name: str,
    node: str,
    *,
    namespace: str = "default",
    labels: Mapping[str, str] | None = None,
    port: int = 8080,
    readiness_gates: Sequence[str] = (),
    pre_stop: Obj | None = None,
    grace: int | None = None,
    delay_ms: int = 0,
) -> Obj:
    """A pod dict for :mod:`tests.testbed.app`, scheduled to ``node`` (tests and benches)."""
    container: Obj = {
        "name": "app",
        "image": "testbed/app",
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": port}},
    }
    if delay_ms:
        container["env"] = [{"name": "APP_DELAY_MS", "value": str(delay_ms)}]
    if pre_stop is not None:
        container["lifecycle"] = {"preStop": pre_stop}
    spec: Obj = {"nodeName": node, "containers": [container]}
    if readiness_gates:
        spec["readinessGates"] = [{"conditionType": g} for g in readiness_gates]
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": spec,
    }


def random_suffix(n: int = 5) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(secrets.choice(alphabet) for _ in range(n))
