"""Watching the backends' pods: ContainersReady -> ``lb-ready=True`` timed per pod, and the
kubelet's part of the gate (Ready once ``lb-ready`` is True)."""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bench.leader_scale.objects import GATE, PodPlan, conditions_patch, now_rfc3339
from bench.leader_scale.procs import Api


# -- watching the backends -------------------------------------------------------------------
@dataclass
class Backends:
    """The bench's view of the backends' conditions (a paged list + watch, label-selected)."""

    api: Api
    plans: dict[tuple[str, str], PodPlan]
    gate_writer: ThreadPoolExecutor
    lock: threading.Lock = field(default_factory=threading.Lock)
    lb_ready: dict[tuple[str, str], bool] = field(default_factory=dict)
    ready: dict[tuple[str, str], bool] = field(default_factory=dict)
    cr: dict[tuple[str, str], bool] = field(default_factory=dict)
    # pod -> when its ContainersReady=True was sent, once lb-ready was seen False since
    pending: dict[tuple[str, str], float] = field(default_factory=dict)
    armed: set[tuple[str, str]] = field(default_factory=set)  # lb-ready False seen since unready
    latencies: list[float] = field(default_factory=list)
    # per sample: pod, wall-clock time ContainersReady was sent, seconds to lb-ready=True seen
    samples: list[tuple[str, float, float]] = field(default_factory=list)
    readying: set[tuple[str, str]] = field(default_factory=set)  # Ready=True being written
    rv: str = ""

    def list(self) -> None:
        for page in self.api.list_pages(
            "list_pod_for_all_namespaces", label_selector="bench.podlb.io/role=backend"
        ):
            for obj in page.get("items") or []:
                self._see(obj)
            self.rv = page["metadata"]["resourceVersion"]

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                resp = self.api.core().list_pod_for_all_namespaces(
                    label_selector="bench.podlb.io/role=backend",
                    watch=True,
                    resource_version=self.rv,
                    timeout_seconds=60,
                    allow_watch_bookmarks=True,
                    _preload_content=False,
                )
                from kubernetes.watch.watch import iter_resp_lines

                for line in iter_resp_lines(resp):
                    if stop.is_set():
                        return
                    ev = json.loads(line)
                    obj = ev.get("object") or {}
                    if ev.get("type") == "ERROR":
                        self.list()
                        break
                    self.rv = obj.get("metadata", {}).get("resourceVersion", self.rv)
                    if ev.get("type") in ("ADDED", "MODIFIED"):
                        self._see(obj)
            except Exception as exc:
                print(f"  bench watch: {exc}", file=sys.stderr)
                time.sleep(1)

    def _see(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        conds = {c["type"]: c["status"] == "True" for c in obj["status"].get("conditions") or []}
        lb, cr, rd = (
            conds.get(GATE, False),
            conds.get("ContainersReady", False),
            conds.get("Ready", False),
        )
        now = time.monotonic()
        with self.lock:
            self.lb_ready[key], self.cr[key], self.ready[key] = lb, cr, rd
            if not lb:
                self.armed.add(key)
            elif key in self.pending:
                took = now - self.pending.pop(key)
                self.latencies.append(took)
                self.samples.append((f"{key[0]}/{key[1]}", time.time() - took, took))
                self.armed.discard(key)
            if not (cr and lb and not rd) or key in self.readying:
                return
            self.readying.add(key)
        self.gate_writer.submit(self._set_ready, key)  # the kubelet's part of the gate

    def _set_ready(self, key: tuple[str, str]) -> None:
        body = {
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": now_rfc3339()}
                ]
            }
        }
        try:
            self.api.call(
                "patch_namespaced_pod_status", key[1], key[0], body, field_manager="kubelet"
            )
        except Exception as exc:
            print(f"  bench kubelet: {key}: {exc}", file=sys.stderr)
        finally:
            with self.lock:
                self.readying.discard(key)

    def set_containers_ready(self, key: tuple[str, str], ready: bool) -> None:
        if ready:
            with self.lock:
                if key in self.armed:
                    self.pending[key] = time.monotonic()
        self.api.call(
            "patch_namespaced_pod_status",
            key[1],
            key[0],
            conditions_patch(ready, gated=True),
            field_manager="kubelet",
        )

    def count(self, which: str) -> int:
        with self.lock:
            return sum(1 for v in getattr(self, which).values() if v)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, math.ceil(q * len(s)) - 1)], 3)
