"""The rolling-update scenario on the real cluster (shared by tests/cluster and the bench).

A Deployment of the pod app behind a direct Service and the node's HAProxy, under a steady load
of new connections and keep-alive requests through HAProxy, goes through a full rolling update
(maxSurge 1, maxUnavailable 0) run by the real Deployment controller, kubelet and preStop hooks.
Modes as in :mod:`tests.testbed.rollout`: ``podlb`` (gate + httpGet hook to the in-pod drain
listener), ``exec`` (gate + the README's curl hook to the node API), ``nohook`` (no gate, no
hook), ``sleep`` (the vendors' recipe: gate + ``preStop: sleep N``).

HAProxy's Runtime API answers changes after ``lb_delay_s`` (1 s by default), as a cloud LB's API
does: local HAProxy reacts in microseconds, which would hide the race between a pod's
termination and the LB. Times come from a watch on the pods (monotonic, as the watch saw
them): "register" is ContainersReady -> Ready of each new pod, "drain" is deletion -> gone of
each old pod (the preStop hold plus the app's shutdown).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from agent.model import DATAPATH_READY
from tests.cluster.cluster import NODE_IP
from tests.cluster.podlb import (
    APP_NS,
    NodeLB,
    Podlb,
    PodWatch,
    app_container,
    deployment,
    service,
    until,
)
from tests.testbed.load import LoadGenerator
from tests.testbed.rollout import ScenarioResult, condition_writes, writes_between

HOOKS = {"podlb": "http", "exec": "exec", "nohook": "none", "sleep": "sleep"}
MODES = tuple(HOOKS)


def backend(name: str) -> str:
    return f"{APP_NS}.{name}.http"


def _up(lb: NodeLB, name: str) -> int:
    return sum(1 for r in lb.servers(backend(name)).values() if r.get("status") == "UP")


def run_rollout(
    podlb: Podlb,
    lb: NodeLB,
    mode: str,
    *,
    name: str,
    replicas: int = 3,
    sleep_s: int = 40,
    lb_delay_s: float = 1.0,
    concurrency: int = 2,
    gate_admit: str | None = None,
    during: Callable[[PodWatch], None] | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> ScenarioResult:
    """Deploy ``name`` in ``mode``, roll it under load, delete it; ``during`` runs mid-rollout;
    ``gate_admit``: the Service's podlb.io/gate-admit (agent/leader/gate.py)."""
    if mode not in HOOKS:
        raise ValueError(f"mode {mode!r}: expected one of {MODES}")
    grace = max(30, sleep_s + 10)

    def manifest(version: str) -> dict[str, Any]:
        container = app_container(hook=HOOKS[mode], sleep_s=sleep_s, version=version)
        return deployment(name, replicas, container, gate=mode != "nohook", grace=grace)

    cluster = podlb.cluster
    lb.api.delay_s = lb_delay_s
    extra = {"podlb.io/gate-admit": gate_admit} if gate_admit else None
    cluster.apply([service(name, extra), manifest("v1")])
    try:
        until(f"{replicas} {name} pods UP in HAProxy", lambda: _up(lb, name) >= replicas, 120)
        until(f"{name} available", lambda: _available(podlb, name, replicas), 60)
        say(f"{mode}: {replicas} pods Ready and UP in HAProxy; rolling update under load")
        url = lb.url(backend(name))
        new_conn = LoadGenerator(url, mode="new", concurrency=concurrency, duration=900)
        keepalive = LoadGenerator(url, mode="keepalive", concurrency=concurrency, duration=900)
        with PodWatch(podlb.api, APP_NS, f"app={name}") as pw:
            old = set(pw_names(podlb, name))
            new_conn.start()
            keepalive.start()
            try:
                time.sleep(1.0)
                before = _writes()
                started = time.monotonic()
                cluster.apply(manifest("v2"))
                if during is not None:
                    during(pw)
                until(f"{name} rolled", lambda: _rolled(podlb, name, replicas, old), 600, 0.05)
                rollout_s = time.monotonic() - started
                time.sleep(1.0)
                status_writes = writes_between(before, _writes())
            finally:
                new_conn.stop()
                keepalive.stop()
                new_conn.wait(10)
                keepalive.wait(10)
        result = ScenarioResult(mode, replicas, rollout_s)
        result.status_writes = status_writes
        result.pods_rolled = len(pw.pods)
        result.new_conn, result.keepalive = new_conn.result(), keepalive.result()
        # How each old pod's drain ended, from the node agent's records (hook modes only).
        if mode in ("podlb", "exec"):
            records = _drain_records()
            result.drains = sorted(
                (r for r in records if r["pod"] in old and r["outcome"] != "refused"),
                key=lambda r: str(r["ended_at"]),
            )
        for pod, t in pw.pods.items():
            if pod in old and t.deleting is not None and t.gone is not None:
                result.drain_s.append(t.gone - t.deleting)
            elif pod not in old and t.containers_ready is not None and t.ready is not None:
                result.register_s.append(t.ready - t.containers_ready)
                if t.lb_ready is not None:
                    result.gate_lag_s.append(t.ready - t.lb_ready)
                    result.lb_ready_s.append(t.lb_ready - t.containers_ready)
                dp = next((at for at, kind, status, _ in t.conditions
                           if kind == DATAPATH_READY and status == "True"), None)  # fmt: skip
                if dp is not None:
                    result.datapath_lag_s.append(dp - t.containers_ready)
        return result
    finally:
        lb.api.delay_s = 0.0
        cluster.kubectl("-n", APP_NS, "delete", "deployment,service", name, "--wait=false",
                        check=False)  # fmt: skip


def _writes() -> dict[str, int]:
    """podlb's condition writes so far (the node's agent: node work and the leader's)."""
    with urllib.request.urlopen(f"http://{NODE_IP}:9808/metrics", timeout=5) as r:
        return condition_writes([r.read().decode()])


def _drain_records() -> list[dict[str, Any]]:
    """GET /v1/drains of the node's agent (host network: the node's port 9808)."""
    with urllib.request.urlopen(f"http://{NODE_IP}:9808/v1/drains", timeout=5) as r:
        return list(json.load(r)["drains"])


def pw_names(podlb: Podlb, name: str) -> list[str]:
    pods = podlb.core.list_namespaced_pod(APP_NS, label_selector=f"app={name}").items
    return [p.metadata.name for p in pods]


def _available(podlb: Podlb, name: str, replicas: int) -> bool:
    d = podlb.apps.read_namespaced_deployment(name, APP_NS)
    return (d.status.ready_replicas or 0) >= replicas


def _rolled(podlb: Podlb, name: str, replicas: int, old: set[str]) -> bool:
    d = podlb.apps.read_namespaced_deployment(name, APP_NS)
    s = d.status
    if (s.observed_generation or 0) < d.metadata.generation:
        return False
    if (s.updated_replicas or 0) < replicas or (s.ready_replicas or 0) < replicas:
        return False
    return not (old & set(pw_names(podlb, name)))
