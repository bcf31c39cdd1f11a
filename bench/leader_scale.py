"""Benchmark: the leader and a node agent at cluster scale, against a real kube-apiserver.

A :class:`tests.cluster.cluster.ControlPlane` (etcd, kube-apiserver and the
kube-controller-manager's EndpointSlice, namespace, service-account and pod-GC controllers on
127.0.0.1; no node, no kubelet) holds ``--pods`` pods bound to fake Nodes (110 per node) that
look like a Deployment's: three containers with env, probes, resources and volume mounts, an
owner reference, the API server's own defaults and ``managedFields`` from a create by the
controller manager and status patches by the kubelet (the stored size is printed). Their
statuses are patched as a kubelet would (pod IP, start time, container statuses,
``Initialized``, ``ContainersReady``, ``Ready``). ``--services`` headless Services with
``podlb.io/direct: "true"`` select ``--per-service`` pods each (10,000 backends by default);
the other pods belong to no direct Service. Pod IPs are in 198.18.0.0/15 (the benchmarking
range), routed to this host's loopback for the run (the API server refuses loopback endpoint
addresses), where one listener accepts HAProxy's TCP health checks for all of them.

One agent (``python -m agent run --lb haproxy``, the image's Python settings) leads and drives a
real HAProxy with one backend per Service; a second agent does its node's work for a node of
110 pods, watches every Service and stays a Lease candidate. The agents' nodes host no backend
(the fake nodes have no pod namespaces: the node agent would rightly report the pods
``datapath-ready=False``). By default the leader takes over a converged cluster (a failover:
the LB and every backend's ``lb-ready`` as a previous leader left them) and "first
convergence" is its start until its first full round, which must change nothing; with
``--fresh`` the LB is empty and no pod has ``lb-ready`` yet, and it is the start until every
server is UP (the ``lb-ready`` writes are timed apart).

Then churn, for ``--churn-s`` seconds: ``--churn`` backends a second turn not ContainersReady
and back 5 s later, ``--noise`` status writes a second on other pods (a container restart),
and the pods of ``--probe-services`` Services, created not ContainersReady, turn ready one a
second; ContainersReady -> ``lb-ready=True`` is timed on each (p50 / p99). The bench plays the
kubelet's part of the readiness gate (Ready once ``lb-ready`` is True). Then, at rest: API
requests per second (``podlb_kube_requests_total``) and CPU of both agents; their RSS peak and
steady (VmHWM / VmRSS).

    .venv/bin/python -m bench.leader_scale [--pods 30000] [--services 1000]
        [--per-service 10] [--threads 8] [--churn 2] [--noise 20] [--churn-s 60]
        [--window 30] [--status-rate 100] [--fresh] [--baseline DIR] [--json]

``--baseline DIR`` first measures the agents of another checkout (``git archive <commit> | tar
-x -C DIR``) on the same cluster, then this one's, and prints both. Setting up 30,000 pods takes
about 15 minutes on a 2-core machine (printed).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._setup import check_sink, prepare

ROOT = Path(__file__).resolve().parents[1]
GATE = "podlb.io/lb-ready"
NAMESPACES = 10
PER_NODE = 110
ENV = (4, 1, 0)  # plain env vars of the three containers (besides the downward-API ones)
AGENT_NAMESPACE = "podlb-system"
# Health checks every 10 s (1,000 checks/s at 10,000 servers), every 100-200 ms while a server
# changes state, so a new server's first verdict comes fast.
SERVER_OPTIONS = "check inter 10s fastinter 100ms downinter 200ms fall 2 rise 1"
# as the Dockerfile runs the agent
IMAGE_ENV = {"PYTHONOPTIMIZE": "2", "MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072"}
TARGETS = {
    "leader_rss_peak_mib": 128.0,
    "node_rss_mib": 80.0,
    "convergence_s": 30.0,
    "lb_ready_p99_s": 2.0,  # plus the LB's own health-check time (rise 1, fastinter 100 ms)
}


def now_rfc3339(offset: float = 0.0) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset))


def _hex(seed: str, n: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:n]


# -- objects ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PodPlan:
    namespace: str
    name: str
    node: str
    app: str
    rs: str  # the fake ReplicaSet's name
    ip: str
    backend: bool
    probe: bool = False  # created not ContainersReady; turned ready during the churn


def env_vars(app: str, container: str, n: int, refs: int = 5) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {
            "name": "POD_NAME",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
        },
        {
            "name": "POD_NAMESPACE",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
        },
        {
            "name": "POD_IP",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}},
        },
        {
            "name": "NODE_NAME",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}},
        },
        {
            "name": "GOMAXPROCS",
            "valueFrom": {
                "resourceFieldRef": {
                    "containerName": container,
                    "divisor": "0",
                    "resource": "limits.cpu",
                }
            },
        },
    ][:refs]
    for i in range(n):
        out.append({"name": f"{container.upper()}_SETTING_{i}", "value": f"{app}-value-{i:04d}"})
    return out


def probe(path: str, port: str, period: int, failure: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port, "scheme": "HTTP"},
        "periodSeconds": period,
        "failureThreshold": failure,
        "timeoutSeconds": 1,
        "successThreshold": 1,
    }


def pod_manifest(p: PodPlan, port: int) -> dict[str, Any]:
    """A pod as a ReplicaSet creates it from a typical Deployment's template."""
    labels = {
        "app": p.app,
        "pod-template-hash": p.rs.rsplit("-", 1)[1],
        "app.kubernetes.io/name": p.app,
        "app.kubernetes.io/instance": f"{p.app}-prod",
        "app.kubernetes.io/version": "1.24.3",
        "app.kubernetes.io/part-of": "shop",
        "bench.podlb.io/role": "backend" if p.backend else "other",
    }
    mounts = [
        {"name": "config", "mountPath": "/etc/app", "readOnly": True},
        {"name": "tls", "mountPath": "/etc/tls", "readOnly": True},
        {"name": "cache", "mountPath": "/var/cache/app"},
    ]
    containers = [
        {
            "name": "app",
            "image": f"registry.example.com/shop/{p.app}:1.24.3",
            "imagePullPolicy": "IfNotPresent",
            "args": ["--config=/etc/app/config.yaml", "--listen=:8080", "--metrics=:9090"],
            "ports": [
                {"name": "http", "containerPort": port, "protocol": "TCP"},
                {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
            ],
            "env": env_vars(p.app, "app", ENV[0]),
            "resources": {
                "requests": {"cpu": "250m", "memory": "256Mi"},
                "limits": {"cpu": "1", "memory": "512Mi"},
            },
            "volumeMounts": mounts,
            "livenessProbe": probe("/livez", "http", 10, 3),
            "readinessProbe": probe("/readyz", "http", 5, 3),
            "startupProbe": probe("/livez", "http", 2, 30),
            "lifecycle": {"preStop": {"httpGet": {"path": "/v1/drain", "port": 9809}}},
        },
        {
            "name": "proxy",
            "image": "registry.example.com/mesh/proxy:1.29.1",
            "args": ["proxy", "sidecar", "--log-level=warning", "--concurrency=2"],
            "ports": [{"name": "proxy-admin", "containerPort": 15000, "protocol": "TCP"}],
            "env": env_vars(p.app, "proxy", ENV[1], 3),
            "resources": {
                "requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"cpu": "500m", "memory": "256Mi"},
            },
            "readinessProbe": probe("/healthz/ready", "proxy-admin", 2, 30),
            "volumeMounts": [{"name": "tls", "mountPath": "/etc/tls", "readOnly": True}],
        },
        {
            "name": "logs",
            "image": "registry.example.com/ops/log-shipper:2.2.0",
            "env": env_vars(p.app, "logs", ENV[2], 2),
            "resources": {
                "requests": {"cpu": "20m", "memory": "32Mi"},
                "limits": {"cpu": "100m", "memory": "64Mi"},
            },
            "volumeMounts": [{"name": "cache", "mountPath": "/var/cache/app", "readOnly": True}],
        },
    ]
    spec: dict[str, Any] = {
        "nodeName": p.node,
        "containers": containers,
        "volumes": [
            {"name": "config", "configMap": {"name": f"{p.app}-config", "defaultMode": 420}},
            {"name": "tls", "secret": {"secretName": f"{p.app}-tls", "defaultMode": 420}},
            {"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
        "terminationGracePeriodSeconds": 60,
        "securityContext": {"fsGroup": 1000},
    }
    if p.backend:
        spec["readinessGates"] = [{"conditionType": GATE}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": p.name,
            "generateName": f"{p.rs}-",
            "namespace": p.namespace,
            "labels": labels,
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
                "checksum/config": _hex(p.app + "config", 64),
                "kubectl.kubernetes.io/restartedAt": "2024-05-02T09:14:11Z",
            },
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": p.rs,
                    "uid": f"{_hex(p.rs, 8)}-0000-4000-8000-{_hex(p.rs + 'u', 12)}",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def lb_ready_condition(p: PodPlan, port: int) -> dict[str, Any]:
    """``podlb.io/lb-ready`` as the leader writes it for a backend in rotation."""
    pool = f"{p.namespace}.{p.app}.http"
    return {
        "type": GATE,
        "status": "True",
        "reason": "Healthy",
        "message": f"{pool}/{p.ip}_{port}: in rotation, LB health checks pass",
        "lastTransitionTime": now_rfc3339(-300),
    }


def pod_status(
    p: PodPlan, ready: bool, restarts: int = 0, admitted_on: int | None = None
) -> dict[str, Any]:
    """What the kubelet writes once the pod runs (strategic merge on ``pods/status``); with
    ``admitted_on`` (the serving port), a backend also as a converged leader left it."""
    started = now_rfc3339(-600)
    status = "True" if ready else "False"
    reason = (
        {}
        if ready
        else {"reason": "ContainersNotReady", "message": "containers with unready status: [app]"}
    )
    conditions = [
        {
            "type": "Initialized",
            "status": "True",
            "lastProbeTime": None,
            "lastTransitionTime": started,
        },
        {
            "type": "ContainersReady",
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": now_rfc3339(),
            **reason,
        },
        {
            "type": "PodScheduled",
            "status": "True",
            "lastProbeTime": None,
            "lastTransitionTime": started,
        },
    ]
    if admitted_on is not None:
        conditions.append(lb_ready_condition(p, admitted_on))
    if not p.backend or not ready or admitted_on is not None:  # gated: Ready once lb-ready is
        conditions.append(
            {
                "type": "Ready",
                "status": status,
                "lastProbeTime": None,
                "lastTransitionTime": now_rfc3339(),
                **reason,
            }
        )
    else:
        conditions.append(
            {
                "type": "Ready",
                "status": "False",
                "lastProbeTime": None,
                "lastTransitionTime": now_rfc3339(),
                "reason": "ReadinessGatesNotReady",
                "message": f'corresponding condition of pod readiness gate "{GATE}" '
                "does not exist.",
            }
        )
    images = {
        "app": f"registry.example.com/shop/{p.app}:1.24.3",
        "proxy": "registry.example.com/mesh/proxy:1.29.1",
        "logs": "registry.example.com/ops/log-shipper:2.2.0",
    }
    containers = [
        {
            "name": name,
            "image": image,
            "imageID": f"{image.rsplit(':', 1)[0]}@sha256:{_hex(image, 64)}",
            "containerID": f"containerd://{_hex(p.name + name + str(restarts), 64)}",
            "ready": ready or name != "app",
            "started": True,
            "restartCount": restarts,
            "state": {"running": {"startedAt": started}},
            "lastState": {}
            if not restarts
            else {
                "terminated": {
                    "exitCode": 137,
                    "reason": "OOMKilled",
                    "startedAt": started,
                    "finishedAt": now_rfc3339(),
                    "containerID": f"containerd://{_hex(p.name + name + str(restarts - 1), 64)}",
                }
            },
        }
        for name, image in images.items()
    ]
    return {
        "status": {
            "phase": "Running",
            "conditions": conditions,
            "hostIP": "10.0.0.1",
            "hostIPs": [{"ip": "10.0.0.1"}],
            "podIP": p.ip,
            "podIPs": [{"ip": p.ip}],
            "startTime": started,
            "containerStatuses": containers,
        }
    }


def conditions_patch(ready: bool, gated: bool) -> dict[str, Any]:
    """The kubelet's write when a container's readiness probe flips."""
    status = "True" if ready else "False"
    reason = (
        {}
        if ready
        else {"reason": "ContainersNotReady", "message": "containers with unready status: [app]"}
    )
    conds = [
        {"type": "ContainersReady", "status": status, "lastTransitionTime": now_rfc3339(), **reason}
    ]
    if not ready or not gated:
        conds.append(
            {"type": "Ready", "status": status, "lastTransitionTime": now_rfc3339(), **reason}
        )
    return {"status": {"conditions": conds}}


def plan_pods(pods: int, services: int, per_service: int, probe_services: int) -> list[PodPlan]:
    """Backends and other pods over fake nodes of 110; the two agents' nodes (node-0000, the
    leader's, and node-0001) hold no backend."""
    backends = services * per_service
    if backends > pods - 2 * PER_NODE:
        raise SystemExit(f"--pods {pods} leaves no room for {backends} backends + 2 agent nodes")
    if max(backends, pods - backends) > 250 * 256:
        raise SystemExit("more pods than addresses in 198.18.0.0/15")
    plans: list[PodPlan] = []
    rng = random.Random(7)
    others = pods - backends
    items: list[tuple[bool, int, int]] = [
        (True, s, r) for s in range(services) for r in range(per_service)
    ]
    items += [(False, o // 10, o % 10) for o in range(others)]
    agent_items = [x for x in items if not x[0]][: 2 * PER_NODE]
    rest = items[: len(items) - others] + [x for x in items if not x[0]][2 * PER_NODE :]
    rng.shuffle(rest)
    ordered = agent_items + rest
    for i, (backend, group, replica) in enumerate(ordered):
        node = f"node-{i // PER_NODE:04d}"
        ns = f"bench-{group % NAMESPACES}"
        app = f"svc-{group:04d}" if backend else f"app-{group:04d}"
        rs = f"{app}-{_hex(app, 10)}"
        name = f"{rs}-{_hex(f'{app}{replica}', 5)}"
        if backend:
            n = group * per_service + replica
            ip = f"198.18.{n // 250}.{n % 250 + 1}"
        else:
            n = group * 10 + replica
            ip = f"198.19.{n // 250}.{n % 250 + 1}"
        probe_pod = backend and group >= services - probe_services
        plans.append(PodPlan(ns, name, node, app, rs, ip, backend, probe_pod))
    return plans


def service_manifest(i: int) -> dict[str, Any]:
    app = f"svc-{i:04d}"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": app,
            "namespace": f"bench-{i % NAMESPACES}",
            "annotations": {"podlb.io/direct": "true"},
        },
        # Headless: the control plane's Service range has no room for 1,000 ClusterIPs, and
        # podlb.io/direct counts on any type.
        "spec": {
            "clusterIP": "None",
            "selector": {"app": app},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


# -- the API, raw ----------------------------------------------------------------------------
class Api:
    """Raw JSON requests as cluster-admin (no client-side models): one client per thread."""

    GROUPS = {
        "core": "CoreV1Api",
        "discovery": "DiscoveryV1Api",
        "coordination": "CoordinationV1Api",
    }

    def __init__(self, cp: Any) -> None:
        self.cp = cp
        self.local = threading.local()

    def core(self, api: str = "core") -> Any:
        apis = getattr(self.local, "apis", None)
        if apis is None:
            from kubernetes import client

            base = self.cp.api_client()
            apis = {k: getattr(client, v)(base) for k, v in self.GROUPS.items()}
            self.local.apis = apis
        return apis[api]

    def call(self, fn: str, *args: Any, api: str = "core", **kw: Any) -> Any:
        resp = getattr(self.core(api), fn)(*args, _preload_content=False, **kw)
        return json.loads(resp.data) if resp.data else None

    def list_pages(
        self, fn: str, limit: int = 500, api: str = "core", **kw: Any
    ) -> Iterator[dict[str, Any]]:
        cont = None
        while True:
            page = self.call(fn, limit=limit, _continue=cont, api=api, **kw)
            yield page
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                return


def run_parallel(
    threads: int, jobs: list[Any], fn: Callable[[Any], None], what: str
) -> tuple[float, int]:
    """Run ``fn`` over ``jobs`` on ``threads`` threads; retries each job 5 times."""
    failures = [0]

    def one(job: Any) -> None:
        for attempt in range(5):
            try:
                fn(job)
                return
            except Exception as exc:
                failures[0] += 1
                if attempt == 4:
                    raise RuntimeError(f"{what}: {exc}") from exc
                time.sleep(0.5 * (attempt + 1))

    t0 = time.monotonic()
    done = 0
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(one, jobs):
            done += 1
            if done % 5000 == 0:
                rate = done / (time.monotonic() - t0)
                print(f"  {what}: {done}/{len(jobs)} ({rate:.0f}/s)", file=sys.stderr)
    return time.monotonic() - t0, failures[0]


# -- processes -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_kib(pid: int, field_name: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


class OutOfMemory(RuntimeError):
    """The machine is running out of memory: the run stops before the kernel's OOM killer
    picks a victim (an agent whose list never fits makes the API server balloon too)."""


def guard_memory(floor: float = 0.1) -> None:
    text = Path("/proc/meminfo").read_text()
    total, available = (
        int(re.search(rf"^{k}:\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
        for k in ("MemTotal", "MemAvailable")
    )
    if available < floor * total:
        raise OutOfMemory(f"only {available // 1024} MiB of {total // 1024} MiB available")


def loadavg() -> str:
    """The machine's load average over 1, 5 and 15 minutes (a shared machine's runs vary)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


@dataclass
class Agent:
    name: str
    argv: list[str]
    cwd: Path
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    peak_kib: int = 0  # VmHWM, polled
    peak_at_s: float = 0.0  # when it last grew, seconds after the start (to the poll)
    started: float = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(IMAGE_ENV)
        env["PYTHONPATH"] = str(self.cwd)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def poll(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"agent {self.name} exited with {self.proc.returncode}:\n{tail}")
        hwm = proc_kib(self.proc.pid, "VmHWM")
        if hwm > self.peak_kib:
            self.peak_kib, self.peak_at_s = hwm, time.monotonic() - self.started
        guard_memory()

    def rss_kib(self) -> int:
        assert self.proc is not None
        return proc_kib(self.proc.pid, "VmRSS")

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def cpu_s(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def requests_by_kind(metrics: str) -> dict[str, float]:
    """``podlb_kube_requests_total`` summed by "verb resource"."""
    out: dict[str, float] = {}
    for m in re.finditer(r"^podlb_kube_requests_total\{([^}]*)\} (\S+)", metrics, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        key = f"{labels.get('verb')} {labels.get('resource')}"
        out[key] = out.get(key, 0.0) + float(m.group(2))
    return out


def is_leader(agent: Agent) -> bool:
    try:
        return bool(re.search(r"^podlb_leader_is_leader 1\.0$", agent.metrics(), re.M))
    except OSError:
        return False


def precompile(agent_dir: Path) -> None:
    """The image compiles its bytecode at build time (``PYTHONOPTIMIZE=2``): so do we, once."""
    site = sysconfig.get_paths()["purelib"]
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-o", "2", str(agent_dir / "agent"), site],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# -- watching the backends -------------------------------------------------------------------
@dataclass
class Backends:
    """The bench's view of the backends' conditions (a paged list + watch, label-selected)."""

    api: Api
    plans: dict[tuple[str, str], PodPlan]
    gate_writer: ThreadPoolExecutor
    lock: threading.Lock = field(default_factory=threading.Lock)
    lb_ready: dict[tuple[str, str], bool] = field(default_factory=dict)
    ready: dict[tuple[str, str], bool] = field(default_factory=dict)
    cr: dict[tuple[str, str], bool] = field(default_factory=dict)
    # pod -> when its ContainersReady=True was sent, once lb-ready was seen False since
    pending: dict[tuple[str, str], float] = field(default_factory=dict)
    armed: set[tuple[str, str]] = field(default_factory=set)  # lb-ready False seen since unready
    latencies: list[float] = field(default_factory=list)
    # per sample: pod, wall-clock time ContainersReady was sent, seconds to lb-ready=True seen
    samples: list[tuple[str, float, float]] = field(default_factory=list)
    readying: set[tuple[str, str]] = field(default_factory=set)  # Ready=True being written
    rv: str = ""

    def list(self) -> None:
        for page in self.api.list_pages(
            "list_pod_for_all_namespaces", label_selector="bench.podlb.io/role=backend"
        ):
            for obj in page.get("items") or []:
                self._see(obj)
            self.rv = page["metadata"]["resourceVersion"]

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                resp = self.api.core().list_pod_for_all_namespaces(
                    label_selector="bench.podlb.io/role=backend",
                    watch=True,
                    resource_version=self.rv,
                    timeout_seconds=60,
                    allow_watch_bookmarks=True,
                    _preload_content=False,
                )
                from kubernetes.watch.watch import iter_resp_lines

                for line in iter_resp_lines(resp):
                    if stop.is_set():
                        return
                    ev = json.loads(line)
                    obj = ev.get("object") or {}
                    if ev.get("type") == "ERROR":
                        self.list()
                        break
                    self.rv = obj.get("metadata", {}).get("resourceVersion", self.rv)
                    if ev.get("type") in ("ADDED", "MODIFIED"):
                        self._see(obj)
            except Exception as exc:
                print(f"  bench watch: {exc}", file=sys.stderr)
                time.sleep(1)

    def _see(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        conds = {c["type"]: c["status"] == "True" for c in obj["status"].get("conditions") or []}
        lb, cr, rd = (
            conds.get(GATE, False),
            conds.get("ContainersReady", False),
            conds.get("Ready", False),
        )
        now = time.monotonic()
        with self.lock:
            self.lb_ready[key], self.cr[key], self.ready[key] = lb, cr, rd
            if not lb:
                self.armed.add(key)
            elif key in self.pending:
                took = now - self.pending.pop(key)
                self.latencies.append(took)
                self.samples.append((f"{key[0]}/{key[1]}", time.time() - took, took))
                self.armed.discard(key)
            if not (cr and lb and not rd) or key in self.readying:
                return
            self.readying.add(key)
        self.gate_writer.submit(self._set_ready, key)  # the kubelet's part of the gate

    def _set_ready(self, key: tuple[str, str]) -> None:
        body = {
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": now_rfc3339()}
                ]
            }
        }
        try:
            self.api.call(
                "patch_namespaced_pod_status", key[1], key[0], body, field_manager="kubelet"
            )
        except Exception as exc:
            print(f"  bench kubelet: {key}: {exc}", file=sys.stderr)
        finally:
            with self.lock:
                self.readying.discard(key)

    def set_containers_ready(self, key: tuple[str, str], ready: bool) -> None:
        if ready:
            with self.lock:
                if key in self.armed:
                    self.pending[key] = time.monotonic()
        self.api.call(
            "patch_namespaced_pod_status",
            key[1],
            key[0],
            conditions_patch(ready, gated=True),
            field_manager="kubelet",
        )

    def count(self, which: str) -> int:
        with self.lock:
            return sum(1 for v in getattr(self, which).values() if v)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, math.ceil(q * len(s)) - 1)], 3)


# -- the run ---------------------------------------------------------------------------------
@dataclass
class Setup:
    """The cluster, filled once; measured with each agent checkout in turn."""

    args: argparse.Namespace
    cp: Any
    api: Api
    plans: list[PodPlan]
    nodes: list[str]
    port: int  # the pods' serving port (the health-check listener's)
    work: Path
    backends: Backends
    facts: dict[str, Any] = field(default_factory=dict)


def make_control_plane() -> Any:
    from tests.cluster.cluster import ControlPlane

    cp = ControlPlane()
    # No Deployment / ReplicaSet controllers (the pods' owners are fake) and no garbage
    # collector (it would delete pods whose owner is missing); no Endpoints controller (podlb
    # reads EndpointSlices; it would only cost this 2-core machine CPU).
    skip = ("deployment", "replicaset", "garbagecollector", "endpoint")
    controllers: Any = tuple(c for c in cp.controllers if c not in skip)
    cp.controllers = controllers
    return cp


def fill(args: argparse.Namespace, cp: Any, work: Path) -> Setup:
    api = Api(cp)
    plans = plan_pods(args.pods, args.services, args.per_service, args.probe_services)
    nodes = sorted({p.node for p in plans})
    port = free_port()
    for ns in [*(f"bench-{i}" for i in range(NAMESPACES)), AGENT_NAMESPACE]:
        api.call("create_namespace", {"metadata": {"name": ns}})
    for node in nodes:
        api.call(
            "create_node",
            {
                "metadata": {
                    "name": node,
                    "labels": {
                        "kubernetes.io/hostname": node,
                        "topology.kubernetes.io/zone": "zone-a",
                    },
                }
            },
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the service-account admission needs "default"
        sas = api.call("list_service_account_for_all_namespaces")["items"]
        if sum(1 for s in sas if s["metadata"]["name"] == "default") > NAMESPACES:
            break
        time.sleep(0.5)
    for i in range(args.services):
        api.call("create_namespaced_service", f"bench-{i % NAMESPACES}", service_manifest(i))

    def create(p: PodPlan) -> None:
        try:
            api.call(
                "create_namespaced_pod",
                p.namespace,
                pod_manifest(p, port),
                field_manager="kube-controller-manager",
            )
        except Exception as exc:
            if getattr(exc, "status", None) != 409:  # a retried create that had landed
                raise
        api.call(
            "patch_namespaced_pod_status",
            p.name,
            p.namespace,
            initial_status(args, p, port),
            field_manager="kubelet",
        )

    created_s, retries = run_parallel(args.threads, plans, create, "pods created")
    sample = next(p for p in plans if p.backend)
    raw = api.core().read_namespaced_pod(sample.name, sample.namespace, _preload_content=False).data
    facts = {"pod_json_bytes": len(raw), "create_s": round(created_s, 1), "nodes": len(nodes)}
    print(
        f"{args.pods} pods on {len(nodes)} nodes created and status-patched in "
        f"{created_s:.0f}s ({args.pods / created_s:.0f} pods/s, {retries} retries); a backend "
        f"pod is {len(raw) / 1024:.1f} KiB of JSON",
        file=sys.stderr,
    )
    # The EndpointSlice controller's turn: every backend in a slice.
    want = args.services * args.per_service
    deadline = time.monotonic() + 600
    eps = 0
    while time.monotonic() < deadline:
        eps = sum(
            len(s.get("endpoints") or [])
            for page in api.list_pages("list_endpoint_slice_for_all_namespaces", api="discovery")
            for s in page["items"]
            if s["metadata"]["namespace"].startswith("bench-")
        )
        if eps >= want:
            break
        time.sleep(2)
    print(f"EndpointSlices hold {eps} endpoints", file=sys.stderr)
    backends = Backends(
        api, {(p.namespace, p.name): p for p in plans if p.backend}, ThreadPoolExecutor(4)
    )
    backends.list()
    return Setup(args, cp, api, plans, nodes, port, work, backends, facts)


def initial_status(args: argparse.Namespace, p: PodPlan, port: int) -> dict[str, Any]:
    """Probe pods not ContainersReady; the other backends ready, and (unless ``--fresh``) in
    rotation as a previous leader left them."""
    admitted = p.backend and not p.probe and not args.fresh
    return pod_status(p, ready=not p.probe, admitted_on=port if admitted else None)


def start_agent(s: Setup, name: str, node: str, agent_dir: Path, runtime: str) -> Agent:
    empty = s.work / "empty"
    empty.mkdir(exist_ok=True)
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "agent",
        "run",
        "--kubeconfig",
        str(s.cp.admin_kubeconfig),
        "--node-name",
        node,
        "--identity",
        name,
        "--namespace",
        AGENT_NAMESPACE,
        "--listen",
        f"127.0.0.1:{port}",
        "--lb",
        "haproxy",
        "--haproxy-runtime",
        runtime,
        "--haproxy-server-options",
        SERVER_OPTIONS,
        "--status-rate",
        str(s.args.status_rate),
        "--netns-dir",
        str(empty),
        "--log-level",
        "info",
    ]
    agent = Agent(name, argv, agent_dir, port, s.work / f"{name}-{int(time.time())}.log")
    agent.start()
    return agent


def metric_sum(metrics: str, name: str, **labels: str) -> float:
    total = 0.0
    for m in re.finditer(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)", metrics, re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def histogram_bound(metrics: str, name: str, q: float, **labels: str) -> float | None:
    """The upper bound of the histogram bucket that holds the ``q`` quantile (None: no
    samples, or no such histogram)."""
    buckets = []
    for m in re.finditer(rf"^{name}_bucket\{{([^}}]*)\}} (\S+)", metrics, re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(got.get(k) == v for k, v in labels.items()):
            buckets.append((float(got["le"]), float(m.group(2))))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    return next(le for le, n in buckets if n >= q * buckets[-1][1])


def prefill(s: Setup, lb: Any) -> None:
    """The LB as a converged leader left it: every stable backend a server, weight 100."""
    t = time.monotonic()
    for p in s.plans:
        if p.backend and not p.probe:
            lb.add_server(
                f"{p.namespace}.{p.app}.http",
                f"{p.ip}_{s.port}",
                p.ip,
                s.port,
                f"{SERVER_OPTIONS} weight 100",
            )
    print(f"  HAProxy prefilled in {time.monotonic() - t:.0f}s", file=sys.stderr)


def converge(s: Setup, leader: Agent, lb: Any, out: dict[str, Any]) -> None:
    """Failover (default): leader start -> its first full round, which must find nothing to
    change (LB and conditions as a previous leader left them). ``--fresh``: leader start ->
    every stable backend UP in HAProxy, then lb-ready=True on each."""
    stable = sum(1 for p in s.plans if p.backend and not p.probe)
    t0 = time.monotonic()
    done_lb = done_cond = None
    while time.monotonic() < t0 + s.args.converge_timeout and done_cond is None:
        leader.poll()
        if s.args.fresh:
            if done_lb is None:
                up = sum(
                    1
                    for r in lb.stats()
                    if r["svname"] not in ("FRONTEND", "BACKEND") and r["status"] == "UP"
                )
                if up >= stable:
                    done_lb = time.monotonic() - t0
            if s.backends.count("lb_ready") >= stable:
                done_cond = time.monotonic() - t0
        else:
            with contextlib.suppress(OSError):
                text = leader.metrics()
                if metric_sum(text, "podlb_leader_reconcile_duration_seconds_count") >= 1:
                    done_lb = done_cond = time.monotonic() - t0
                    out["first_round_writes"] = metric_sum(
                        text, "podlb_condition_writes_total", outcome="written"
                    )
                    out["first_round_lb_actions"] = metric_sum(text, "podlb_lb_actions_total")
        time.sleep(0.25)
    out["convergence_s"] = round(done_lb, 1) if done_lb else None
    out["lb_ready_all_s"] = round(done_cond, 1) if done_cond else None
    out["leader_peak_at_s"] = round(leader.peak_at_s, 1)
    listed = re.findall(
        r"pods listed: (\d+) in \d+ page\(s\) in ([\d.]+)s", leader.log_path.read_text()
    )
    out["leader_pod_list_s"] = max((float(t) for n, t in listed), default=None)
    print(
        f"  converged after {done_lb}s (lb-ready on all after {done_cond}s); leader RSS "
        f"{mib(leader.rss_kib())} MiB, peak {mib(leader.peak_kib)} MiB reached "
        f"{leader.peak_at_s:.1f}s after its start; the pod list took {out['leader_pod_list_s']}s",
        file=sys.stderr,
    )


def churn(s: Setup, agents: list[Agent]) -> None:
    """Backends unready and back, other pods' container restarts, probe pods turning ready."""
    args, b = s.args, s.backends
    rng = random.Random(11)
    stable = [(p.namespace, p.name) for p in s.plans if p.backend and not p.probe]
    probes = [(p.namespace, p.name) for p in s.plans if p.probe]
    others = [p for p in s.plans if not p.backend]
    restarts: dict[str, int] = {}
    pool = ThreadPoolExecutor(args.threads)
    reverts: list[tuple[float, tuple[str, str]]] = []
    end = time.monotonic() + args.churn_s
    next_probe = time.monotonic()
    ticks = 0

    def per_tick(rate: float) -> int:  # ten ticks a second
        return int(rate / 10) + (1 if rng.random() < (rate / 10) % 1 else 0)

    while (tick := time.monotonic()) < end:
        for _ in range(per_tick(args.churn)):
            key = rng.choice(stable)
            if all(k != key for _, k in reverts):
                pool.submit(b.set_containers_ready, key, False)
                reverts.append((tick + 5, key))
        for _, key in [r for r in reverts if r[0] <= tick]:
            pool.submit(b.set_containers_ready, key, True)
        reverts = [r for r in reverts if r[0] > tick]
        for _ in range(per_tick(args.noise)):
            o = rng.choice(others)
            restarts[o.name] = restarts.get(o.name, 0) + 1
            pool.submit(
                s.api.call,
                "patch_namespaced_pod_status",
                o.name,
                o.namespace,
                pod_status(o, True, restarts[o.name]),
                field_manager="kubelet",
            )
        if probes and tick >= next_probe:
            pool.submit(b.set_containers_ready, probes.pop(), True)
            next_probe = tick + 1.0
        ticks += 1
        if ticks % 10 == 0:
            for a in agents:
                a.poll()
        time.sleep(max(0.0, tick + 0.1 - time.monotonic()))
    for _, key in reverts:
        pool.submit(b.set_containers_ready, key, True)
    pool.shutdown(wait=True)


def measure(s: Setup, agent_dir: Path, out: dict[str, Any]) -> None:
    """One leader and one node agent from ``agent_dir`` on the filled cluster; the figures go
    into ``out`` as they come (a run cut short keeps those it has)."""
    from tests.testbed.haproxy import HAProxy

    args = s.args
    pools = [f"bench-{i % NAMESPACES}.svc-{i:04d}.http" for i in range(args.services)]
    s.backends.latencies.clear()
    s.backends.samples.clear()
    agents: list[Agent] = []
    with HAProxy(
        backends=pools, frontends={pools[0]: 0}, health_check=None, server_options=SERVER_OPTIONS
    ) as lb:
        runtime = f"unix:{lb.socket_path}"
        if not args.fresh:
            prefill(s, lb)
        try:
            leader = start_agent(s, "leader", s.nodes[0], agent_dir, runtime)
            agents.append(leader)
            out["loadavg_start"] = loadavg()
            converge(s, leader, lb, out)
            out["leader_rss_converged_mib"] = mib(leader.rss_kib())
            # The non-leader: its node's 110 pods and every Service; a Lease candidate.
            node = start_agent(s, "node", s.nodes[1], agent_dir, runtime)
            agents.append(node)
            t1 = time.monotonic()
            synced = r'^podlb_kube_informer_synced\{resource="services"\} 1'
            while time.monotonic() - t1 < 120:
                node.poll()
                with contextlib.suppress(OSError):
                    if re.search(synced, node.metrics(), re.M):
                        break
                time.sleep(0.5)
            out["node_sync_s"] = round(time.monotonic() - t1, 1)
            if is_leader(node):
                raise RuntimeError("the node agent leads")
            print(f"  churn for {args.churn_s:.0f}s", file=sys.stderr)
            churn(s, agents)
            time.sleep(10)  # the last flips settle
            out["leader_rss_after_churn_mib"] = mib(leader.rss_kib())
            lat = list(s.backends.latencies)
            out["lb_ready_p50_s"] = percentile(lat, 0.5)
            out["lb_ready_p99_s"] = percentile(lat, 0.99)
            out["lb_ready_samples"] = len(lat)
            # Each sample beside the agents' logs (which carry milliseconds), to follow a slow
            # one through the leader: pod, ContainersReady sent (local time), seconds to lb-ready.
            with (s.work / f"lb-ready-{int(time.time())}.tsv").open("w") as f:
                for pod, sent, took in s.backends.samples:
                    stamp = time.strftime("%H:%M:%S", time.localtime(sent))
                    f.write(f"{pod}\t{stamp}.{int(sent % 1 * 1000):03d}\t{took:.3f}\n")
            with contextlib.suppress(OSError):  # the leader's own view of its lb-ready writes
                text = leader.metrics()
                for q in (0.5, 0.99):
                    out[f"write_wait_p{q * 100:.0f}_s"] = histogram_bound(
                        text, "podlb_condition_write_wait_seconds", q, condition=GATE
                    )
                for q in (0.5, 0.99):  # every round of the leader's term so far
                    out[f"round_p{q * 100:.0f}_s"] = histogram_bound(
                        text, "podlb_leader_reconcile_duration_seconds", q, outcome="ok"
                    )
                out["lb_ready_writes"] = metric_sum(
                    text, "podlb_condition_writes_total", condition=GATE, outcome="written"
                )
            time.sleep(10)  # at rest
            m0 = {a.name: requests_by_kind(a.metrics()) for a in agents}
            c0 = {a.name: a.cpu_s() for a in agents}
            time.sleep(args.window)
            for a in agents:
                a.poll()
                m1 = requests_by_kind(a.metrics())
                rates = {
                    k: round((v - m0[a.name].get(k, 0.0)) / args.window, 2)
                    for k, v in sorted(m1.items())
                    if v > m0[a.name].get(k, 0.0)
                }
                out[f"{a.name}_requests_per_s"] = round(sum(rates.values()), 2)
                out[f"{a.name}_requests"] = rates
                out[f"{a.name}_cpu_pct"] = round(100 * (a.cpu_s() - c0[a.name]) / args.window, 1)
                out[f"{a.name}_rss_peak_mib"] = mib(a.peak_kib)
                out[f"{a.name}_rss_steady_mib"] = mib(a.rss_kib())
            out["loadavg_end"] = loadavg()
        finally:
            for a in agents:
                out.setdefault(f"{a.name}_rss_peak_mib", mib(a.peak_kib))
            for a in reversed(agents):
                a.stop()


def reset(s: Setup) -> None:
    """Back to the state before the first agent: no Lease, probe pods not ready, and the
    backends' lb-ready as :func:`initial_status` made it."""
    targets = [p for p in s.plans if p.backend and (p.probe or s.args.fresh)]

    def one(p: PodPlan) -> None:
        patch = initial_status(s.args, p, s.port)
        patch["status"]["conditions"].append({"type": GATE, "$patch": "delete"})
        s.api.call(
            "patch_namespaced_pod_status", p.name, p.namespace, patch, field_manager="kubelet"
        )

    with contextlib.suppress(Exception):
        s.api.call("delete_namespaced_lease", "podlb-leader", AGENT_NAMESPACE, api="coordination")
    run_parallel(s.args.threads, targets, one, "backends reset")
    want = 0 if s.args.fresh else sum(1 for p in s.plans if p.backend and not p.probe)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and s.backends.count("lb_ready") != want:
        time.sleep(1)


def route(add: bool) -> None:
    """198.18.0.0/15 is local for the run (the health checks reach the listener)."""
    verb = "replace" if add else "del"
    subprocess.run(
        ["ip", "route", verb, "local", "198.18.0.0/15", "dev", "lo", "table", "local"],
        check=add,
        stderr=subprocess.DEVNULL,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=30_000)
    parser.add_argument("--services", type=int, default=1_000)
    parser.add_argument("--per-service", type=int, default=10)
    parser.add_argument("--probe-services", type=int, default=10)
    parser.add_argument("--threads", type=int, default=8, help="concurrent creates and patches")
    parser.add_argument("--churn", type=float, default=2.0, help="backends unready per second")
    parser.add_argument("--noise", type=float, default=20.0, help="other pods' writes per second")
    parser.add_argument("--churn-s", type=float, default=60.0)
    parser.add_argument("--window", type=float, default=30.0, help="seconds at rest measured")
    parser.add_argument("--status-rate", type=float, default=100.0, help="agents' --status-rate")
    parser.add_argument(
        "--converge-timeout", type=float, default=900.0, help="seconds to wait for convergence"
    )
    parser.add_argument("--baseline", type=Path, help="first measure the agent of this checkout")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="empty LB and no lb-ready yet (default: a failover, the LB and the conditions as "
        "a converged leader left them)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not prepare("the Kubernetes control plane, HAProxy, a local route"):
        return 2
    dirs = [*([args.baseline.resolve()] if args.baseline else []), ROOT]
    for d in dirs:
        precompile(d)
    cp = make_control_plane()
    work = Path(tempfile.mkdtemp(prefix="podlb-leader-scale-"))
    stop = threading.Event()
    runs: list[dict[str, Any]] = []
    try:
        t = time.monotonic()
        cp.start()
        print(f"control plane up in {time.monotonic() - t:.1f}s ({cp.server})", file=sys.stderr)
        route(True)
        s = fill(args, cp, work)
        sink = check_sink(s.port, stop)
        threading.Thread(target=s.backends.run, args=(stop,), daemon=True).start()
        for i, d in enumerate(dirs):
            if i:
                reset(s)
            print(f"agents from {d}", file=sys.stderr)
            runs.append({"agent_dir": str(d)})
            try:
                measure(s, d, runs[-1])
            except (RuntimeError, TimeoutError) as exc:  # OutOfMemory, an agent that died
                runs[-1]["error"] = str(exc).splitlines()[0][:200]
                print(f"  run cut short: {runs[-1]['error']}", file=sys.stderr)
        sink.close()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut this short
        stop.set()
        route(False)
        cp.stop()
        print(f"agent logs in {work}", file=sys.stderr)
    report(args, s.facts, runs)
    if args.json:
        print(json.dumps({"facts": s.facts, "runs": runs}, indent=2))
    return 0


def report(args: argparse.Namespace, facts: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    print(
        f"\n{args.pods} pods on {facts['nodes']} fake nodes (a backend pod: "
        f"{facts['pod_json_bytes'] / 1024:.1f} KiB of JSON; created in {facts['create_s']:.0f} s), "
        f"{args.services * args.per_service} backends in {args.services} direct Services; "
        f"churn {args.churn:g} backends/s + {args.noise:g} other writes/s for "
        f"{args.churn_s:g} s\n"
    )
    names = ["baseline", "this checkout"] if len(runs) == 2 else ["measured"]
    print("| | " + " | ".join(names) + " | target |")
    print("|---|" + "---:|" * len(runs) + "---:|")

    def row(name: str, fmt: Callable[[dict[str, Any]], str], target: str = "") -> None:
        print(f"| {name} | " + " | ".join(fmt(r) for r in runs) + f" | {target} |")

    row(
        "leader RSS peak / steady, MiB",
        lambda r: f"{r.get('leader_rss_peak_mib')} / {r.get('leader_rss_steady_mib')}",
        f"< {TARGETS['leader_rss_peak_mib']:.0f} peak",
    )
    row(
        "first convergence (to the first full round; --fresh: all servers UP), s",
        lambda r: str(r.get("convergence_s")),
        f"< {TARGETS['convergence_s']:.0f}",
    )
    row("leader start to lb-ready=True on all, s", lambda r: str(r.get("lb_ready_all_s")))
    row("of the convergence: listing every pod, s", lambda r: str(r.get("leader_pod_list_s")))
    row(
        "leader RSS at convergence / after the churn / at rest, MiB",
        lambda r: " / ".join(
            str(r.get(f"leader_rss_{k}_mib")) for k in ("converged", "after_churn", "steady")
        ),
    )
    row(
        "leader RSS peak reached, s after its start (last growth)",
        lambda r: str(r.get("leader_peak_at_s")),
    )
    row(
        "ContainersReady -> lb-ready=True p50 / p99 under churn, s (samples)",
        lambda r: (
            f"{r.get('lb_ready_p50_s')} / {r.get('lb_ready_p99_s')} ({r.get('lb_ready_samples')})"
        ),
        f"p99 < {TARGETS['lb_ready_p99_s']:.0f} + health check",
    )
    row(
        "leader's lb-ready writes: wait pending -> written, p50 / p99 bucket bound, s (writes)",
        lambda r: (
            f"{r.get('write_wait_p50_s')} / {r.get('write_wait_p99_s')} "
            f"({r.get('lb_ready_writes')})"
        ),
    )
    row(
        "leader's rounds, p50 / p99 bucket bound, s",
        lambda r: f"{r.get('round_p50_s')} / {r.get('round_p99_s')}",
    )
    row("leader API requests/s at rest", lambda r: str(r.get("leader_requests_per_s")))
    row("leader CPU at rest, % of a core", lambda r: str(r.get("leader_cpu_pct")))
    row(
        "node agent RSS peak / steady, MiB",
        lambda r: f"{r.get('node_rss_peak_mib')} / {r.get('node_rss_steady_mib')}",
        f"< {TARGETS['node_rss_mib']:.0f}",
    )
    row("node agent API requests/s at rest", lambda r: str(r.get("node_requests_per_s")))
    row("node agent CPU at rest, % of a core", lambda r: str(r.get("node_cpu_pct")))
    row(
        "load average (1/5/15 min) at the leader's start / at the end",
        lambda r: f"{r.get('loadavg_start')} / {r.get('loadavg_end')}",
    )
    for r in runs:
        if "error" in r:
            print(f"\n{r['agent_dir']}: cut short: {r['error']}")
        print(
            f"\nrequests/s at rest ({r['agent_dir']}): leader {r.get('leader_requests')}, "
            f"node agent {r.get('node_requests')}"
        )


if __name__ == "__main__":
    sys.exit(main())
