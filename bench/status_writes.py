"""Benchmark: a burst of condition writes through the real client and status sink.

What a leader takeover or a large rollout hands the ``lb-ready`` writers at once: ``--cosmetic``
pods not ready yet to be told ``NotRegistered`` (queued first), then ``--admit`` pods whose LB
confirmed them, to be told ``Healthy`` (True: their rollout waits for it). The writes go through
:class:`agent.kube.pods.PodStatusSink` and the Kubernetes client to the API double
(``tests/testbed/kubeapi``, in process) with ``--latency`` added to every request, as a busy API
server's round trip; each flip is also an Event, as in production. Prints, from the moment the
verdicts are handed over: when the admitted pods' writes land (p50 / p99 / last) and when the
last write lands, for each reporter measured.

    .venv/bin/python -m bench.status_writes [--admit 300] [--cosmetic 600] [--latency 0.03]
        [--rate 100] [--writers N] [--baseline-reporter FILE] [--json]

``--baseline-reporter FILE`` also measures another version of ``agent/node/reporter.py``
(``git show <commit>:agent/node/reporter.py > FILE``) first, at the same settings.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

from agent.clock import Clock
from agent.kube.calls import Calls
from agent.kube.pods import PodStatusSink
from agent.model import LB_READY, Condition, Pod, PodKey
from agent.node import reporter as current_reporter
from tests.testbed.kubeapi import KubeAPIServer

NS = "bench"


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, math.ceil(q * len(s)) - 1)], 2)


def load_reporter(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("baseline_reporter", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def make_pods(api: KubeAPIServer, prefix: str, n: int, lb: tuple[str, str] | None) -> list[Pod]:
    pods = []
    for i in range(n):
        obj = api.store.create(
            "pods",
            {
                "metadata": {"name": f"{prefix}-{i}", "namespace": NS},
                "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "x"}],
                         "readinessGates": [{"conditionType": LB_READY}]},
                "status": {"phase": "Running"},
            },
            NS,
        )  # fmt: skip
        conds = (Condition(LB_READY, *lb),) if lb else ()
        uid = obj["metadata"]["uid"]
        pods.append(Pod(NS, f"{prefix}-{i}", uid, "n1", (), "Running", conditions=conds))
    return pods


class TimedSink(PodStatusSink):
    """The production sink, noting when each write landed."""

    landed: dict[PodKey, float]

    def patch_condition(self, key: PodKey, condition: Condition, uid: str) -> None:
        super().patch_condition(key, condition, uid)
        self.landed[key] = time.monotonic()


def measure(module: Any, args: argparse.Namespace, run: int) -> dict[str, Any]:
    with KubeAPIServer(endpointslice_controller=False) as api:
        api.store.create("namespaces", {"metadata": {"name": NS}})
        api.faults.set_latency(args.latency)
        admit = make_pods(api, f"admit{run}", args.admit, ("False", "Registering"))
        cosmetic = make_pods(api, f"new{run}", args.cosmetic, None)
        cache = {p.key: p for p in [*admit, *cosmetic]}
        sink = TimedSink(api.api_client(), Calls(), Clock(), "podlb-leader", "bench")
        sink.landed = {}
        kw: dict[str, Any] = {"rate_per_s": args.rate, "burst": int(args.rate * 2)}
        if args.writers and hasattr(module, "writers_for"):
            kw["writers"] = args.writers
        reporter = module.ConditionReporter(LB_READY, sink, cache.get, Clock(), **kw)
        stop = threading.Event()
        thread = threading.Thread(target=reporter.run, args=(stop,), daemon=True)
        thread.start()
        t0 = time.monotonic()
        for p in cosmetic:
            reporter.set_desired(p.key, module.Desired(p.uid, "False", "NotRegistered", "..."))
        for p in admit:
            reporter.set_desired(p.key, module.Desired(p.uid, "True", "Healthy", "UP"))
        deadline = t0 + args.timeout
        while len(sink.landed) < len(cache) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        thread.join(10)
        admitted = [sink.landed[p.key] - t0 for p in admit if p.key in sink.landed]
        done = [t - t0 for t in sink.landed.values()]
    return {
        "writers": getattr(reporter, "writers", 1),
        "admit_p50_s": percentile(admitted, 0.5) if admitted else None,
        "admit_p99_s": percentile(admitted, 0.99) if admitted else None,
        "admit_last_s": round(max(admitted), 2) if admitted else None,
        "all_done_s": round(max(done), 2) if done else None,
        "written": len(done),
        "writes_per_s": round(len(done) / max(done), 1) if done else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admit", type=int, default=300, help="pods turning True")
    parser.add_argument("--cosmetic", type=int, default=600, help="pods told NotRegistered")
    parser.add_argument("--latency", type=float, default=0.03, help="added to every request, s")
    parser.add_argument("--rate", type=float, default=100.0, help="the writers' --status-rate")
    parser.add_argument("--writers", type=int, default=0, help="default: from the rate")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per reporter")
    parser.add_argument("--baseline-reporter", type=Path, help="another reporter.py, first")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    modules = [("this checkout", current_reporter)]
    if args.baseline_reporter:
        modules.insert(
            0, (f"baseline ({args.baseline_reporter})", load_reporter(args.baseline_reporter))
        )
    results = []
    for run, (name, module) in enumerate(modules):
        print(f"measuring {name}", file=sys.stderr)
        results.append({"reporter": name, **measure(module, args, run)})
    print(
        f"\n{args.cosmetic} NotRegistered writes queued, then {args.admit} Healthy (True) writes; "
        f"API latency {args.latency * 1000:.0f} ms a request; --status-rate {args.rate:g} "
        f"(burst {int(args.rate * 2)})\n"
    )
    print("| reporter | writers | admitted p50 / p99 / last, s | all written, s | writes/s |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['reporter']} | {r['writers']} | {r['admit_p50_s']} / {r['admit_p99_s']} / "
            f"{r['admit_last_s']} | {r['all_done_s']} ({r['written']}) | {r['writes_per_s']} |"
        )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
