"""Benchmark: the leader against one HAProxy with 200 Services x 50 backends (10,000 servers).

Pods are API objects only (no namespaces: 10,000 would not fit this machine), with pod IPs
127.10.<service>.<n> on loopback, where one small TCP server accepts HAProxy's health checks
for all of them. One agent leads and drives HAProxy through its Runtime API. Prints:

* time to first full convergence: from the agent's start until all 10,000 servers are UP;
* time from a pod turning ContainersReady to its server UP in HAProxy (serving), p50 / p99,
  over ``--probes`` pods flipped one after the other;
* the leader's CPU at steady state and the Runtime API commands it sends per minute then
  (changes must be zero when nothing changed; the reads of each round are counted apart).

Targets: convergence under 30 s, p99 under 2 s, no change command when nothing
changed.

    .venv/bin/python -m bench.reconcile [--services 200] [--backends 50] [--probes 30]
        [--window 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import threading
import time
from typing import Any

import psutil

from bench._setup import check_sink, prepare
from tests.testbed.agents import AgentProcess
from tests.testbed.haproxy import HAProxy
from tests.testbed.rbac import AGENT_TOKEN, agent_cluster

PORT = 18080
# Health checks every 2 s (10,000 servers: 5,000 checks/s), but every 100-200 ms while a server
# is changing state, so a new server's first verdict comes fast.
SERVER_OPTIONS = "check inter 2s fastinter 100ms downinter 200ms fall 2 rise 1"
NS = "bench"


def pod(svc: int, n: int, ready: bool) -> dict[str, Any]:
    ip = f"127.10.{svc}.{n + 1}"
    status = "True" if ready else "False"
    return {
        "metadata": {"name": f"s{svc}-p{n}", "namespace": NS, "labels": {"app": f"s{svc}"}},
        "spec": {
            "nodeName": "elsewhere",
            "containers": [
                {"name": "app", "image": "x", "ports": [{"name": "http", "containerPort": PORT}]}
            ],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {"type": "ContainersReady", "status": status},
                {"type": "Ready", "status": "False"},
            ],
        },
    }  # fmt: skip


def service(i: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"s{i}", "namespace": NS, "annotations": {"podlb.io/direct": "true"}},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": f"s{i}"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def up_servers(lb: HAProxy) -> dict[str, str]:
    return {
        f"{r['pxname']}/{r['svname']}": r["status"]
        for r in lb.stats()
        if r["svname"] not in ("FRONTEND", "BACKEND")
    }


def commands(metrics: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in re.finditer(
        r'^podlb_lb_commands_total\{command="([^"]+)",outcome="[^"]+"\} (\S+)', metrics, re.M
    ):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="leader + HAProxy at 10,000 servers")
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--backends", type=int, default=50)
    parser.add_argument("--probes", type=int, default=30)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not prepare("HAProxy, loopback addresses"):
        return 2
    stop = threading.Event()
    sink = check_sink(PORT, stop)
    pools = [f"{NS}.s{i}.http" for i in range(args.services + 1)]  # the last: probe pods
    try:
        with (
            agent_cluster(NS) as api,
            HAProxy(
                backends=pools,
                frontends={pools[0]: 0},
                health_check=None,
                server_options=SERVER_OPTIONS,
            ) as lb,
        ):
            t_setup = time.monotonic()

            def add_pod(obj: dict[str, Any]) -> None:
                # Like the API server, create ignores status: kubelet's part is a status write.
                api.store.create("pods", obj, NS)
                name, status = obj["metadata"]["name"], obj["status"]
                api.store.mutate(
                    "pods", NS, name, lambda o: {**o, "status": status}, subresource="status"
                )

            for i in range(args.services):
                api.store.create("services", service(i), NS)
                for n in range(args.backends):
                    add_pod(pod(i, n, True))
            probe_svc = args.services
            api.store.create("services", service(probe_svc), NS)
            for n in range(args.probes):
                add_pod(pod(probe_svc, n, False))
            setup_s = time.monotonic() - t_setup
            total = args.services * args.backends
            print(f"{total} backends in {args.services} Services created in {setup_s:.1f}s",
                  file=sys.stderr)  # fmt: skip
            agent = AgentProcess(
                api.url, AGENT_TOKEN, "bench-node",
                extra=["--lb", "haproxy", "--haproxy-runtime", f"unix:{lb.socket_path}",
                       "--haproxy-server-options", SERVER_OPTIONS,
                       "--scan-interval", "30", "--log-level", "info"],
            )  # fmt: skip
            t0 = time.monotonic()
            agent.start()
            try:
                converged = None
                deadline = t0 + float(os.environ.get("BENCH_CONVERGE_TIMEOUT", "300"))
                while time.monotonic() < deadline:
                    states = up_servers(lb)
                    if sum(1 for s in states.values() if s == "UP") >= total:
                        converged = time.monotonic() - t0
                        break
                    time.sleep(0.25)
                print(f"converged: {converged}", file=sys.stderr)
                if converged is None:
                    print(agent.log_text()[-3000:], file=sys.stderr)
                # ContainersReady -> serving, one probe pod at a time.
                latencies = []
                for n in range(args.probes):
                    name = f"s{probe_svc}-p{n}"
                    server = f"{pools[probe_svc]}/127.10.{probe_svc}.{n + 1}_{PORT}"

                    def flip(obj: dict[str, Any]) -> dict[str, Any]:
                        for c in obj["status"]["conditions"]:
                            if c["type"] == "ContainersReady":
                                c["status"] = "True"
                        return obj

                    t1 = time.monotonic()
                    api.store.mutate("pods", NS, name, flip, subresource="status")
                    while time.monotonic() - t1 < 30:
                        rows = {f"{r['pxname']}/{r['svname']}": r["status"]
                                for r in lb.stats() if r["pxname"] == pools[probe_svc]}  # fmt: skip
                        if rows.get(server) == "UP":
                            latencies.append(time.monotonic() - t1)
                            break
                        time.sleep(0.02)
                    time.sleep(0.2)
                # Steady state.
                time.sleep(5)
                assert agent.proc is not None
                proc = psutil.Process(agent.proc.pid)
                cpu0 = proc.cpu_times()
                m0 = commands(agent.get("/metrics")[1].decode())
                time.sleep(args.window)
                cpu1 = proc.cpu_times()
                m1 = commands(agent.get("/metrics")[1].decode())
                rss = proc.memory_info().rss / 2**20
            finally:
                agent.stop()
    finally:
        stop.set()
        sink.close()
    cpu_pct = 100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / args.window
    per_min = {k: round((m1.get(k, 0) - m0.get(k, 0)) * 60 / args.window, 1) for k in m1}
    changes = sum(v for k, v in per_min.items() if not k.startswith("show"))
    lat = sorted(latencies)
    result = {
        "services": args.services,
        "backends": total,
        "convergence_s": round(converged, 2) if converged else None,
        "ready_to_serving_p50_s": round(statistics.median(lat), 3) if lat else None,
        "ready_to_serving_p99_s": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3)
        if lat
        else None,
        "probes": len(lat),
        "leader_cpu_pct_of_one_core": round(cpu_pct, 2),
        "leader_rss_mib": round(rss, 1),
        "runtime_commands_per_min": per_min,
        "change_commands_when_idle": changes,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:32} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
