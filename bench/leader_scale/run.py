"""The run: the cluster filled, the LB prefilled, the agents started, convergence and churn
(the figures taken from the agents: :mod:`bench.leader_scale.figures`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import leader_scale as package
from bench._setup import check_sink, prepare
from bench.leader_scale.backends import Backends
from bench.leader_scale.figures import after_churn, at_rest
from bench.leader_scale.objects import (
    GATE,
    NAMESPACES,
    PodPlan,
    plan_pods,
    pod_manifest,
    pod_status,
    service_manifest,
)
from bench.leader_scale.procs import (
    Agent,
    Api,
    free_port,
    is_leader,
    loadavg,
    metric_sum,
    mib,
    precompile,
    run_parallel,
)
from bench.leader_scale.report import report

ROOT = Path(__file__).resolve().parents[2]
AGENT_NAMESPACE = "podlb-system"
# Health checks every 10 s (1,000 checks/s at 10,000 servers), every 100-200 ms while a server
# changes state, so a new server's first verdict comes fast.
SERVER_OPTIONS = "check inter 10s fastinter 100ms downinter 200ms fall 2 rise 1"


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
            after_churn(s.backends, leader, s.work, out)
            at_rest(agents, args.window, out)
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
    parser = argparse.ArgumentParser(
        prog="python -m bench.leader_scale", description=(package.__doc__ or "").splitlines()[0]
    )
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
