"""Benchmark: a rolling update under load, with podlb, with no hook, and with ``sleep N``.

The scenario (tests/testbed/rollout.py): a 6-replica app behind a real HAProxy whose API takes
``--lb-delay`` seconds to apply a change (as a cloud LB's does), podlb's leader registering the
pods, a steady load of new connections and keep-alive requests through HAProxy, then a full
rolling update (maxSurge 1, maxUnavailable 0). For each mode it prints requests, failed requests
by kind, the preStop hold per old pod (p50 / p99) and the total rollout time (until every old
pod is gone), and "register": the median time from a new pod's ContainersReady to its Ready,
i.e. how long the LB took to accept it through the readiness gate.

Targets: zero failures with podlb; median drain under 3 s; rollout at least 5x faster
than ``sleep 40``. ``--lb-delay 0`` is HAProxy as it is (its Runtime API applies a change at
once); 1 s models a cloud LB's API. Mode ``observe`` is TKE's direct mode against the CLB API
double: the cloud's controller (a stand-in) registers the pods, podlb only reads the CLB.

    .venv/bin/python -m bench.rolling_update [--modes podlb,nohook,sleep,observe] [--sleep 40]
        [--replicas 6] [--lb-delay 1.0] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from agent.report import format_table
from bench._setup import prepare
from tests.testbed.load import ERROR_KINDS, ERROR_MEANINGS
from tests.testbed.rollout import MODES, ScenarioResult, run_scenario


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


HEADER = ("mode", "requests", "failed", "errors by kind", "drain p50 / p99 s", "register s",
          "rollout s")  # fmt: skip


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
            )
        )
    seen = [k for k in ERROR_KINDS if any(k in r.errors() for r in results)]
    legend = [f"  {k}: {ERROR_MEANINGS[k]}" for k in seen]
    return "\n".join([format_table(HEADER, rows, right={1, 2, 4, 5, 6}), *legend])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--modes", default="podlb,nohook,sleep")
    parser.add_argument("--sleep", type=int, default=40, help="seconds of the sleep preStop")
    parser.add_argument("--replicas", type=int, default=6)
    parser.add_argument("--lb-delay", type=float, default=1.0, help="LB API latency, seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not prepare("creates network namespaces"):
        return 2
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            parser.error(f"unknown mode {m!r} (choose from {', '.join(MODES)})")
    results = []
    for mode in modes:
        print(f"running {mode} ...", file=sys.stderr, flush=True)
        results.append(
            run_scenario(
                mode,
                replicas=args.replicas,
                sleep_s=args.sleep,
                lb_delay_s=args.lb_delay,
                log=lambda msg: print(msg, file=sys.stderr, flush=True),
            )
        )
    by_mode = {r.mode: r for r in results}
    summary: dict[str, object] = {}
    if "podlb" in by_mode and "sleep" in by_mode:
        summary["rollout_speedup_vs_sleep"] = round(
            by_mode["sleep"].rollout_s / by_mode["podlb"].rollout_s, 2
        )
    if "podlb" in by_mode:
        p = by_mode["podlb"]
        summary["podlb_zero_failures"] = p.failed == 0
        summary["podlb_median_drain_under_3s"] = (p.drain_p(0.5) or 0.0) < 3.0
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
        print(f"{args.replicas} replicas, LB API latency {args.lb_delay:g}s, load: {load}")
        print(table(results, args.sleep))
        for key, value in summary.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
