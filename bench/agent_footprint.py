"""Benchmark: the footprint of one node agent with 110 pods on its node.

Starts the API double, the simulated kubelet with ``--pods`` real pods (namespaces + app
processes, all opted in with the readiness gate), and one ``podlb-agent run`` process with
default settings (10 s scans). Once every pod is ``datapath-ready``, it measures a steady-state
window: the agent's RSS, CPU time as % of one core, scan time (from its /metrics), and API
requests per minute by verb, resource.

Targets: RSS under 80 MiB, idle CPU under 2 % of one core, no pod write when nothing changes
(the leader's Lease renewals are the only writes).

    .venv/bin/python -m bench.agent_footprint [--pods 110] [--window 60] [--json]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import time

import psutil
from kubernetes import client

from bench._setup import prepare
from tests.testbed.agents import AgentProcess
from tests.testbed.kubeapi import KubeAPIServer
from tests.testbed.node import Kubelet, make_pod
from tests.testbed.rbac import AGENT_TOKEN, agent_cluster

# The container image runs the agent with these (Dockerfile): no docstrings in memory (the
# kubernetes client's are about 11 MiB), two malloc arenas instead of 8 per core and a fixed
# mmap threshold (buffers over 128 KiB go back to the system when freed).
IMAGE_ENV = {"PYTHONOPTIMIZE": "2", "MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072"}
RSS_TARGET_MIB = 80.0
CPU_TARGET_PCT = 2.0


def ready_count(api: KubeAPIServer) -> int:
    n = 0
    for pod in api.store.list("pods", "bench"):
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c.get("type") == "podlb.io/datapath-ready" and c.get("status") == "True":
                n += 1
    return n


def scan_seconds(metrics: str) -> tuple[float, float]:
    total = re.search(r"^podlb_scan_duration_seconds_sum (\S+)", metrics, re.M)
    count = re.search(r"^podlb_scan_duration_seconds_count (\S+)", metrics, re.M)
    return (float(total.group(1)) if total else 0.0, float(count.group(1)) if count else 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=110)
    parser.add_argument("--window", type=float, default=60.0, help="steady-state seconds")
    parser.add_argument("--scan-interval", type=float, default=10.0)
    parser.add_argument(
        "--no-image-env",
        dest="image_env",
        action="store_false",
        help="run the agent without the container image's Python settings (see Dockerfile)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not prepare("creates network namespaces"):
        return 2
    with agent_cluster("bench") as api:
        core = client.CoreV1Api(api.api_client())
        with Kubelet.for_api(api, ["node-a"]) as kubelet:
            t0 = time.monotonic()
            for i in range(args.pods):
                core.create_namespaced_pod(
                    "bench",
                    make_pod(
                        f"app-{i}", "node-a", namespace="bench",
                        readiness_gates=["podlb.io/lb-ready"], probe_period=5,
                    ),
                )  # fmt: skip
            agent = AgentProcess(
                api.url,
                AGENT_TOKEN,
                "node-a",
                extra=["--scan-interval", str(args.scan_interval)],
                env=IMAGE_ENV if args.image_env else {},
            )
            agent.argv[agent.argv.index("--log-level") + 1] = "info"
            agent.start()
            try:
                agent.wait_ready(60)
                deadline = time.monotonic() + 300
                while ready_count(api) < args.pods and time.monotonic() < deadline:
                    time.sleep(0.5)
                setup_s = time.monotonic() - t0
                ready = ready_count(api)
                time.sleep(6)  # one more scan and the lease settled
                assert agent.proc is not None
                proc = psutil.Process(agent.proc.pid)
                cpu0 = proc.cpu_times()
                scan0 = scan_seconds(agent.get("/metrics")[1].decode())
                n0 = len(api.requests)
                w0 = time.monotonic()
                time.sleep(args.window)
                elapsed = time.monotonic() - w0
                cpu1 = proc.cpu_times()
                rss_mib = proc.memory_info().rss / 2**20
                scan1 = scan_seconds(agent.get("/metrics")[1].decode())
                agent_user = f"system:serviceaccount:{AGENT_TOKEN}"
                reqs = [r for r in api.requests[n0:] if r.user == agent_user]
            finally:
                agent.stop()
            del kubelet
    # Only the agent's requests count (the simulated kubelet talks to the same API server).
    cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    by_kind = collections.Counter(
        f"{r.verb} {r.resource}" + (f"/{r.subresource}" if r.subresource else "") for r in reqs
    )
    per_min = {k: v * 60.0 / elapsed for k, v in sorted(by_kind.items())}
    pod_writes = sum(
        v
        for k, v in by_kind.items()
        if k.split()[0] in ("patch", "update", "create") and "leases" not in k
    )
    scans = scan1[1] - scan0[1]
    result = {
        "pods": args.pods,
        "agent_env": IMAGE_ENV if args.image_env else {},
        "cpu_user_s": round(cpu1.user - cpu0.user, 2),
        "cpu_system_s": round(cpu1.system - cpu0.system, 2),
        "pods_datapath_ready": ready,
        "setup_s": round(setup_s, 1),
        "window_s": round(elapsed, 1),
        "rss_mib": round(rss_mib, 1),
        "cpu_pct_of_one_core": round(100 * cpu_s / elapsed, 2),
        "scans": scans,
        "scan_ms_avg": round(1000 * (scan1[0] - scan0[0]) / scans, 2) if scans else None,
        "api_requests_per_min": {k: round(v, 1) for k, v in per_min.items()},
        "pod_writes_in_window": pod_writes,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        env = IMAGE_ENV if args.image_env else "plain"
        print(f"pods on the node        {args.pods} ({ready} datapath-ready), setup {setup_s:.0f}s")
        print(f"steady-state window     {elapsed:.0f} s, agent env {env}")
        print(f"RSS                     {rss_mib:.1f} MiB   (target < {RSS_TARGET_MIB:.0f} MiB)")
        cpu = result["cpu_pct_of_one_core"]
        print(
            f"CPU                     {cpu:.2f} % of one core   (target < {CPU_TARGET_PCT:.0f} %)"
        )
        print(f"  user / system         {result['cpu_user_s']} s / {result['cpu_system_s']} s")
        print(f"scans                   {scans:.0f}, {result['scan_ms_avg']} ms each")
        print(f"pod writes (no change)  {pod_writes}   (target 0)")
        print("API requests per minute:")
        for k, v in per_min.items():
            print(f"  {k:28} {v:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
