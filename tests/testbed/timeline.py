"""Kubelet timing scenarios, run alike on the testbed and on the real cluster.

The real kubelet is the ground truth for the simulated one (:mod:`tests.testbed.node`): the
same scenario, given a ``CoreV1Api`` and a container running :mod:`tests.testbed.app`, runs
against the API double + simulated kubelet and against the real single-node cluster
(``tests/cluster``), and both tiers assert the same bounds on what it measured.

Every time is the host's ``time.monotonic()``; the app's ``GET /probes`` reports the times of
the kubelet's readiness probes on the same clock (``CLOCK_MONOTONIC`` is not namespaced).

* :func:`probe_run` -- a pod with a given ``readinessProbe``: its conditions' timeline, when
  the app started and listened, and every probe it received;
* :func:`flap` -- the app's ``/healthz`` fails, then heals: when ContainersReady followed
  each (``failureThreshold`` / ``successThreshold``);
* :func:`gate_lags` -- a readiness gate's condition patched True and False by hand: how long
  after each patch the pod's ``Ready`` followed;
* :func:`deletion` -- a pod with a ``preStop`` hook deleted: when Ready went False, when the
  app stopped answering (SIGTERM), when the pod was gone.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, watch

from tests.testbed.waiting import wait_for

Obj = dict[str, Any]
APP_PORT = 8080


@dataclass
class Timeline:
    """What one pod went through: ``events`` are ``(t, what)`` with ``what`` like
    ``"Ready=True"``, ``"deleting"`` or ``"gone"``, in the order a watch saw them."""

    name: str
    created: float = 0.0
    ip: str = ""
    events: list[tuple[float, str]] = field(default_factory=list)
    started: float = 0.0  # the app process (its module imported)
    listening: float = 0.0
    probes: list[float] = field(default_factory=list)
    probes_fetched: float = 0.0  # when ``probes`` was read
    # The readiness probes the kubelet reports failed (its ``Unhealthy`` Events; the times to
    # the second, as Events carry them): probes the app may never have seen (refused)
    failed_probes: list[float] = field(default_factory=list)

    def first(self, what: str, after: float = 0.0) -> float | None:
        return next((t for t, w in self.events if w == what and t >= after), None)

    def relative(self) -> list[tuple[float, str]]:
        """The events as seconds since creation (for reports)."""
        return [(round(t - self.created, 3), w) for t, w in self.events]

    def probe_gaps(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.probes)]


class Recorder:
    """Watches the pods of a namespace; each pod's condition flips land in a :class:`Timeline`."""

    def __init__(self, core: client.CoreV1Api, namespace: str) -> None:
        self.core, self.namespace = core, namespace
        self.timelines: dict[str, Timeline] = {}
        self._last: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="timeline")

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def timeline(self, name: str) -> Timeline:
        with self._lock:
            return self.timelines.setdefault(name, Timeline(name))

    def _run(self) -> None:
        rv = ""
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                kw: Obj = {"timeout_seconds": 2, "_request_timeout": 12}
                if rv:
                    kw["resource_version"] = rv
                for ev in w.stream(self.core.list_namespaced_pod, self.namespace, **kw):
                    obj = ev["raw_object"]
                    rv = obj["metadata"].get("resourceVersion") or rv
                    self._record(ev["type"], obj)
                    if self._stop.is_set():
                        break
            except client.ApiException as e:
                if e.status == 410:
                    rv = ""
                else:
                    self._stop.wait(0.2)
            except Exception:  # a dropped connection: watch again from rv
                self._stop.wait(0.2)
            finally:
                w.stop()

    def _record(self, kind: str, obj: Obj) -> None:
        now = time.monotonic()
        name = obj["metadata"]["name"]
        tl = self.timeline(name)
        with self._lock:
            last = self._last.setdefault(name, {})
            for c in (obj.get("status") or {}).get("conditions") or []:
                if last.get(c["type"]) != c.get("status"):
                    last[c["type"]] = c.get("status")
                    tl.events.append((now, f"{c['type']}={c.get('status')}"))
            if obj["metadata"].get("deletionTimestamp") and "deleting" not in last:
                last["deleting"] = "yes"
                tl.events.append((now, "deleting"))
            if kind == "DELETED":
                tl.events.append((now, "gone"))
            tl.ip = tl.ip or (obj.get("status") or {}).get("podIP") or ""

    def wait(self, name: str, what: str, timeout: float, after: float = 0.0) -> float:
        tl = self.timeline(name)
        t = wait_for(lambda: tl.first(what, after), timeout, f"{name}: {what}")
        return float(t)


def pod_manifest(
    name: str,
    container: Obj,
    probe: Obj | None,
    *,
    namespace: str,
    gates: tuple[str, ...] = (),
    pre_stop: Obj | None = None,
    grace: int = 30,
    node: str | None = None,
) -> Obj:
    """A pod running ``container`` (the app, listening on :data:`APP_PORT`) with ``probe`` as
    its readinessProbe (``None``: no probe); ``node`` sets ``spec.nodeName`` (the testbed)."""
    c = copy.deepcopy(container)
    c.pop("readinessProbe", None)
    c.pop("lifecycle", None)
    if probe is not None:
        c["readinessProbe"] = probe
    if pre_stop is not None:
        c["lifecycle"] = {"preStop": pre_stop}
    spec: Obj = {"containers": [c], "terminationGracePeriodSeconds": grace}
    if gates:
        spec["readinessGates"] = [{"conditionType": g} for g in gates]
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"timeline": name}},
        "spec": spec,
    }


def app_get(ip: str, path: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(f"http://{ip}:{APP_PORT}{path}", timeout=timeout) as r:
        return bytes(r.read())


def fetch_probes(tl: Timeline) -> None:
    data = json.loads(app_get(tl.ip, "/probes"))
    tl.started, tl.listening = float(data["started"]), float(data["listening"])
    tl.probes = [float(t) for t in data["healthz"]]
    tl.probes_fetched = time.monotonic()


def probe_run(
    core: client.CoreV1Api,
    rec: Recorder,
    manifest: Obj,
    *,
    watch_for: float,
    timeout: float = 60.0,
) -> Timeline:
    """Create ``manifest``, wait for ContainersReady, watch ``watch_for`` seconds more, then
    read the probes the app received."""
    md = manifest["metadata"]
    tl = rec.timeline(md["name"])
    tl.created = time.monotonic()
    core.create_namespaced_pod(md["namespace"], manifest)
    rec.wait(md["name"], "ContainersReady=True", timeout)
    time.sleep(watch_for)
    fetch_probes(tl)
    tl.failed_probes = failed_probes(core, md["namespace"], md["name"])
    return tl


def failed_probes(core: client.CoreV1Api, namespace: str, pod: str) -> list[float]:
    """When the kubelet reported a readiness probe of ``pod`` failed (``Unhealthy`` Events,
    each occurrence's first and last time), as ``time.monotonic()`` times."""
    offset = time.time() - time.monotonic()
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod}")
    out: set[float] = set()
    for e in events.items:
        if e.reason != "Unhealthy" or not (e.message or "").startswith("Readiness probe failed"):
            continue
        for ts in (e.first_timestamp, e.last_timestamp):
            if ts is not None:
                out.add(ts.timestamp() - offset)
    return sorted(out)


@dataclass
class Flap:
    failed_at: float
    unready_at: float
    healed_at: float
    ready_at: float
    probes: list[float]

    def probes_between(self, a: float, b: float) -> int:
        return sum(1 for t in self.probes if a <= t <= b)


def flap(rec: Recorder, tl: Timeline, *, timeout: float = 60.0) -> Flap:
    """On a ready pod: ``/healthz`` fails until ContainersReady is False, then heals."""
    failed_at = time.monotonic()
    app_get(tl.ip, "/health?ok=0")
    unready_at = rec.wait(tl.name, "ContainersReady=False", timeout, failed_at)
    healed_at = time.monotonic()
    app_get(tl.ip, "/health?ok=1")
    ready_at = rec.wait(tl.name, "ContainersReady=True", timeout, healed_at)
    fetch_probes(tl)
    return Flap(failed_at, unready_at, healed_at, ready_at, tl.probes)


def patch_condition(core: client.CoreV1Api, ns: str, name: str, ctype: str, status: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    cond = {"type": ctype, "status": status, "lastTransitionTime": stamp}
    core.patch_namespaced_pod_status(name, ns, {"status": {"conditions": [cond]}})


def gate_lags(
    core: client.CoreV1Api, rec: Recorder, tl: Timeline, ns: str, gate: str, *, rounds: int = 5
) -> tuple[list[float], list[float]]:
    """Patch the gate True then False ``rounds`` times, 0.1-1.1 s apart at random (a kubelet
    syncs pods on a 1 s clock: evenly spaced patches would sample one phase of it): seconds
    from each patch (sent) to the watch seeing ``Ready`` follow, as ``(to_true, to_false)``.
    The first patch comes right after ContainersReady, as podlb's ``lb-ready`` does."""
    rng = random.Random(1)
    up: list[float] = []
    down: list[float] = []
    for _ in range(rounds):
        for status, out in (("True", up), ("False", down)):
            t0 = time.monotonic()
            patch_condition(core, ns, tl.name, gate, status)
            out.append(rec.wait(tl.name, f"Ready={status}", 20.0, t0) - t0)
            time.sleep(rng.uniform(0.1, 1.1))
    return up, down


@dataclass
class Deletion:
    deleting: float
    unready: float | None  # Ready=False seen
    stopped_answering: float  # the app's listener closed: SIGTERM
    gone: float


def deletion(core: client.CoreV1Api, rec: Recorder, tl: Timeline, ns: str) -> Deletion:
    """Delete the pod; poll the app every 20 ms to see when it stops answering."""
    t0 = time.monotonic()
    core.delete_namespaced_pod(tl.name, ns)
    stopped = 0.0
    while time.monotonic() - t0 < 60 and not stopped:
        try:
            app_get(tl.ip, "/healthz", timeout=0.5)
            time.sleep(0.02)
        except OSError:
            stopped = time.monotonic()
    gone = rec.wait(tl.name, "gone", 60.0, t0)
    return Deletion(t0, tl.first("Ready=False", t0), stopped, gone)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summary(tl: Timeline) -> Iterator[str]:
    """Human lines for a report: events and probes relative to creation."""
    yield f"{tl.name}: " + ", ".join(f"{w} +{t:.2f}" for t, w in tl.relative())
    if tl.started:
        rel = [round(t - tl.created, 2) for t in tl.probes]
        yield (
            f"  app started +{tl.started - tl.created:.2f} listening "
            f"+{tl.listening - tl.created:.2f}; probes at {rel}"
        )


# -- the scenarios both tiers run, and the facts both assert ----------------------------------
GATE = "timing.podlb.test/gate"
HEALTHZ = {"httpGet": {"path": "/healthz", "port": APP_PORT}}
DEFAULT_PERIOD = 10.0  # the API's default periodSeconds


@dataclass
class Results:
    timelines: dict[str, Timeline]
    flap: Flap
    gate_up: list[float]
    gate_down: list[float]
    deletion: Deletion

    def report(self) -> Iterator[str]:
        for tl in self.timelines.values():
            yield from summary(tl)
        f = self.flap
        yield (
            f"flap: unready {f.unready_at - f.failed_at:.2f} s after failing "
            f"({f.probes_between(f.failed_at, f.unready_at)} probes), ready "
            f"{f.ready_at - f.healed_at:.2f} s after healing "
            f"({f.probes_between(f.healed_at, f.ready_at)} probes)"
        )
        yield (
            f"gate -> Ready: up {[round(x, 3) for x in self.gate_up]} "
            f"down {[round(x, 3) for x in self.gate_down]}"
        )
        d = self.deletion
        unready = f"{d.unready - d.deleting:.2f}" if d.unready else "never seen"
        yield (
            f"deletion: Ready=False +{unready}, app stopped answering "
            f"+{d.stopped_answering - d.deleting:.2f}, gone +{d.gone - d.deleting:.2f}"
        )


def run_all(
    core: client.CoreV1Api,
    namespace: str,
    container: Obj,
    *,
    node: str | None = None,
    kubelet_started: float = -math.inf,
) -> Results:
    """Every scenario, the independent ones in parallel (about 25 s), on a settled kubelet:
    one that started (``kubelet_started``, monotonic) less than the longest probe period ago
    delays each new prober by a random part of its period, so this waits until it has not."""
    time.sleep(max(0.0, kubelet_started + DEFAULT_PERIOD + 1 - time.monotonic()))

    def manifest(name: str, probe: Obj | None, **kw: Any) -> Obj:
        return pod_manifest(name, container, probe, namespace=namespace, node=node, **kw)

    fast = {**HEALTHZ, "periodSeconds": 1}
    runs = {
        "defaults": (manifest("defaults", HEALTHZ), DEFAULT_PERIOD + 2),
        "delayed": (
            manifest("delayed", {**HEALTHZ, "periodSeconds": 2, "initialDelaySeconds": 3}),
            4.5,
        ),
        "flap": (
            manifest("flap", {**fast, "failureThreshold": 3, "successThreshold": 2}),
            0.0,
        ),
        "gated": (manifest("gated", fast, gates=(GATE,)), 0.0),
        "bye": (manifest("bye", fast, pre_stop={"exec": {"command": ["sleep", "1"]}}), 0.0),
    }
    out: dict[str, Timeline] = {}
    errors: list[BaseException] = []

    def one(name: str, m: Obj, extra: float) -> None:
        try:
            out[name] = probe_run(core, rec, m, watch_for=extra)
        except BaseException as e:
            errors.append(e)

    with Recorder(core, namespace) as rec:
        threads = [
            threading.Thread(target=one, args=(n, m, x), daemon=True) for n, (m, x) in runs.items()
        ]
        for t in threads:
            t.start()
        gate_result: tuple[list[float], list[float]] = ([], [])
        threads[3].join(90)
        if "gated" in out:
            gate_result = gate_lags(core, rec, out["gated"], namespace, GATE)
        threads[2].join(90)
        flapped = flap(rec, out["flap"]) if "flap" in out else None
        threads[4].join(90)
        gone = deletion(core, rec, out["bye"], namespace) if "bye" in out else None
        for t in threads:
            t.join(90)
        if errors:
            raise errors[0]
        if flapped is None or gone is None:
            raise AssertionError(f"scenarios did not finish: {sorted(out)}")
    return Results(out, flapped, *gate_result, gone)


# -- the facts: the same bounds on both tiers ------------------------------------------------
# Measured on the real node (kubelet v1.28.7, 2 loaded cores, tests/cluster) and the testbed;
# the bounds leave room for a loaded machine. Probe gaps below GAP_SAME are the kubelet's pod
# syncs running a probe next to its ticker's.
GAP_SAME = 0.5
SLACK = 0.5  # for a ticker's jitter under load
SYNC = 1.25  # the kubelet's pod sync: the next PLEG relist (1 s) and the status write


def _ticker(tl: Timeline, period: float) -> None:
    """After ContainersReady only the ticker probes: every ``period`` (the probes at or right
    after ready came from the pod's syncs)."""
    ready = _at(tl, "ContainersReady=True")
    watched = tl.probes_fetched - ready
    after = [t for t in tl.probes if t > ready + GAP_SAME]
    assert 1 <= len(after) <= watched / period + 1, (tl.name, period, ready, tl.probes)
    gaps = [b - a for a, b in itertools.pairwise(after)]
    assert all(abs(g - period) <= SLACK for g in gaps), (tl.name, period, gaps)


def _at(tl: Timeline, what: str) -> float:
    t = tl.first(what)
    assert t is not None, f"{tl.name}: never {what}: {tl.relative()}"
    return t


def check_start(tl: Timeline) -> None:
    """PodScheduled and Initialized come before ContainersReady; without gates ContainersReady
    and Ready turn True in one status write (the watch sees them together)."""
    ready = _at(tl, "ContainersReady=True")
    assert _at(tl, "PodScheduled=True") <= ready and _at(tl, "Initialized=True") <= ready
    assert _at(tl, "Ready=True") - ready < 0.05, tl.relative()


def check_defaults(tl: Timeline) -> None:
    """No probe fields: probed every 10 s, and yet ready soon after the app listens (the
    kubelet probes at the pod sync that sees the container started). An app that listens only
    after that probe is refused by it: the kubelet reports the probe failed, and the pod is
    ready at the ticker's next probe, a period after."""
    check_start(tl)
    _ticker(tl, DEFAULT_PERIOD)
    ready = _at(tl, "ContainersReady=True")
    if ready - tl.listening < DEFAULT_PERIOD / 2:
        return
    # The Event's times are whole seconds: the probe was up to 1 s after the time it carries.
    early = [t for t in tl.failed_probes if t <= tl.listening + 1.0]
    assert early, (tl.relative(), tl.listening - tl.created, tl.failed_probes)
    assert abs(ready - (early[0] + DEFAULT_PERIOD)) <= SYNC + 1.0, (tl.relative(), early)


def check_delayed(tl: Timeline, delay: float = 3.0, period: float = 2.0) -> None:
    """``initialDelaySeconds: 3``, ``periodSeconds: 2``: not ready before 3 s, then every 2 s."""
    check_start(tl)
    assert _at(tl, "ContainersReady=True") - tl.created >= delay, tl.relative()
    _ticker(tl, period)


def check_flap(f: Flap, failures: int = 3, successes: int = 2, period: float = 1.0) -> None:
    """``failureThreshold: 3``, ``successThreshold: 2``, ``periodSeconds: 1``: unready after
    the third failed probe, ready after the second good one."""
    down = f.unready_at - f.failed_at
    assert (failures - 1) * period - SLACK <= down <= failures * period + SYNC, down
    assert f.probes_between(f.failed_at, f.unready_at) >= failures, (f.failed_at, f.probes)
    up = f.ready_at - f.healed_at
    assert (successes - 1) * period - SLACK <= up <= successes * period + SYNC, up
    assert f.probes_between(f.healed_at, f.ready_at) >= successes, (f.healed_at, f.probes)


def check_gate(up: list[float], down: list[float]) -> None:
    """Ready follows a readiness gate's condition at the pod's next sync: never at once (a
    sync's write and the watch take 0.06 s and more on the real node), within a relist when
    the pod is idle, within two for the first patch (a sync is under way after
    ContainersReady)."""
    later = up[1:] + down
    assert min(up + down) >= 0.03, (up, down)
    assert max(later) >= 0.2, later  # some waited for a relist
    assert median(later) <= 1.0 and max(later) <= 2 * SYNC, later
    assert up[0] <= 2 * SYNC + SLACK, up


def check_deletion(d: Deletion, hook_s: float = 1.0) -> None:
    """``preStop: exec sleep 1``: SIGTERM after the hook; Ready False at the relist after the
    app exits; the pod gone soon after."""
    rel = {k: round(v - d.deleting, 3) for k, v in vars(d).items() if v is not None}
    term = d.stopped_answering - d.deleting
    assert hook_s <= term <= hook_s + 1.0, rel
    assert d.unready is not None, rel
    assert d.stopped_answering <= d.unready + 0.1, rel
    assert d.unready - d.stopped_answering <= 2 * SYNC, rel  # a relist, and a loaded machine
    assert d.unready <= d.gone <= d.unready + 2 * SYNC, rel


def _check_starts(res: Results) -> None:
    for tl in res.timelines.values():
        if tl.name != "gated":  # gated: Ready waits for the gate
            check_start(tl)


# What both tiers assert on :func:`run_all`'s results, by name (a test each).
FACTS: dict[str, Callable[[Results], None]] = {
    "conditions_in_order_and_together": _check_starts,
    "probe_defaults_period_10s_first_probe_at_start": lambda r: check_defaults(
        r.timelines["defaults"]
    ),
    "initial_delay_and_period_honoured": lambda r: check_delayed(r.timelines["delayed"]),
    "failure_and_success_thresholds": lambda r: check_flap(r.flap),
    "ready_follows_a_readiness_gate_at_the_next_sync": lambda r: check_gate(r.gate_up, r.gate_down),
    "deletion_hook_sigterm_unready_gone": lambda r: check_deletion(r.deletion),
}
