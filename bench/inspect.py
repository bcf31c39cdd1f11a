"""Benchmark: full inspector scans of 50, 100 and 200 pod namespaces.

Each pod is a real veth namespace with one listening TCP socket. For each size it prints the
time of a full scan (median of several) with podlb's lean decoder and with pyroute2's decoder,
per-pod time, and the same inspection done the way a shell script would (``ip -j -d -s link``
and ``ss`` per namespace), as a ratio measured in the same run.

Target: 200 pods in under 100 ms on a 2-core machine, at least 20x faster than the
shell baseline.

    .venv/bin/python bench/inspect.py [--sizes 50,100,200] [--repeat 5] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path and this module would shadow
# the standard library's ``inspect``: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

from agent.datapath import Inspector, InspectorConfig  # noqa: E402
from bench._setup import CHILD_EHASH, child_ehash, prepare  # noqa: E402
from tests.testbed.netns import NetnsPool, socket_in_netns  # noqa: E402

TARGET_MS_200 = 100.0
TARGET_RATIO = 20.0


def timed_scans(config: InspectorConfig, repeat: int) -> tuple[float, float, int]:
    """(first scan, median of the next ``repeat``, namespaces): the first one opens the
    netlink sockets of every namespace, the next ones reuse them, as the agent does."""
    with Inspector(config) as inspector:
        first = inspector.scan()
        times = [inspector.scan().duration_s for _ in range(repeat)]
    return first.duration_s, statistics.median(times), len(first.namespaces)


def shell_scan(names: list[str]) -> float:
    """What a shell script does: two forks per namespace, JSON and text parsing skipped."""
    t0 = time.perf_counter()
    for name in names:
        subprocess.run(["ip", "-n", name, "-j", "-d", "-s", "link", "show"], capture_output=True)
        subprocess.run(["ss", "-N", name, "-tan"], capture_output=True)
    return time.perf_counter() - t0


def bench_size(n: int, repeat: int, ehash: int = 0) -> dict[str, float | int]:
    with child_ehash(ehash), NetnsPool(prefix="plb") as pool:
        pods = pool.add_many_veth(n)
        sockets = []
        try:
            for pod in pods:
                s = socket_in_netns(pod.name, socket.AF_INET, socket.SOCK_STREAM)
                s.bind((pod.ip, 8080))
                s.listen()
                sockets.append(s)
            cold, fast, seen = timed_scans(InspectorConfig(), repeat)
            _, ref, _ = timed_scans(InspectorConfig(decoder="pyroute2"), max(1, repeat // 2))
            shell = shell_scan([p.name for p in pods])
        finally:
            for s in sockets:
                s.close()
    return {
        "pods": n,
        "child_ehash": ehash,
        "namespaces_scanned": seen,
        "first_scan_ms": cold * 1000,
        "scan_ms": fast * 1000,
        "per_pod_us": fast / n * 1e6,
        "pyroute2_decoder_ms": ref * 1000,
        "shell_ms": shell * 1000,
        "speedup_vs_shell": shell / fast,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,100,200")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--child-ehash",
        type=int,
        default=1024,
        help="also measure with net.ipv4.tcp_child_ehash_entries=N (0: skip that row)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not prepare("creates network namespaces"):
        return 2
    sizes = [int(n) for n in args.sizes.split(",")]
    rows = [bench_size(n, args.repeat) for n in sizes]
    if args.child_ehash > 0 and Path(CHILD_EHASH).exists():
        rows += [bench_size(n, args.repeat, args.child_ehash) for n in sizes]
    if args.json:
        print(json.dumps({"machine": {"cpus": os.cpu_count()}, "results": rows}, indent=2))
    else:
        print(
            f"{'ehash':>6} {'pods':>5} {'scanned':>8} {'first ms':>9} {'scan ms':>8} {'us/pod':>7} "
            f"{'pyroute2 ms':>12} {'shell ms':>9} {'x shell':>8}"
        )
        for r in rows:
            print(
                f"{r['child_ehash'] or 'host':>6} "
                f"{r['pods']:>5} {r['namespaces_scanned']:>8} {r['first_scan_ms']:>9.1f} "
                f"{r['scan_ms']:>8.1f} "
                f"{r['per_pod_us']:>7.0f} {r['pyroute2_decoder_ms']:>12.1f} "
                f"{r['shell_ms']:>9.0f} {r['speedup_vs_shell']:>7.1f}x"
            )
    for r in rows:
        if r["pods"] != max(sizes):
            continue
        ok = r["scan_ms"] < TARGET_MS_200 and r["speedup_vs_shell"] >= TARGET_RATIO
        print(
            f"target ({r['pods']} pods < {TARGET_MS_200:.0f} ms, >= {TARGET_RATIO:.0f}x shell), "
            f"{'per-namespace' if r['child_ehash'] else 'shared host'} TCP hash: "
            f"{'meets' if ok else 'MISSES'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
