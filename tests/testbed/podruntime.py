"""One pod on the simulated kubelet (:mod:`tests.testbed.node`): its containers, what it
went through (:class:`PodRecord`), and what the kubelet does to it on its own: run a handler
(probe or hook), run the ``preStop`` hooks, SIGTERM / SIGKILL its processes."""

from __future__ import annotations

import contextlib
import math
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.testbed import handlers
from tests.testbed.netns import Pod
from tests.testbed.podstatus import conditions_of, container_status, pod_ready_condition
from tests.testbed.probing import ProbeWorker

Obj = dict[str, Any]


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
    probes: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)  # per container

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class Container:
    name: str
    port: int | None
    spec: Obj
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    worker: ProbeWorker | None = None  # its readiness prober (None: no readinessProbe)

    @property
    def ready(self) -> bool:
        running = self.proc is None or self.proc.poll() is None
        return running and (self.worker is None or self.worker.ready)


class PodRuntime:
    def __init__(self, node: str, obj: Obj) -> None:
        md = obj["metadata"]
        self.node = node
        self.obj = obj  # the latest object seen (watch) or written (patch answer)
        self.lock = threading.RLock()  # serializes status writers (held over HTTP calls)
        self.obj_lock = threading.Lock()  # guards ``obj`` only, never held over I/O
        self.pod: Pod | None = None
        self.containers: list[Container] = []
        self.containers_ready = False
        self.running = False  # the Running status is written
        self.last_sync = -math.inf  # when its last pod sync ended (monotonic)
        self.started = threading.Event()
        self.wake = threading.Event()  # a pod sync is asked for (the pod's own thread)
        self.terminating = False
        self.stopped = threading.Event()  # its probers stop (the containers are gone)
        self.gone = threading.Event()
        self.record = PodRecord(md.get("namespace", "default"), md["name"], node, md.get("uid", ""))
        self.record.seen_at = time.monotonic()

    @property
    def ns(self) -> str:
        return self.record.namespace

    @property
    def name(self) -> str:
        return self.record.name

    def stop_probes(self) -> None:
        """The containers are gone: their probers stop (a result they still report is
        ignored)."""
        self.stopped.set()
        for c in self.containers:
            if c.worker is not None:
                c.worker.halt()

    # -- status -----------------------------------------------------------------------------
    def container_statuses(self, *, exit_codes: Mapping[str, int] | None = None) -> list[Obj]:
        return [
            container_status(
                c.name,
                c.spec,
                container_id=f"testbed://{self.record.netns}/{c.name}",
                started_at=c.started_at,
                ready=exit_codes is None and c.ready,
                exit_code=None if exit_codes is None else exit_codes.get(c.name, 0),
            )
            for c in self.containers
        ]

    def needs_ready_sync(self, obj: Obj) -> bool:
        """The kubelet's NeedToReconcilePodReadiness: does ``obj``'s Ready condition differ
        from what its readiness gates make it?"""
        if not self.running or self.terminating:
            return False
        status, _, _ = pod_ready_condition(self.containers_ready, obj)
        return conditions_of(obj).get("Ready", {}).get("status") != status

    def note_ready(self) -> None:
        """Record the first ContainersReady / Ready and the first Ready lost after it."""
        now = time.monotonic()
        if self.containers_ready and self.record.containers_ready_at is None:
            self.record.containers_ready_at = now
        ready = conditions_of(self.obj).get("Ready", {}).get("status") == "True"
        if ready and self.record.ready_at is None:
            self.record.ready_at = now
        elif not ready and self.record.ready_at is not None and self.record.unready_at is None:
            self.record.unready_at = now

    # -- handlers ---------------------------------------------------------------------------
    def env(self, c: Obj) -> dict[str, str]:
        """A container's literal env and ``POD_NAME``, ``POD_NAMESPACE``, ``POD_IP``."""
        env = {e["name"]: str(e["value"]) for e in c.get("env") or [] if "value" in e}
        env.update(POD_NAME=self.name, POD_NAMESPACE=self.ns, POD_IP=self.record.ip)
        return env

    def port(self, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for c in (self.obj.get("spec") or {}).get("containers") or []:
            for p in c.get("ports") or []:
                if p.get("name") == port:
                    return int(p["containerPort"])
        raise ValueError(f"no port named {port!r}")

    def run_action(self, c: Container, action: str, handler: Obj, timeout: float) -> None:
        """A probe's or hook's ``httpGet`` / ``tcpSocket`` / ``exec`` (raises on failure)."""
        if action == "httpGet":
            handlers.http_get(handler, self.record.ip, self.port, c.port or 80, timeout)
        elif action == "tcpSocket":
            handlers.tcp_socket(handler, self.record.ip, self.port, timeout)
        elif action == "exec":
            handlers.exec_command(handler, self.env(c.spec), timeout)
        else:
            raise ValueError(f"unknown handler {action!r}")

    # -- termination ------------------------------------------------------------------------
    def run_prestop_hooks(self, deadline: float, stop: threading.Event) -> None:
        """Every container's ``preStop`` hook in parallel, until ``deadline`` at most."""
        hooks = [
            (c, c.spec["lifecycle"]["preStop"])
            for c in self.containers
            if (c.spec.get("lifecycle") or {}).get("preStop")
        ]
        if not hooks:
            return
        t0 = time.monotonic()
        threads = [
            threading.Thread(target=self._run_hook, args=(c, h, deadline, stop), daemon=True)
            for c, h in hooks
        ]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive() and not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                t.join(min(left, 0.1))
        self.record.prestop_s = time.monotonic() - t0
        self.record.prestop_timed_out = any(t.is_alive() for t in threads)

    def _run_hook(self, c: Container, hook: Obj, deadline: float, stop: threading.Event) -> None:
        left = max(0.01, deadline - time.monotonic())
        try:
            if "sleep" in hook:
                stop.wait(min(float(hook["sleep"]["seconds"]), left))
                return
            action = next((a for a in ("httpGet", "exec") if a in hook), None)
            if action is None:
                raise ValueError(f"preStop: httpGet, exec or sleep, not {sorted(hook)}")
            self.run_action(c, action, hook[action], left)
        except handlers.HandlerFailed as e:
            self.record.prestop_errors.append(f"{c.name}: {e}")
        except Exception as e:
            self.record.prestop_errors.append(f"{c.name}: {e!r}")

    def kill(self, grace: float) -> None:
        """SIGTERM every container process, SIGKILL after ``grace`` seconds (0: at once)."""
        with self.lock:
            self.terminating = True
            procs = [(c.name, c.proc) for c in self.containers if c.proc is not None]
        live = [(n, p) for n, p in procs if p.poll() is None]
        if live and self.record.sigterm_at is None:
            self.record.sigterm_at = time.monotonic()
        for _, p in live:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM if grace > 0 else signal.SIGKILL)
        deadline = time.monotonic() + grace
        for name, p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.record.sigkilled = True
                p.kill()
                p.wait()
            code = p.returncode
            self.record.exit_codes[name] = 128 - code if code < 0 else code
        if procs and self.record.exited_at is None:
            self.record.exited_at = time.monotonic()
