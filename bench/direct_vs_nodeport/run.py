"""The driver: alternated rounds over a fresh topology, and the command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import bench.direct_vs_nodeport as package
from bench.direct_vs_nodeport.kubeproxy import NODE_PORT, POD_PORT
from bench.direct_vs_nodeport.load import MIXES, PATHS, Segment, run_segment
from bench.direct_vs_nodeport.podapp import serve_pod
from bench.direct_vs_nodeport.report import format_report, summarize
from bench.direct_vs_nodeport.topology import (
    HAPROXY_DIRECT,
    HAPROXY_NODEPORT,
    LB_IP,
    Testbed,
    build_testbed,
    cpu_split,
    list_bench_netns,
    node_ip,
    sweep_leftovers,
)


@dataclass
class Config:
    rounds: int = 6
    duration: float = 1.5
    pods: int = 3
    nodes: int = 1
    concurrency: int = 1
    keepalive_requests: int = 100
    max_requests: int = 200_000
    mixes: tuple[str, ...] = MIXES
    extra_services: int = 0
    warmup: float = 0.3
    via: str = "client"  # client | haproxy
    pin: bool = True  # LB side (client, HAProxy) on one CPU, the pods on the others
    max_total: float = 120.0


def _machine() -> dict[str, Any]:
    ipt = subprocess.run(["iptables", "-V"], capture_output=True, text=True, check=False)
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "iptables": ipt.stdout.strip(),
    }


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM / SIGHUP raise SystemExit in the main thread, so ``finally`` cleans up."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_bench(cfg: Config, log: Any = None) -> dict[str, Any]:
    """Build the testbed, run the alternated rounds, clean up; return the result document."""
    t_start = time.monotonic()
    sweep_leftovers()
    tb = Testbed(tag=f"dvn{os.getpid()}x{secrets.token_hex(2)}", nodes=cfg.nodes)
    segments: list[Segment] = []
    rounds_done = 0
    split = cpu_split() if cfg.pin else None
    lb_cpus, pod_cpus = split if split else (None, None)
    old_affinity = os.sched_getaffinity(0)
    with _signals_raise():
        try:
            if lb_cpus:  # this process is the client; its worker threads inherit it
                os.sched_setaffinity(0, lb_cpus)
            build_testbed(
                tb,
                cfg.pods,
                cfg.extra_services,
                haproxy=cfg.via == "haproxy",
                pod_cpus=pod_cpus,
                lb_cpus=lb_cpus,
            )
            t_setup = time.monotonic() - t_start
            targets = {
                "direct": [(p.ip, POD_PORT) for p in tb.pods],
                "nodeport": [(node_ip(k), NODE_PORT) for k in range(1, cfg.nodes + 1)],
            }
            if cfg.via == "haproxy":
                targets = {"direct": [HAPROXY_DIRECT], "nodeport": [HAPROXY_NODEPORT]}

            def segment(path: str, mix: str, rnd: int, duration: float) -> Segment:
                return run_segment(
                    tb.lb,
                    targets[path],
                    path=path,
                    mix=mix,
                    round_no=rnd,
                    duration=duration,
                    max_requests=cfg.max_requests,
                    concurrency=cfg.concurrency,
                    keepalive_requests=cfg.keepalive_requests,
                )

            for mix in cfg.mixes:  # warm-up, not counted
                for path in PATHS:
                    segment(path, mix, -1, cfg.warmup)
            for rnd in range(cfg.rounds):
                if time.monotonic() - t_start > cfg.max_total:
                    break
                # A B B A in even rounds, B A A B in odd ones: a drift within a round and
                # the order of the paths both cancel.
                order = PATHS if rnd % 2 == 0 else PATHS[::-1]
                for mix in cfg.mixes:
                    for path in (*order, *order[::-1]):
                        segments.append(segment(path, mix, rnd, cfg.duration / 2))
                rounds_done += 1
                if log:
                    log(f"round {rnd + 1}/{cfg.rounds} done")
        finally:
            tb.close()
            os.sched_setaffinity(0, old_affinity)
    return _result(cfg, tb, segments, rounds_done, (lb_cpus, pod_cpus), t_start, t_setup)


def _result(
    cfg: Config,
    tb: Testbed,
    segments: Sequence[Segment],
    rounds_done: int,
    cpus: tuple[set[int] | None, set[int] | None],
    t_start: float,
    t_setup: float,
) -> dict[str, Any]:
    """The result document of a run (after :meth:`Testbed.close`: it lists what is left)."""
    lb_cpus, pod_cpus = cpus
    left = list_bench_netns(tb.tag)
    return {
        "tag": tb.tag,
        "config": {
            "rounds": cfg.rounds,
            "duration": cfg.duration,
            "pods": cfg.pods,
            "nodes": cfg.nodes,
            "concurrency": cfg.concurrency,
            "keepalive_requests": cfg.keepalive_requests,
            "max_requests": cfg.max_requests,
            "extra_services": cfg.extra_services,
            "via": cfg.via,
            "cpus_lb": sorted(lb_cpus) if lb_cpus else None,
            "cpus_pods": sorted(pod_cpus) if pod_cpus else None,
        },
        "machine": _machine(),
        "addresses": {
            "lb": LB_IP,
            "nodes": [node_ip(k) for k in range(1, cfg.nodes + 1)],
            "pods": {p.name: {"ip": p.ip, "node": node_ip(p.node)} for p in tb.pods},
        },
        "rounds_done": rounds_done,
        "mixes": summarize(segments, rounds_done, {p.name: node_ip(p.node) for p in tb.pods}),
        "seconds_setup": round(t_setup, 2),
        "seconds_total": round(time.monotonic() - t_start, 2),
        "leftover_netns": left,
    }


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench.direct_vs_nodeport", description=package.__doc__
    )
    ap.add_argument("--rounds", type=int, default=6, help="alternated rounds (default 6)")
    ap.add_argument(
        "--duration", type=float, default=1.5, help="seconds per mix and path per round"
    )
    ap.add_argument("--pods", type=int, default=3, help="pod namespaces (>= 2)")
    ap.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="node namespaces (pods spread over them; the NodePort is used on each, so"
        " kube-proxy sends some connections to a pod on another node: the extra hop)",
    )
    ap.add_argument("--concurrency", type=int, default=1, help="client connections in parallel")
    ap.add_argument("--keepalive-requests", type=int, default=100, help="requests per conn")
    ap.add_argument("--max-requests", type=int, default=200_000, help="cap per segment")
    ap.add_argument("--mix", choices=[*MIXES, "both"], default="both")
    ap.add_argument(
        "--extra-services", type=int, default=0, help="other Services walked in KUBE-SERVICES"
    )
    ap.add_argument(
        "--via",
        choices=["client", "haproxy"],
        default="client",
        help="the LB: the bench's own client (picks the pod itself in direct mode) or an"
        " HAProxy in mode tcp in the lb namespace, the client talking to it on loopback",
    )
    ap.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the LB side to the first CPU and the pods to the others",
    )
    ap.add_argument("--json", action="store_true", help="print the JSON document only")
    ap.add_argument("--cleanup", action="store_true", help="remove leftover bench namespaces")
    ap.add_argument("--serve-pod", metavar="NAME", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=POD_PORT, help=argparse.SUPPRESS)
    ap.add_argument("--cpus", default="", help=argparse.SUPPRESS)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.serve_pod:
        cpus = {int(c) for c in args.cpus.split(",") if c}
        serve_pod(args.serve_pod, args.port, cpus or None)
        return 0
    if os.geteuid() != 0:
        print("needs root (creates network namespaces)", file=sys.stderr)
        return 2
    if args.cleanup:
        for ns in sweep_leftovers():
            print(f"removed {ns}")
        return 0
    if not 1 <= args.nodes <= 9 or args.nodes > args.pods:
        ap.error("need 1 <= --nodes <= min(9, --pods)")
    if args.pods < 2 or args.rounds < 1 or args.duration <= 0 or args.concurrency < 1:
        ap.error("need --pods >= 2, --rounds >= 1, --duration > 0, --concurrency >= 1")
    cfg = Config(
        rounds=args.rounds,
        duration=args.duration,
        pods=args.pods,
        nodes=args.nodes,
        concurrency=args.concurrency,
        keepalive_requests=args.keepalive_requests,
        max_requests=args.max_requests,
        mixes=MIXES if args.mix == "both" else (args.mix,),
        extra_services=args.extra_services,
        warmup=min(0.3, args.duration),
        via=args.via,
        pin=args.pin,
    )
    log = None if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    result = run_bench(cfg, log=log)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 1 if result["leftover_netns"] else 0
