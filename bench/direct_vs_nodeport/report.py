"""Statistics of the measured segments and the printed report."""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bench.direct_vs_nodeport.load import MIXES, PATHS, Segment
from bench.direct_vs_nodeport.topology import LB_IP

STALL_MS = 200  # the minimum TCP retransmission timeout


def percentile(sorted_values: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    idx = max(0, math.ceil(q * len(sorted_values)) - 1)
    return float(sorted_values[idx])


def _stats(segments: Sequence[Segment], pod_node: dict[str, str]) -> dict[str, Any]:
    lat = sorted(v for s in segments for v in s.latencies_ns)
    elapsed = sum(s.elapsed for s in segments)
    pods: Counter[str] = Counter()
    srcs: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    for s in segments:
        pods.update(s.pods)
        srcs.update(s.srcs)
        pairs.update(s.pairs)
    # After SNAT the pod sees the node that took the connection: another node = one more hop.
    nodes = set(pod_node.values())
    cross = sum(n for (pod, src), n in pairs.items() if src in nodes and src != pod_node.get(pod))
    return {
        "requests": len(lat),
        "errors": sum(s.errors for s in segments),
        "seconds": round(elapsed, 3),
        "p50_us": round(percentile(lat, 0.50) / 1000, 1),
        "p90_us": round(percentile(lat, 0.90) / 1000, 1),
        "p99_us": round(percentile(lat, 0.99) / 1000, 1),
        "mean_us": round(sum(lat) / len(lat) / 1000, 1) if lat else 0.0,
        "max_ms": round(lat[-1] / 1e6, 1) if lat else 0.0,
        # Requests slower than STALL_MS: a lost SYN / segment waiting for a retransmission.
        "stalls": len(lat) - bisect.bisect_left(lat, STALL_MS * 1_000_000),
        "rps": round(len(lat) / elapsed, 1) if elapsed else 0.0,
        "pods": dict(sorted(pods.items())),
        "src_ips": dict(srcs.most_common()),
        "cross_node_pct": round(100 * cross / len(lat), 1) if lat else 0.0,
    }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def summarize(
    segments: Sequence[Segment], rounds_done: int, pod_node: dict[str, str]
) -> dict[str, Any]:
    """Pooled figures per (mix, path), direct/NodePort ratios, and per-round p50 ratios."""
    out: dict[str, Any] = {}
    for mix in MIXES:
        segs = [s for s in segments if s.mix == mix]
        if not segs:
            continue
        per_path = {p: _stats([s for s in segs if s.path == p], pod_node) for p in PATHS}
        d, n = per_path["direct"], per_path["nodeport"]
        round_ratios = []
        for r in range(rounds_done):
            by = {s.path: sorted(s.latencies_ns) for s in segs if s.round == r}
            if all(by.get(p) for p in PATHS):
                round_ratios.append(
                    _ratio(percentile(by["direct"], 0.5), percentile(by["nodeport"], 0.5))
                )
        chrono = [x for x in round_ratios if x is not None]
        rr = sorted(chrono)
        out[mix] = {
            **per_path,
            "ratio_direct_over_nodeport": {
                "p50": _ratio(d["p50_us"], n["p50_us"]),
                "p90": _ratio(d["p90_us"], n["p90_us"]),
                "p99": _ratio(d["p99_us"], n["p99_us"]),
                "mean": _ratio(d["mean_us"], n["mean_us"]),
                "rps": _ratio(d["rps"], n["rps"]),
                "p50_per_round": chrono,  # in run order
                "p50_round_median": rr[len(rr) // 2] if rr else None,
            },
        }
    return out


def _spread(pods: dict[str, int]) -> str:
    total = sum(pods.values()) or 1
    return " ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(pods.items()))


def format_report(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        f"direct pod mode vs NodePort (kube-proxy iptables rules) — {cfg['pods']} pods on"
        f" {cfg['nodes']} node(s),"
        f" {result['rounds_done']} rounds x {cfg['duration']} s per mix and path,"
        f" concurrency {cfg['concurrency']}, keep-alive {cfg['keepalive_requests']} req/conn,"
        f" CPUs LB side {cfg['cpus_lb']} / pods {cfg['cpus_pods']},"
        f" {cfg['extra_services']} other Services in KUBE-SERVICES, LB = {cfg['via']}",
        f"machine: {result['machine']['cpus']} CPUs, kernel {result['machine']['kernel']},"
        f" {result['machine']['iptables']}",
        "",
        f"{'mix':<10} {'path':<9} {'requests':>8} {'err':>4} {'p50 µs':>8} {'p90 µs':>8}"
        f" {'p99 µs':>8} {'mean µs':>8} {'req/s':>8} {'stalls':>6} {'x-node':>6}"
        f"  {'source IP seen by pod':<38}"
        " spread over pods",
    ]
    src_label = {LB_IP: "LB"}
    src_label.update({ip_: f"node{k}" for k, ip_ in enumerate(result["addresses"]["nodes"], 1)})
    for mix, m in result["mixes"].items():
        for path in PATHS:
            s = m[path]
            srcs = ",".join(f"{ip_} ({src_label.get(ip_, '?')})" for ip_ in sorted(s["src_ips"]))
            lines.append(
                f"{mix:<10} {path:<9} {s['requests']:>8} {s['errors']:>4} {s['p50_us']:>8}"
                f" {s['p90_us']:>8} {s['p99_us']:>8} {s['mean_us']:>8} {s['rps']:>8}"
                f" {s['stalls']:>6} {s['cross_node_pct']:>5}%"
                f"  {srcs:<38} {_spread(s['pods'])}"
            )
        r = m["ratio_direct_over_nodeport"]
        lines.append(
            f"{mix:<10} {'d/n':<9} {'':>8} {'':>4} {r['p50']!s:>8} {r['p90']!s:>8}"
            f" {r['p99']!s:>8} {r['mean']!s:>8} {r['rps']!s:>8} {'':>6} {'':>6}"
            "  p50 ratio by round (run order): "
            + " ".join(f"{x:.2f}" for x in r["p50_per_round"])
            + f" (median {r['p50_round_median']})"
        )
    lines.append("")
    lines.append(
        f"total {result['seconds_total']} s (setup {result['seconds_setup']} s);"
        f" the pod sees {LB_IP} = the LB (preserved) or a node address (SNAT);"
        " x-node = requests a node forwarded to a pod on another node;"
        f" stalls = requests over {STALL_MS} ms (a TCP retransmission)"
    )
    return "\n".join(lines)
