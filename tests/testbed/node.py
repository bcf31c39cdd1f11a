"""A simulated kubelet: pods scheduled to its nodes become real network namespaces.

::

    with KubeAPIServer(port=0) as api, Kubelet.for_api(api, ["node-a", "node-b"]) as kubelet:
        core.create_namespaced_pod("default", pod_with_node_name_node_a)
        kubelet.wait_ready("default", "web-1")
        kubelet.records["default/web-1"].prestop_s   # after deletion

It talks to the API server only through the official ``kubernetes`` client, like kubelet:
list + watch of pods with ``fieldSelector=spec.nodeName=<node>`` (relist on 410;
:mod:`tests.testbed.podsource`), strategic merge patches of ``pods/status``. Its parts:
:mod:`~tests.testbed.nodenet` (pod CIDRs and routes), :mod:`~tests.testbed.podruntime` (one
pod, its hooks and signals), :mod:`~tests.testbed.probing` (readiness probes),
:mod:`~tests.testbed.podstatus` (conditions). Its timing is the real kubelet's, checked by the
same scenarios on both (:mod:`tests.testbed.timeline`).

For each pod on one of its nodes:

* a veth pod namespace (:class:`~tests.testbed.netns.NetnsPool`) with an IP from the node's
  ``/24`` of ``10.244.0.0/16`` (:mod:`tests.testbed.nodenet`: a free ``/24`` per node, routed
  ``unreachable`` on the host as a real node's block is, so a deleted pod's IP fails at once;
  the node is registered with that ``spec.podCIDR`` when the API serves nodes);
* each container with a ``containerPort`` runs :mod:`tests.testbed.app` in the namespace on its
  first port (``--name`` = pod name). The container's ``env`` (literal values) is passed on, so
  ``APP_DELAY_MS`` selects a delay; ``args`` starting with ``--`` are passed to the app (e.g.
  ``["--delay-ms", "50"]``); ``image`` and ``command`` are ignored. Containers without ports
  run nothing (a "pause" container);
* status like kubelet: at admission phase ``Pending`` with ``PodScheduled``, ``Initialized``
  True and ``ContainersReady``/``Ready`` False; at the next pod sync after the containers
  started (a container has started when its app listens, standing in for the runtime's start;
  the sync: the PLEG's relist, every ``relist_period`` = 1 s from the kubelet's start) phase
  ``Running``, ``podIP``/``podIPs``, ``hostIP``/``hostIPs`` (``127.0.0.1``), ``startTime``,
  ``containerStatuses``. Readiness comes from each container's ``readinessProbe``
  (``httpGet``, ``tcpSocket``, ``exec`` on the host; ``periodSeconds``,
  ``initialDelaySeconds``, ``timeoutSeconds``, ``successThreshold``, ``failureThreshold``
  honoured with the API's defaults, see :mod:`tests.testbed.probing`; a kubelet started less
  than ``periodSeconds`` ago delays a new prober by a random part of the period); a container
  without one is ready once running. A change of a container's readiness is written at once, as the
  kubelet's status manager does: ``ContainersReady`` and ``Ready`` (= ContainersReady and every
  ``spec.readinessGates[].conditionType`` True) in one patch. A readiness gate's condition
  patched by someone else turns ``Ready`` at the pod's next sync, as the kubelet's pod worker
  does it: at once (``sync_latency``, 0.05 s) when the pod has not synced since the last
  relist, else at the next relist; a sync takes the pod as it was when asked for, so a patch
  made while one waits (as right after ContainersReady turned True) waits for the relist after
  (0.05 s to 2 s in all);
* on deletion (``deletionTimestamp`` set): the ``preStop`` hooks of all containers run in
  parallel -- ``httpGet`` (to ``host`` or the pod IP, ``port`` by number or name, ``path``,
  ``httpHeaders``; HTTP only), ``sleep`` (``seconds``), or ``exec``: **the command runs on the
  host, not in the container** (with ``POD_NAME``, ``POD_NAMESPACE``, ``POD_IP`` and the
  container's literal env) -- for up to the grace period (``deletionGracePeriodSeconds``);
  then SIGTERM; SIGKILL when the rest of the grace period (at least 2 s, kubelet's minimum) is
  over; at the next relist, status ``ContainersReady``/``Ready`` False with terminated
  containers and a terminal phase (readiness probes run on until then); the namespace is
  removed; ``DELETE_LATENCY`` (0.5 s) later ``finalize_delete("pods", ns, name)``.
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
import json
import logging
import math
import random
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.testbed import handlers
from tests.testbed.appproc import app_argv, app_env, repo_root
from tests.testbed.netns import Pod
from tests.testbed.nodenet import NodeNetwork
from tests.testbed.podruntime import Container, PodRecord, PodRuntime
from tests.testbed.podsource import PodSource, pod_key
from tests.testbed.podstatus import (
    condition,
    conditions_of,
    now_iso,
    pod_ready_condition,
    ready_conditions,
    resource_version,
)
from tests.testbed.probing import ProbeSpec, ProbeWorker
from tests.testbed.starts import StartWatcher

__all__ = ["Kubelet", "PodRecord", "kubelet", "make_pod", "pod_ready_condition", "random_suffix"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]
FinalizeFn = Callable[[str, str, str], None]
MIN_KILL_GRACE = 2.0  # kubelet's minimumGracePeriodInSeconds
RELIST_PERIOD = 1.0  # kubelet's generic PLEG relist period
# How long a pod sync that need not wait for a relist takes, from the change that asked for
# it to the watch seeing its status: 0.07-0.18 s on the real node (tests/cluster), of which
# the testbed's API round trips take 0.02-0.04 s.
SYNC_LATENCY = 0.05
# From a deleted pod's final status to its removal from the API server: 0.36-0.75 s on the
# real node (the status manager deletes it once the pod worker has cleaned up).
DELETE_LATENCY = 0.5
STATUS_TRIES = 5  # a status write that does not reach the API server, tried this many times
START_TIMEOUT = 10.0  # how long a container may take to start (see Kubelet._wait_started)


class Kubelet:
    """Plays kubelet for ``nodes``; see the module docstring. A context manager.

    ``relist_period``: the PLEG's relist period (the kubelet's is 1 s), the clock on which
    pods sync: the Running status, the first probe of a started container, a readiness gate's
    effect on ``Ready`` and the status after the containers exit wait for its next tick."""

    def __init__(
        self,
        api_client: client.ApiClient,
        nodes: Sequence[str] = ("node-a",),
        *,
        finalize_delete: FinalizeFn | None = None,
        pod_cidrs: Mapping[str, str] | None = None,
        host_ip: str = "127.0.0.1",
        relist_period: float = RELIST_PERIOD,
        sync_latency: float = SYNC_LATENCY,
        watch_timeout: int = 2,
        register_nodes: bool = True,
        pool_prefix: str = "kl",
        finalize_via_api: bool = False,
    ) -> None:
        if relist_period <= 0:
            raise ValueError(f"relist_period must be > 0, not {relist_period}")
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.nodes = list(nodes)
        self.finalize_delete = finalize_delete
        if finalize_via_api:
            self.finalize_delete = self._delete_now
        self.host_ip = host_ip
        self.relist_period = relist_period
        self.sync_latency = sync_latency
        self.delete_latency = DELETE_LATENCY
        self._run_dir = Path(tempfile.mkdtemp(prefix="podlb-kubelet-"))
        self._starts = StartWatcher(self._run_dir)
        self.started_at = time.monotonic()  # relists tick from here (set again by start())
        self.watch_timeout = watch_timeout
        self.register_nodes = register_nodes
        self.net = NodeNetwork(self.nodes, pod_cidrs, pool_prefix=pool_prefix)
        self.pool = self.net.pool
        self.pod_cidrs = self.net.pod_cidrs
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pods: dict[str, PodRuntime] = {}
        self.records: dict[str, PodRecord] = {}
        self._sources: list[PodSource] = []
        self._pod_threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()
        self.errors: list[str] = []

    @classmethod
    def for_api(cls, api: Any, nodes: Sequence[str] = ("node-a",), **kw: Any) -> Kubelet:
        """From a ``KubeAPIServer``: admin client and ``api.store.finalize_delete``; from a
        ``KubeAPIProcess`` (no store to reach into): the real kubelet's final delete, a
        DELETE with grace period 0 and the pod's uid as precondition."""
        store = getattr(api, "store", None)
        if store is None:
            return cls(api.api_client(), nodes, finalize_via_api=True, **kw)
        return cls(api.api_client(), nodes, finalize_delete=store.finalize_delete, **kw)

    def start(self) -> Kubelet:
        self.started_at = time.monotonic()
        if self.register_nodes:
            for node in self.nodes:
                self._register_node(node)
        for node in self.nodes:
            src = PodSource(
                self.api_client, node, self._on_event, self._known, self._err,
                watch_timeout=self.watch_timeout,
            )  # fmt: skip
            self._sources.append(src)
            src.start()
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
        for src in self._sources:
            src.stop()
        for src in self._sources:
            src.join()
        with self._lock:
            runtimes = list(self._pods.values())
        with self._threads_lock:
            threads = [t for t in self._pod_threads if t.name.startswith("start-")]
        for rt in runtimes:
            rt.wake.set()
            rt.stop_probes()
        for t in threads:
            t.join(5)
        with self._lock:
            runtimes = list(self._pods.values())
        for rt in runtimes:
            rt.kill(grace=0)
        self.net.close()
        shutil.rmtree(self._run_dir, ignore_errors=True)

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
    def _known(self, node: str) -> dict[str, Obj]:
        with self._lock:
            return {k: rt.obj for k, rt in self._pods.items() if rt.node == node}

    def _err(self, msg: str) -> None:
        log.warning("%s", msg)
        self.errors.append(msg)

    def _on_event(self, node: str, etype: str, obj: Obj) -> None:
        key = pod_key(obj)
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
                rt = PodRuntime(node, obj)
                self._pods[key] = rt
                self.records[key] = rt.record
                self._spawn(self._start_pod, rt, name=f"start-{key}")
                return
        with rt.obj_lock:
            if etype != "DELETED" and resource_version(obj) >= resource_version(rt.obj):
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
        if rt.needs_ready_sync(obj):
            rt.wake.set()  # a pod sync (the pod's thread) writes Ready, never the watch

    def _spawn(self, fn: Callable[[PodRuntime], None], rt: PodRuntime, name: str) -> None:
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
    def _start_pod(self, rt: PodRuntime) -> None:
        try:
            self._setup_pod(rt)
        finally:
            rt.started.set()
        self._pod_worker(rt)

    def next_relist(self, after: float) -> float:
        """The first relist strictly after ``after`` (monotonic)."""
        p = self.relist_period
        return self.started_at + (math.floor((after - self.started_at) / p) + 1) * p

    def _until_relist(self, after: float) -> bool:
        """Sleep until the relist after ``after``; False when the kubelet stops first."""
        return not self._stop.wait(max(0.0, self.next_relist(after) - time.monotonic()))

    def _until_cache(self, rt: PodRuntime) -> bool:
        """Wait as the kubelet's pod worker does before a sync, for a pod cache newer than its
        last sync: the next relist when it synced since the last one. False when the kubelet
        stops first."""
        now = time.monotonic()
        synced_since_relist = self.next_relist(now) - self.relist_period <= rt.last_sync
        return not (synced_since_relist and not self._until_relist(now))

    def _setup_pod(self, rt: PodRuntime) -> None:
        """Admit the pod (its probers start ticking, the Pending status is written), make its
        namespace and processes, and write the Running status at the next relist."""
        spec = rt.obj.get("spec") or {}
        for c in spec.get("containers") or []:
            ports = c.get("ports") or []
            cont = Container(c["name"], int(ports[0]["containerPort"]) if ports else None, c)
            if c.get("readinessProbe"):
                where = f"{rt.ns}/{rt.name} container {c['name']} readinessProbe"
                probe = ProbeSpec.parse(c["readinessProbe"], where)  # ValueError: not started
                cont.worker = self._prober(rt, cont, probe)
            rt.containers.append(cont)
        with rt.lock:
            self._patch_status(
                rt,
                {
                    "phase": "Pending",
                    "conditions": [
                        condition(rt.obj, "PodScheduled", "True"),
                        condition(rt.obj, "Initialized", "True"),
                        *ready_conditions(rt.obj, False),
                    ],
                },
            )
            rt.last_sync = time.monotonic()
        pod_ip = self.net.alloc_ip(rt.node)
        pod = self.pool.add_many_veth(1, ips=[pod_ip])[0]
        rt.pod = pod
        rt.record.ip = pod_ip
        rt.record.netns = pod.name
        ready_files: list[Path] = []
        for cont in rt.containers:
            if cont.port is not None:
                ready_files.append(self._run_dir / f"{pod.name}-{cont.name}.listening")
                argv = [*app_argv(cont.port, rt.name), "--ready-file", str(ready_files[-1])]
                args = [str(a) for a in cont.spec.get("args") or []]
                if args and args[0].startswith("--"):
                    argv += args
                env = app_env()
                env.update(rt.env(cont.spec))
                with rt.lock:
                    if rt.terminating:
                        break
                    cont.proc = pod.popen(argv, cwd=repo_root(), env=env)
            cont.started_at = now_iso()
        started = self._wait_started(rt, ready_files)
        rt.record.running_at = started
        if not self._until_relist(started):
            return
        with rt.lock:
            if rt.terminating:
                return
            ready = all(c.ready for c in rt.containers)
            rt.containers_ready = ready
            rt.running = True
            rt.last_sync = time.monotonic()
            self._patch_status(
                rt,
                {
                    "phase": "Running",
                    "hostIP": self.host_ip,
                    "hostIPs": [{"ip": self.host_ip}],
                    "podIP": pod_ip,
                    "podIPs": [{"ip": pod_ip}],
                    "startTime": now_iso(),
                    "conditions": ready_conditions(rt.obj, ready),
                    "containerStatuses": rt.container_statuses(),
                },
            )
            rt.note_ready()
        for cont in rt.containers:  # this sync of an unready pod runs its probes
            if cont.worker is not None:
                cont.worker.container_started(started)

    def _wait_started(self, rt: PodRuntime, ready_files: list[Path]) -> float:
        """When the containers run: the app's interpreter start stands in for the container
        runtime's start (1-3 s from creation on the real node), so the kubelet sees a
        container once its app listens (at most ``START_TIMEOUT`` s; an app that exits or
        never listens is left to its probe). :class:`~tests.testbed.starts.StartWatcher`
        looks for every pod at once."""
        procs = [c.proc for c in rt.containers if c.proc is not None]
        self._starts.wait(
            ready_files, procs, START_TIMEOUT, lambda: self._stop.is_set() or rt.terminating
        )
        for f in ready_files:
            f.unlink(missing_ok=True)
        return time.monotonic()

    # -- readiness ----------------------------------------------------------------------
    def _prober(self, rt: PodRuntime, c: Container, spec: ProbeSpec) -> ProbeWorker:
        def run(probe: ProbeSpec, timeout: float) -> None:
            if c.proc is not None and c.proc.poll() is not None:
                raise handlers.HandlerFailed("the container exited")
            rt.run_action(c, probe.action, probe.handler, timeout)

        just_started = time.monotonic() - self.started_at < spec.period
        worker = ProbeWorker(
            spec,
            run,
            on_result=lambda ok: self._on_probe_result(rt),
            stop=rt.stopped,
            name=f"probe-{rt.ns}/{rt.name}/{c.name}",
            first_delay=random.uniform(0, spec.period) if just_started else 0.0,
        )
        rt.record.probes[c.name] = worker.probes
        return worker.start()

    def _on_probe_result(self, rt: PodRuntime) -> None:
        """A container's readiness changed: ContainersReady and Ready at once (the status
        manager), and a pod sync asked for (the kubelet's probe sync)."""
        with rt.lock:
            if rt.stopped.is_set() or not rt.running:
                return
            ready = all(c.ready for c in rt.containers)
            if ready != rt.containers_ready:
                rt.containers_ready = ready
                self._patch_status(
                    rt,
                    {
                        "conditions": ready_conditions(rt.obj, ready),
                        "containerStatuses": rt.container_statuses(),
                    },
                )
                rt.note_ready()
        rt.wake.set()

    def _pod_worker(self, rt: PodRuntime) -> None:
        """The pod's syncs: each takes the pod as it is when asked for and completes after
        :meth:`_until_cache` and ``sync_latency``; a request made meanwhile waits for the
        sync after."""
        while not self._stop.is_set() and not rt.terminating:
            if not rt.wake.wait(1.0):
                continue
            rt.wake.clear()
            with rt.obj_lock:
                snapshot = rt.obj
            if not self._until_cache(rt) or rt.terminating:
                return
            for c in rt.containers:
                if c.worker is not None:
                    c.worker.trigger()  # a sync of an unready pod runs its probes
            if self._stop.wait(self.sync_latency):
                return
            self._sync_ready(rt, snapshot)
            rt.last_sync = time.monotonic()

    def _sync_ready(self, rt: PodRuntime, snapshot: Obj) -> None:
        """Write Ready as ``snapshot``'s readiness gates make it, if the pod says otherwise."""
        with rt.lock:
            if rt.terminating or not rt.running:
                return
            status, reason, message = pod_ready_condition(rt.containers_ready, snapshot)
            cur = conditions_of(rt.obj).get("Ready", {})
            if cur.get("status") == status and cur.get("reason") == reason:
                return
            self._patch_status(
                rt, {"conditions": [condition(rt.obj, "Ready", status, reason, message)]}
            )
            rt.note_ready()

    def _patch_status(self, rt: PodRuntime, status: Obj) -> None:
        """Strategic merge patch of ``pods/status`` (conditions merge by ``type``). A write that
        does not reach the API server (connection reset, timeout) is tried again, up to
        ``STATUS_TRIES`` times, as the status manager retries: a lost ContainersReady left its
        pod unready for good."""
        for attempt in range(1, STATUS_TRIES + 1):
            try:
                # The answer as JSON, not the client's models (a V1Pod took milliseconds to
                # build and to turn back into a dict: at 300 pods, seconds of the kubelet's).
                resp = self.core.patch_namespaced_pod_status(
                    rt.name, rt.ns, {"status": status}, _request_timeout=10,
                    _preload_content=False,
                )  # fmt: skip
                break
            except ApiException as e:
                if e.status != 404:
                    self._err(f"patch status {rt.ns}/{rt.name}: {e.status} {e.reason}")
                return
            except (urllib3.exceptions.HTTPError, OSError) as e:
                if attempt == STATUS_TRIES or self._stop.wait(0.5):
                    self._err(f"patch status {rt.ns}/{rt.name}: {e!r}")
                    return
        obj = json.loads(resp.data)
        with rt.obj_lock:
            if resource_version(obj) >= resource_version(rt.obj):
                rt.obj = obj

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
        cond = condition(rt.obj, "DisruptionTarget", "True", "TerminationByKubelet", message)
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
        rt: PodRuntime,
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
        rt.run_prestop_hooks(deadline, self._stop)
        left = deadline - time.monotonic()
        rt.kill(grace=max(left, MIN_KILL_GRACE) if grace > 0 else 0)
        codes = rt.record.exit_codes
        self._until_relist(time.monotonic())  # the PLEG notices the exits
        rt.stop_probes()
        with rt.lock:
            rt.containers_ready = False
            self._patch_status(
                rt,
                {
                    **(final or {}),
                    "phase": "Succeeded"
                    if all(v == 0 for v in codes.values()) and final is None
                    else "Failed",
                    "conditions": ready_conditions(rt.obj, False, reason="PodCompleted"),
                    "containerStatuses": rt.container_statuses(exit_codes=codes),
                },
            )
            rt.note_ready()
        self._remove(rt)
        self._stop.wait(self.delete_latency)
        if finalize and self.finalize_delete is not None:
            try:
                self.finalize_delete("pods", rt.ns, rt.name)
            except Exception as e:
                log.debug("finalize %s/%s: %r", rt.ns, rt.name, e)
        rt.record.finalized_at = time.monotonic()

    def _delete_now(self, resource: str, ns: str, name: str) -> None:
        """The kubelet's status manager's last word on a pod that has terminated: delete it
        with grace period 0 (and its uid as precondition)."""
        uid = self.records[f"{ns}/{name}"].uid
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid} if uid else None}
        try:
            self.core.delete_namespaced_pod(
                name, ns, body=body, _request_timeout=10, _preload_content=False
            )
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    def _remove(self, rt: PodRuntime) -> None:
        with rt.lock:
            pod, rt.pod = rt.pod, None  # once: a freed IP may be someone else's by now
        if pod is not None:
            self.pool.remove(pod.name)
            self.net.free_ip(rt.node, pod.ip)
        key = f"{rt.ns}/{rt.name}"
        with self._lock:
            if self._pods.get(key) is rt:
                del self._pods[key]
        rt.gone.set()

    def _kill_and_forget(self, rt: PodRuntime) -> None:
        rt.started.wait(30)
        rt.stop_probes()
        rt.kill(grace=0)
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
    probe_period: int = 1,
) -> Obj:
    """A pod dict for :mod:`tests.testbed.app`, scheduled to ``node`` (tests and benches). Its
    readiness probe (``GET /healthz``) runs every ``probe_period`` seconds (the API's minimum
    by default: the testbed's pods, like a real kubelet's, become ready at the first probe
    after the app listens)."""
    container: Obj = {
        "name": "app",
        "image": "testbed/app",
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": port},
            "periodSeconds": probe_period,
        },
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
