"""The rolling-update scenario podlb exists for (shared by the e2e test, the bench and the demo).

A ``replicas``-pod app behind a real HAProxy, registered by podlb's leader, under a steady load
of new connections and keep-alive requests through HAProxy, goes through a full rolling update
(maxSurge 1 unless asked otherwise, maxUnavailable 0). Modes:

* ``podlb``: readiness gate ``podlb.io/lb-ready`` + ``httpGet`` preStop to the in-pod drain
  listener (``:9809/drain``);
* ``exec``: the gate + an ``exec`` preStop hook running ``podlb-agent drain $NS/$NAME``;
* ``nohook``: podlb registers the pods, but there is no gate and no hook (what happens when the
  LB learns about pods asynchronously);
* ``sleep``: the gate + ``preStop: sleep N`` (the vendors' advice, N = 40 by default);
* ``observe``: TKE's direct mode. The LB is the Tencent CLB API double, whose data plane is the
  real HAProxy (:mod:`tests.testbed.cloudlb`); a stand-in for the cloud's controller registers
  and deregisters the pods. podlb only reads the CLB (``--lb tencent-clb``, observe mode)
  for the gate and the drain, with the same ``httpGet`` hook as ``podlb``.

The API server double runs in a process of its own (:mod:`tests.testbed.kubeapi.process`),
beside the simulated kubelet, as a real API server does. The LB's API answers after
``lb_delay_s`` (:mod:`tests.testbed.slowlb`, also a process of its own; in ``observe`` the
CLB's task delay), as a cloud LB's does: local HAProxy reacts in microseconds, which would hide
the race podlb exists to remove.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from tests.testbed.agents import AgentProcess, agents
from tests.testbed.clb import ClbDouble
from tests.testbed.cloudlb import ControllerStandIn, HAProxyDataPlane
from tests.testbed.deploy import RollingUpdate
from tests.testbed.haproxy import HAProxy
from tests.testbed.load import LoadGenerator, LoadResult
from tests.testbed.node import Kubelet
from tests.testbed.rbac import AGENT_TOKEN, agent_cluster_process
from tests.testbed.slowlb import SlowRuntimeProcess

POOL = "shop.web.http"
NODES = ("node-a", "node-b")
MODES = ("podlb", "exec", "nohook", "sleep", "observe")
CLB_ID = "lb-rollout"
# HAProxy configured like a cloud L4 LB behaves: health checks every 500 ms, 2 failures to go
# DOWN, and no retry on another server (a cloud LB does not replay a refused connection).
HAPROXY_SERVER_OPTIONS = "check inter 500ms fall 2 rise 1"
# HAProxy logs each session that ended abnormally (a timeout, an abort, a failed connect, a 5xx)
# to its stdout, with its server, timers and termination state: the LB's side of a failed request.
LB_LOGGING = {
    "global": ("log stdout format raw local0",),
    "defaults": ("log global", "option httplog", "option dontlog-normal"),
}


@dataclass
class ScenarioResult:
    mode: str
    replicas: int
    rollout_s: float
    drain_s: list[float] = field(default_factory=list)  # preStop hold per old pod
    # ContainersReady -> Ready per new pod: how long the LB took to accept it (the gate)
    register_s: list[float] = field(default_factory=list)
    # lb-ready=True -> Ready per new pod: what the kubelet adds after podlb's write
    gate_lag_s: list[float] = field(default_factory=list)
    # ContainersReady -> datapath-ready True, and -> lb-ready True, per new pod (real node)
    datapath_lag_s: list[float] = field(default_factory=list)
    lb_ready_s: list[float] = field(default_factory=list)
    new_conn: LoadResult | None = None
    keepalive: LoadResult | None = None
    # HAProxy's log lines of the sessions that ended abnormally during the rollout
    lb_abnormal: list[str] = field(default_factory=list)
    # The agents' drain records (GET /v1/drains) of the old pods: how each drain ended
    drains: list[dict[str, Any]] = field(default_factory=list)
    # podlb's pod status writes during the rollout, by condition type (the agents' metrics),
    # and how many pods the rollout created and deleted
    status_writes: dict[str, int] = field(default_factory=dict)
    pods_rolled: int = 0

    def writes_per_pod(self, condition: str) -> float | None:
        """Writes of ``condition`` during the rollout per pod it created or deleted."""
        if not self.pods_rolled or not self.status_writes:
            return None
        return self.status_writes.get(condition, 0) / self.pods_rolled

    @property
    def requests(self) -> int:
        return sum(r.requests for r in (self.new_conn, self.keepalive) if r)

    @property
    def failed(self) -> int:
        return sum(r.errors_total for r in (self.new_conn, self.keepalive) if r)

    def errors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in (self.new_conn, self.keepalive):
            for kind, n in (r.errors if r else {}).items():
                out[kind] = out.get(kind, 0) + n
        return {k: v for k, v in out.items() if v}

    def signal_ended(self) -> tuple[int, int]:
        """(drains ended by deregistered+quiet, drains recorded): ended on the LB's
        confirmation and the pod's quiet rather than by a timer."""
        ended = sum(1 for r in self.drains if r["outcome"] == "deregistered+quiet")
        return ended, len(self.drains)

    def signal_ended_fraction(self) -> float | None:
        ended, total = self.signal_ended()
        return ended / total if total else None

    def drain_p(self, q: float) -> float | None:
        if not self.drain_s:
            return None
        ordered = sorted(self.drain_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "replicas": self.replicas,
            "requests": self.requests,
            "failed": self.failed,
            "errors": self.errors(),
            "drain_p50_s": self.drain_p(0.5),
            "drain_p99_s": self.drain_p(0.99),
            "drain_median_s": statistics.median(self.drain_s) if self.drain_s else None,
            "rollout_s": round(self.rollout_s, 2),
            "register_median_s": statistics.median(self.register_s) if self.register_s else None,
            "gate_lag_median_s": statistics.median(self.gate_lag_s) if self.gate_lag_s else None,
            "datapath_lag_s": self.datapath_lag_s,
            "lb_ready_s": self.lb_ready_s,
            "drains_signal_ended": self.signal_ended()[0],
            "drains_recorded": self.signal_ended()[1],
            "drains_signal_ended_fraction": self.signal_ended_fraction(),
            "drains": self.drains,
            "status_writes": self.status_writes,
            "pods_rolled": self.pods_rolled,
            "lb_abnormal": self.lb_abnormal,
        }


WRITES = "podlb_condition_writes_total"


def condition_writes(metrics_texts: list[str]) -> dict[str, int]:
    """Condition writes done (outcome ``written``) by condition type, summed over the
    Prometheus texts of several agents."""
    out: dict[str, int] = {}
    for text in metrics_texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == WRITES and sample.labels.get("outcome") == "written":
                    cond = sample.labels.get("condition", "")
                    out[cond] = out.get(cond, 0) + int(sample.value)
    return out


def writes_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}


def template(
    mode: str, version: str, sleep_s: int, grace: int, agent_url: str = ""
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "app",
        "image": f"testbed/app:{version}",
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
        "env": [{"name": "VERSION", "value": version}],
    }
    if mode in ("podlb", "observe"):
        container["lifecycle"] = {"preStop": {"httpGet": {"path": "/drain", "port": 9809}}}
    elif mode == "exec":
        # In a real pod: ["sh", "-c", "podlb-agent drain --agent-url http://$HOST_IP:9808
        # $POD_NAMESPACE/$POD_NAME"] with HOST_IP, POD_NAME, POD_NAMESPACE from the downward
        # API. The simulated kubelet runs exec hooks on the host with POD_NAME/POD_NAMESPACE.
        drain = f"{sys.executable} -m agent drain --agent-url {agent_url}"
        container["lifecycle"] = {
            "preStop": {"exec": {"command": ["sh", "-c", drain + ' "$POD_NAMESPACE/$POD_NAME"']}}
        }
    elif mode == "sleep":
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": sleep_s}}}
    spec: dict[str, Any] = {"containers": [container], "terminationGracePeriodSeconds": grace}
    if mode != "nohook":
        spec["readinessGates"] = [{"conditionType": "podlb.io/lb-ready"}]
    return {
        "metadata": {"labels": {"app": "web"}, "namespace": "shop"},
        "spec": spec,
    }


def service(mode: str = "podlb") -> dict[str, Any]:
    annotations = {"podlb.io/direct": "true"}
    if mode == "observe":  # what TKE's controller leaves on a direct-access Service
        annotations = {
            "service.cloud.tencent.com/direct-access": "true",
            "service.kubernetes.io/loadbalance-id": CLB_ID,
        }
    return {
        "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def surge(max_surge: str, replicas: int) -> int:
    """``maxSurge`` as a Deployment reads it: a count, or a percentage rounded up."""
    if max_surge.endswith("%"):
        return max(1, -(-replicas * int(max_surge[:-1]) // 100))
    return int(max_surge)


def run_scenario(
    mode: str,
    *,
    replicas: int = 6,
    sleep_s: int = 40,
    concurrency: int = 2,
    lb_delay_s: float = 1.0,
    log: Any = None,
    max_surge: str = "1",
    server_options: str = HAPROXY_SERVER_OPTIONS,
    agent_args: Sequence[str] = (),
    keep_logs: Path | None = None,
) -> ScenarioResult:
    """Set up everything, run the rollout under load (``max_surge``: a count or ``25%``;
    ``server_options``: HAProxy's health checks; ``agent_args``: more flags for the agents),
    tear everything down. ``keep_logs``: a directory the agents' and HAProxy's logs are
    copied to before the teardown (``<mode>-<file>``)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {MODES}")
    say = log or (lambda msg: None)
    grace = max(30, sleep_s + 10)
    # exec hooks call one agent's URL: keep that mode's pods on one node.
    nodes = NODES[:1] if mode == "exec" else NODES
    with (
        agent_cluster_process("shop") as api,
        Kubelet.for_api(api, nodes) as kubelet,
        HAProxy(
            backends=(POOL,),
            server_options=server_options,
            extra_global=LB_LOGGING["global"],
            extra_defaults=("retries 0", *LB_LOGGING["defaults"]),
        ) as lb,
        _lb_api(mode, lb, api.api_client(), lb_delay_s, server_options) as (lb_args, env),
    ):
        core = client.CoreV1Api(api.api_client())
        core.create_namespaced_service("shop", service(mode))
        extra = ["--leader-resync", "2", "--lb-drain-timeout", str(grace), *lb_args, *agent_args]
        with agents(api.url, AGENT_TOKEN, list(nodes), extra=extra, env=env) as procs:
            for p in procs:
                p.wait_ready()
            url = procs[0].url
            app = RollingUpdate(
                api.api_client(), "web", template(mode, "v1", sleep_s, grace, url),
                namespace="shop", replicas=replicas, nodes=list(nodes),
                timeout=max(600, 4 * replicas),
            )  # fmt: skip
            try:
                with app:
                    return _roll(
                        mode, app, procs, lb, kubelet, template(mode, "v2", sleep_s, grace, url),
                        surge(max_surge, replicas), concurrency, say,
                    )  # fmt: skip
            finally:
                if keep_logs is not None:
                    _keep_logs(keep_logs, mode, procs, lb)


def _keep_logs(into: Path, mode: str, procs: Sequence[AgentProcess], lb: HAProxy) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for p in procs:
        shutil.copyfile(p.log_path, into / f"{mode}-{p.identity}.log")
    shutil.copyfile(lb.log_path, into / f"{mode}-haproxy.log")


def abnormal_sessions(lb_log: str, frontend: str) -> list[str]:
    """The session lines of HAProxy's log (:data:`LB_LOGGING` logs only abnormal ones) that
    went through ``frontend``; its other lines (servers going UP or DOWN) are left out."""
    return [line for line in lb_log.splitlines() if f"] {frontend} " in line]


def _roll(
    mode: str,
    app: RollingUpdate,
    procs: list[AgentProcess],
    lb: HAProxy,
    kubelet: Kubelet,
    new_template: dict[str, Any],
    max_surge: int,
    concurrency: int,
    say: Any,
) -> ScenarioResult:
    """Scale ``app`` up, then roll it to ``new_template`` under load; what happened."""
    replicas = app.replicas
    app.scale(replicas)
    _wait_up(lb, replicas, timeout=60 + replicas)
    say(f"{mode}: {replicas} pods Ready and UP in HAProxy; rolling update under load")
    new_conn = LoadGenerator(lb.url, mode="new", concurrency=concurrency, duration=900)
    keepalive = LoadGenerator(lb.url, mode="keepalive", concurrency=concurrency,
                              duration=900)  # fmt: skip
    new_conn.start()
    keepalive.start()

    def writes() -> dict[str, int]:
        return condition_writes([p.get("/metrics")[1].decode() for p in procs])

    try:
        time.sleep(1.0)
        before = writes()
        report = app.rolling_update(
            new_template, max_surge=max_surge, max_unavailable=0, wait_gone=True
        )
        time.sleep(1.0)
        status_writes = writes_between(before, writes())
    finally:
        new_conn.stop()
        keepalive.stop()
        new_conn.wait(10)
        keepalive.wait(10)
    result = ScenarioResult(mode, replicas, report.total_s)
    result.status_writes, result.pods_rolled = status_writes, len(report.pods)
    result.new_conn = new_conn.result()
    result.keepalive = keepalive.result()
    result.lb_abnormal = abnormal_sessions(lb.log(), f"fe_{POOL}")
    new = [t.name for t in report.pods.values() if t.template_hash == report.new_hash]
    for name in new:
        rec = kubelet.records.get(f"shop/{name}")
        if rec is not None and rec.ready_at and rec.containers_ready_at:
            result.register_s.append(rec.ready_at - rec.containers_ready_at)
    old = [t.name for t in report.pods.values() if t.template_hash == report.old_hash]
    for name in old:
        rec = kubelet.records.get(f"shop/{name}")
        if rec is not None and rec.prestop_s is not None:
            result.drain_s.append(rec.prestop_s)
    result.drains = sorted(
        (r for p in procs for r in p.get_json("/v1/drains")["drains"]
         if r["pod"] in old and r["outcome"] != "refused"),
        key=lambda r: str(r["ended_at"]),
    )  # fmt: skip
    app.delete_all(wait=False)
    return result


@contextlib.contextmanager
def _lb_api(
    mode: str,
    lb: HAProxy,
    api_client: client.ApiClient,
    delay_s: float,
    server_options: str = HAPROXY_SERVER_OPTIONS,
) -> Iterator[tuple[list[str], dict[str, str]]]:
    """The LB API podlb talks to, and the agent flags and environment for it."""
    if mode != "observe":
        with SlowRuntimeProcess(lb.socket_path, delay_s) as slow:
            yield [
                "--lb", "haproxy", "--haproxy-server-options", server_options,
                "--haproxy-runtime", f"unix:{slow.socket_path}",
            ], {}  # fmt: skip
        return
    # The CLB checks its targets every 500 ms, as the HAProxy of the other modes does.
    with ClbDouble(
        task_delay_s=delay_s, health_interval_s=0.5, rise=1, fall=2, lock_during_task=False
    ) as clb:
        clb.add_lb(CLB_ID)
        listener = clb.add_listener(CLB_ID, "TCP", 80)
        plane = HAProxyDataPlane(lb, POOL, listener)
        clb.on_change = plane.on_change
        selector = "app=web"
        with ControllerStandIn(
            api_client, clb, lb_id=CLB_ID, listener_id=listener, namespace="shop",
            selector=selector, port=8080,
        ):  # fmt: skip
            try:
                yield [
                    "--lb", "tencent-clb", "--tencent-region", clb.region,
                    "--tencent-endpoint", clb.endpoint,
                ], {
                    "PODLB_TENCENT_SECRET_ID": clb.secret_id,
                    "PODLB_TENCENT_SECRET_KEY": clb.secret_key,
                }  # fmt: skip
            finally:
                plane.close()


def _wait_up(lb: HAProxy, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = lb.servers(POOL)
        if sum(1 for r in rows.values() if r.get("status") == "UP") >= n:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{n} servers not UP in HAProxy: {lb.servers(POOL)}")
