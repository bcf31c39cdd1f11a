"""The figures a run takes from its agents: the leader's after the churn, every agent's at
rest."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from bench._setup import log_clock
from bench.leader_scale.backends import Backends, percentile
from bench.leader_scale.objects import GATE
from bench.leader_scale.procs import Agent, histogram_bound, metric_sum, mib, requests_by_kind


def after_churn(backends: Backends, leader: Agent, work: Path, out: dict[str, Any]) -> None:
    """ContainersReady -> lb-ready over the churn (each sample also written beside the agents'
    logs), and the leader's own view of it from its metrics."""
    out["leader_rss_after_churn_mib"] = mib(leader.rss_kib())
    lat = list(backends.latencies)
    out["lb_ready_p50_s"] = percentile(lat, 0.5)
    out["lb_ready_p99_s"] = percentile(lat, 0.99)
    out["lb_ready_samples"] = len(lat)
    # Each sample beside the agents' logs (which carry milliseconds), to follow a slow one
    # through the leader: pod, ContainersReady sent (local time), seconds to lb-ready.
    with (work / f"lb-ready-{int(time.time())}.tsv").open("w") as f:
        for pod, sent, took in backends.samples:
            f.write(f"{pod}\t{log_clock(sent)}\t{took:.3f}\n")
    with contextlib.suppress(OSError):
        text = leader.metrics()
        for q in (0.5, 0.99):
            out[f"write_wait_p{q * 100:.0f}_s"] = histogram_bound(
                text, "podlb_condition_write_wait_seconds", q, condition=GATE
            )
        for q in (0.5, 0.99):  # the patches themselves: the API server's part
            out[f"patch_p{q * 100:.0f}_s"] = histogram_bound(
                text, "podlb_kube_request_duration_seconds", q,
                verb="patch", resource="pods/status",
            )  # fmt: skip
        for q in (0.5, 0.99):  # every round of the leader's term so far
            out[f"round_p{q * 100:.0f}_s"] = histogram_bound(
                text, "podlb_leader_reconcile_duration_seconds", q, outcome="ok"
            )
        out["lb_ready_writes"] = metric_sum(
            text, "podlb_condition_writes_total", condition=GATE, outcome="written"
        )


def at_rest(agents: list[Agent], window: float, out: dict[str, Any]) -> None:
    """Each agent's API requests per second (by kind), CPU and memory over ``window`` seconds
    at rest, after 10 s for the last writes to settle."""
    time.sleep(10)
    m0 = {a.name: requests_by_kind(a.metrics()) for a in agents}
    c0 = {a.name: a.cpu_s() for a in agents}
    time.sleep(window)
    for a in agents:
        a.poll()
        m1 = requests_by_kind(a.metrics())
        rates = {
            k: round((v - m0[a.name].get(k, 0.0)) / window, 2)
            for k, v in sorted(m1.items())
            if v > m0[a.name].get(k, 0.0)
        }
        out[f"{a.name}_requests_per_s"] = round(sum(rates.values()), 2)
        out[f"{a.name}_requests"] = rates
        out[f"{a.name}_cpu_pct"] = round(100 * (a.cpu_s() - c0[a.name]) / window, 1)
        out[f"{a.name}_rss_peak_mib"] = mib(a.peak_kib)
        out[f"{a.name}_rss_steady_mib"] = mib(a.rss_kib())
