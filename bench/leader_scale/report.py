"""The figures printed as a table, against the targets of issue 18."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

TARGETS = {
    "leader_rss_peak_mib": 128.0,
    "node_rss_mib": 80.0,
    "convergence_s": 30.0,
    "lb_ready_p99_s": 2.0,  # plus the LB's own health-check time (rise 1, fastinter 100 ms)
}


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
        "of which the patch request (the API server), p50 / p99 bucket bound, s",
        lambda r: f"{r.get('patch_p50_s')} / {r.get('patch_p99_s')}",
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
