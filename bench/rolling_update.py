"""Benchmark: a rolling update under load, with podlb, with no hook, and with ``sleep N``.

The scenario (tests/testbed/rollout.py): a 6-replica app behind a real HAProxy whose API takes
``--lb-delay`` seconds to apply a change (as a cloud LB's does), podlb's leader registering the
pods, a steady load of new connections and keep-alive requests through HAProxy, then a full
rolling update (maxSurge 1, maxUnavailable 0). For each mode it prints requests, failed requests
by kind, the preStop hold per old pod (p50 / p99) and the total rollout time (until every old
pod is gone), and "register": the median time from a new pod's ContainersReady to its Ready,
i.e. how long the LB took to accept it through the readiness gate.

Under the table, for each mode with drain hooks: how many drains ended by
``deregistered+quiet`` (the LB confirmed and the pod went quiet) rather than by a timer, read
from the agents' drain records (``/v1/drains``), and how each other one ended and why; each
mode's first failed requests, at the local time they were sent (to find them in the agents'
logs), and HAProxy's log of the sessions that ended abnormally (server, timers, termination
state). ``--keep-logs DIR`` keeps each mode's agent and HAProxy logs.

Targets: zero failures with podlb; median drain under 3 s; rollout at least 5x faster
than ``sleep 40``; at least 95 % of the drains ended by ``deregistered+quiet``.
``--lb-delay 0`` is HAProxy as it is (its Runtime API applies a change at once); 1 s models
a cloud LB's API. Mode ``observe`` is TKE's direct mode against the CLB API double: the
cloud's controller (a stand-in) registers the pods, podlb only reads the CLB.

    .venv/bin/python -m bench.rolling_update [--modes podlb,nohook,sleep,observe] [--sleep 40]
        [--replicas 6] [--max-surge 1] [--server-options OPTIONS] [--lb-delay 1.0]
        [--tcp-child-ehash N] [--json]

At scale (the issue's 300-pod case: maxSurge 25 %, HAProxy checks every second, 2 to rise;
375 pods and their probes, checks and agents load both cores for three to four minutes a mode,
so under the cluster lock; ``--tcp-child-ehash 1024`` spares the agents' drain looks the walk of
the host's whole TCP hash, as the README advises for nodes):

    flock /tmp/podlb-cluster.lock .venv/bin/python -m bench.rolling_update --replicas 300 \
        --max-surge 25% --lb-delay 1 --server-options "check inter 1s fall 2 rise 2" \
        --tcp-child-ehash 1024 --modes podlb,nohook,sleep

``--cluster`` runs the same comparison on the real single-node cluster of the tests
(tests/cluster/: real kube-apiserver, controllers, kubelet, containerd, preStop hooks and
readiness gates; podlb deployed from daemonset/), with the node's HAProxy behind a Runtime API
that answers after ``--lb-delay``. Modes there: podlb, exec, nohook, sleep.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from agent.report import format_table
from bench._setup import CHILD_EHASH, child_ehash, log_clock, prepare
from tests.cluster.cluster import running_cluster
from tests.cluster.images import agent_image, app_image, pause_image
from tests.cluster.podlb import Podlb, node_haproxy
from tests.cluster.rollout import MODES as CLUSTER_MODES
from tests.cluster.rollout import run_rollout
from tests.testbed.load import ERROR_KINDS, ERROR_MEANINGS
from tests.testbed.rollout import HAPROXY_SERVER_OPTIONS, MODES, ScenarioResult, run_scenario


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


HEADER = ("mode", "requests", "failed", "errors by kind", "drain p50 / p99 s", "register s",
          "rollout s", "writes/pod")  # fmt: skip


def table(results: list[ScenarioResult], sleep_s: int) -> str:
    """The comparison table, then what each error kind in it means."""
    rows = []
    for r in results:
        errors = r.errors()
        rows.append(
            (
                f"sleep {sleep_s}" if r.mode == "sleep" else r.mode,
                str(r.requests),
                str(r.failed),
                ", ".join(f"{k}={v}" for k, v in errors.items()) or "none",
                f"{fmt(r.drain_p(0.5))} / {fmt(r.drain_p(0.99))}",
                fmt(median(r.register_s)),
                f"{r.rollout_s:.1f}",
                writes_per_pod(r),
            )
        )
    seen = [k for k in ERROR_KINDS if any(k in r.errors() for r in results)]
    legend = [f"  {k}: {ERROR_MEANINGS[k]}" for k in seen]
    legend.append(
        "  writes/pod: podlb's pod status writes during the rollout per pod it created or "
        "deleted, lb-ready + datapath-ready"
    )
    return "\n".join([format_table(HEADER, rows, right={1, 2, 4, 5, 6, 7}), *legend])


def writes_per_pod(r: ScenarioResult) -> str:
    lb, dp = r.writes_per_pod("podlb.io/lb-ready"), r.writes_per_pod("podlb.io/datapath-ready")
    return "-" if lb is None or dp is None else f"{lb:.1f} + {dp:.1f}"


def drain_endings(results: list[ScenarioResult]) -> list[str]:
    """Per mode with drain records: the fraction that ended by deregistered+quiet, and each
    other drain's outcome and reason."""
    lines = []
    for r in results:
        ended, total = r.signal_ended()
        if not total:
            continue
        dereg = median([d["deregistered_s"] for d in r.drains if d["deregistered_s"] is not None])
        at_dereg = [d["connections_at_deregistered"] or 0 for d in r.drains]
        lines.append(
            f"{r.mode}: drains ended by deregistered+quiet: {ended} of {total} "
            f"({100 * ended / total:.0f} %); deletion to the LB's Deregistered p50 {fmt(dereg)} s, "
            f"connections then {sum(at_dereg)} in all; after it: "
            f"{sum(d['new_connections'] or 0 for d in r.drains)} new connections, "
            f"{sum(d['quiet_bytes'] or 0 for d in r.drains)} bytes received"
        )
        for d in r.drains:
            if d["outcome"] != "deregistered+quiet":
                lines.append(
                    f"  {d['namespace']}/{d['pod']}: {d['outcome']} after {d['seconds']:.2f}s: "
                    f"{d['message']}"
                )
    return lines


def failed_requests(results: list[ScenarioResult], most: int = 5) -> list[str]:
    """Each mode's first failed requests, at the local time they were sent (the agents' logs
    carry the same clock, to the millisecond), with their kind and what the client saw."""
    lines = []
    for r in results:
        for name, load in (("new connection", r.new_conn), ("keep-alive", r.keepalive)):
            if load is None or not load.error_events:
                continue
            shown = load.error_events[:most]
            more = len(load.error_events) - len(shown)
            lines.append(f"{r.mode}: failed {name} requests{f' (first {most})' if more else ''}:")
            for t, kind, detail in shown:
                lines.append(f"  {log_clock(load.started_at + t)} {kind}: {detail[:120]}")
        if r.lb_abnormal:
            shown = r.lb_abnormal[:most]
            more = f" (first {most} of {len(r.lb_abnormal)})" if len(r.lb_abnormal) > most else ""
            lines.append(f"{r.mode}: HAProxy's abnormal sessions{more}:")
            lines += [f"  {line[:200]}" for line in shown]
    return lines


def register_breakdown(results: list[ScenarioResult]) -> list[str]:
    """Where a new pod's register time goes (real node: from the pods' condition times)."""
    return [
        f"{r.mode}: from ContainersReady, median: datapath-ready True "
        f"{fmt(median(r.datapath_lag_s))} s, lb-ready True {fmt(median(r.lb_ready_s))} s, "
        f"then Ready {fmt(median(r.gate_lag_s))} s later"
        for r in results
        if r.lb_ready_s
    ]


LOADS: dict[str, tuple[float, float]] = {}  # mode -> 1-minute load average before, after


def run_on_testbed(modes: list[str], args: argparse.Namespace) -> list[ScenarioResult]:
    results = []
    for mode in modes:
        say(f"running {mode} ...")
        before = os.getloadavg()[0]
        results.append(
            run_scenario(
                mode, replicas=args.replicas, sleep_s=args.sleep, lb_delay_s=args.lb_delay,
                log=say, max_surge=args.max_surge, server_options=args.server_options,
                agent_args=args.agent_args.split(), keep_logs=args.keep_logs,
            )
        )  # fmt: skip
        LOADS[mode] = (before, os.getloadavg()[0])
    return results


def run_on_cluster(modes: list[str], args: argparse.Namespace) -> list[ScenarioResult]:
    say("building images (cached) and starting the cluster ...")
    images = (pause_image(), agent_image(), app_image())
    results = []
    with running_cluster(images) as cluster, node_haproxy() as lb:
        podlb = Podlb(cluster)
        podlb.install()
        for mode in modes:
            say(f"running {mode} on the real node ...")
            results.append(
                run_rollout(
                    podlb, lb, mode, name=f"roll-{mode}", replicas=args.replicas,
                    sleep_s=args.sleep, lb_delay_s=args.lb_delay, say=say,
                    gate_admit=args.gate_admit,
                )
            )  # fmt: skip
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--modes", default="podlb,nohook,sleep")
    parser.add_argument("--sleep", type=int, default=40, help="seconds of the sleep preStop")
    parser.add_argument("--replicas", type=int, default=6)
    parser.add_argument("--lb-delay", type=float, default=1.0, help="LB API latency, seconds")
    parser.add_argument(
        "--max-surge", default="1", help="the rollout's maxSurge: N or N%% (testbed)"
    )
    parser.add_argument(
        "--server-options",
        default=HAPROXY_SERVER_OPTIONS,
        help="HAProxy's options on each server: its health checks (testbed)",
    )
    parser.add_argument(
        "--gate-admit",
        choices=("rotation", "checked"),
        help="the Service's podlb.io/gate-admit (real node; default: the annotation unset)",
    )
    parser.add_argument(
        "--tcp-child-ehash",
        type=int,
        default=0,
        metavar="N",
        help="give each pod namespace a TCP hash of N buckets (net.ipv4.tcp_child_ehash_entries, "
        "restored after; testbed; 0: they share the host's, as on a default node)",
    )
    parser.add_argument(
        "--agent-args",
        default="",
        metavar="FLAGS",
        help="more flags for the testbed's agents, e.g. --agent-args='--scan-interval 10 "
        "--log-level info' "
        "(the product's defaults; the testbed runs them with 0.5 and debug)",
    )
    parser.add_argument(
        "--keep-logs",
        type=Path,
        metavar="DIR",
        help="copy each mode's agent and HAProxy logs into DIR (testbed)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--cluster", action="store_true", help="on the real single-node cluster (tests/cluster)"
    )
    args = parser.parse_args()
    if not prepare("creates network namespaces"):
        return 2
    modes = [m for m in args.modes.split(",") if m]
    allowed = CLUSTER_MODES if args.cluster else MODES
    for m in modes:
        if m not in allowed:
            parser.error(f"unknown mode {m!r} (choose from {', '.join(allowed)})")
    if args.agent_args and args.cluster:
        parser.error("--agent-args: testbed only (the real node runs the DaemonSet's flags)")
    if args.keep_logs and args.cluster:
        parser.error("--keep-logs: testbed only (on the real node: kubectl logs)")
    if args.tcp_child_ehash and (args.cluster or not os.path.exists(CHILD_EHASH)):
        parser.error("--tcp-child-ehash: testbed only, on Linux 6.1 or later")
    if args.cluster:
        results = run_on_cluster(modes, args)
    else:
        with child_ehash(args.tcp_child_ehash):
            results = run_on_testbed(modes, args)
    by_mode = {r.mode: r for r in results}
    summary: dict[str, object] = {}
    if "podlb" in by_mode and "nohook" in by_mode:
        summary["rollout_ratio_vs_nohook"] = round(
            by_mode["podlb"].rollout_s / by_mode["nohook"].rollout_s, 2
        )
    if "podlb" in by_mode and "sleep" in by_mode:
        summary["rollout_speedup_vs_sleep"] = round(
            by_mode["sleep"].rollout_s / by_mode["podlb"].rollout_s, 2
        )
    if "podlb" in by_mode:
        p = by_mode["podlb"]
        summary["podlb_zero_failures"] = p.failed == 0
        summary["podlb_median_drain_under_3s"] = (p.drain_p(0.5) or 0.0) < 3.0
        per_pod = p.writes_per_pod("podlb.io/lb-ready")
        if per_pod is not None:
            summary["podlb_lb_ready_writes_per_pod"] = round(per_pod, 2)
        fraction = p.signal_ended_fraction()
        if fraction is not None:
            summary["podlb_drains_signal_ended_fraction"] = round(fraction, 3)
            summary["podlb_drains_signal_ended_at_least_95pct"] = fraction >= 0.95
    if args.json:
        print(
            json.dumps(
                {
                    "settings": vars(args),
                    "results": [r.as_dict() for r in results],
                    "summary": summary,
                },
                indent=2,
            )
        )
    else:
        load = "2 new-connection + 2 keep-alive clients through HAProxy"
        where = "real node (kubelet v1.28.7)" if args.cluster else "testbed (simulated kubelet)"
        surge = (
            "" if args.cluster else f", maxSurge {args.max_surge}, HAProxy {args.server_options!r}"
        )
        if args.gate_admit:
            surge += f", podlb.io/gate-admit: {args.gate_admit}"
        if args.tcp_child_ehash:
            surge += f", pod TCP hash {args.tcp_child_ehash} buckets"
        if args.agent_args:
            surge += f", agents with {args.agent_args}"
        print(
            f"{where}: {args.replicas} replicas{surge}, LB API latency {args.lb_delay:g}s, "
            f"load: {load}"
        )
        print(table(results, args.sleep))
        for line in drain_endings(results) + register_breakdown(results) + failed_requests(results):
            print(line)
        for mode, (before, after) in LOADS.items():
            print(f"{mode}: load average (1 min) {before:.1f} before, {after:.1f} after")
        for key, value in summary.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
