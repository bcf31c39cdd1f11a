"""Each drain leaves a record: how long the LB took to deregister the pod, the connections then
and at the end, new connections and bytes after the deregistration, and how the drain ended
(``deregistered+quiet``, ``timeout``, ``agent-shutdown``, ``refused``). Records go to a bounded
ring (``/v1/drains``), to metrics labelled by namespace and Service, and to a pod Event."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.clock import Clock
from agent.errors import NotFound
from agent.metrics import Metrics
from agent.model import LB_READY, Condition, Pod, Service, ServicePort
from agent.node.drain import Activity, DrainManager, Outcome
from agent.node.drainlog import (
    DrainLog,
    DrainRecord,
    Tally,
    record_json,
    service_label,
    tally,
)
from agent.node.eventqueue import EventQueue
from agent.report import drains_table
from tests.unit.test_drain import TickingClock, wait_until

PORTS = frozenset({8080})
WEB = Service("shop", "web", "s1", "LoadBalancer", (("app", "web"),), (ServicePort(80, 8080),),
              (("podlb.io/direct", "true"),))  # fmt: skip
OTHER = Service("shop", "all", "s2", "ClusterIP", (("app", "web"),), (ServicePort(80, 8080),))


def pod(reason: str | None = "Draining", **kw: Any) -> Pod:
    conds = (Condition(LB_READY, "False", reason),) if reason else ()
    base: dict[str, Any] = dict(
        namespace="shop", name="web-1", uid="u1", node_name="n1", ips=("10.0.0.1",),
        phase="Running", terminating=True, grace_period_s=30, deletion_grace_s=30,
        readiness_gates=(LB_READY,), conditions=conds, labels=(("app", "web"),),
    )  # fmt: skip
    base.update(kw)
    return Pod(**base)


def conn(peer: str, received: int, idle_ms: int = 10, port: int = 8080) -> Activity:
    return Activity(port, idle_ms, peer, received)


# -- the tally (pure) ------------------------------------------------------------------------
def test_tally_counts_from_the_deregistration() -> None:
    t = tally(Tally(), elapsed_s=0.0, reference=False,
              connections=[conn("c:1", 100), conn("c:2", 50)])  # fmt: skip
    assert (t.since_s, t.at_reference, t.last, t.new, t.bytes) == (None, None, 2, None, None)
    t = tally(t, elapsed_s=0.5, reference=True, connections=[conn("c:1", 120), conn("c:2", 60)])
    assert (t.since_s, t.at_reference, t.last, t.new, t.bytes) == (0.5, 2, 2, 0, 0)
    # c:1 received 30 more bytes, c:2 closed, c:3 is new (all of its 30 bytes count)
    t = tally(t, elapsed_s=1.0, reference=True, connections=[conn("c:1", 150), conn("c:3", 30)])
    assert (t.at_reference, t.last, t.new, t.bytes) == (2, 2, 1, 60)
    t = tally(t, elapsed_s=1.5, reference=False, connections=None)  # not read: nothing known
    assert (t.last, t.new, t.bytes) == (2, 1, 60)
    t = tally(t, elapsed_s=2.0, reference=True, connections=[conn("c:1", 150)])
    assert (t.since_s, t.last, t.new, t.bytes) == (0.5, 1, 1, 60)


def test_tally_without_byte_counts_counts_connections_only() -> None:
    t = tally(Tally(), elapsed_s=0.0, reference=True, connections=[Activity(8080, 5)])
    t = tally(t, elapsed_s=0.2, reference=True, connections=[Activity(8080, 5, "c:9")])
    assert (t.new, t.bytes) == (1, 0)


def test_service_label_prefers_a_direct_service_and_says_none_without_one() -> None:
    assert service_label(pod(), [OTHER, WEB]) == "web"
    assert service_label(pod(), [OTHER]) == "all"
    assert service_label(pod(labels=()), [OTHER, WEB]) == "none"


# -- the drain manager's records ---------------------------------------------------------------
def manager(
    looks: list[tuple[str | None, list[Activity]]],
    *,
    live: Callable[[str, str], Pod] | None = None,
    stop_after: int | None = None,
    stop: threading.Event | None = None,
) -> tuple[DrainManager, list[DrainRecord], list[tuple[str, str, str]]]:
    """A manager whose pod shows ``looks`` one after the other (the lb-ready reason and the
    connections), each poll 0.5 s apart; the last look repeats."""
    records: list[DrainRecord] = []
    events: list[tuple[str, str, str]] = []
    n = {"conns": 0}  # looks so far: the pod shows the one whose connections are read next

    def cached(key: Any) -> Pod:
        return pod(looks[min(n["conns"], len(looks) - 1)][0])

    def activity(paths: tuple[str, ...], inode: int) -> list[Activity]:
        i = min(n["conns"], len(looks) - 1)
        n["conns"] += 1
        if stop is not None and stop_after is not None and n["conns"] > stop_after:
            stop.set()
        return list(looks[i][1])

    m = DrainManager(
        "n1", live or (lambda ns, name: pod()), cached, lambda: [OTHER, WEB],
        lambda p: (("/run/netns/x",), 1, PORTS), activity,
        lambda p, t, r, msg: events.append((t, r, msg)), TickingClock(), poll_s=0.5,
        announce_wait_s=0.0, on_record=records.append,
    )  # fmt: skip
    return m, records, events


def test_deregistered_and_quiet_is_recorded_with_what_the_drain_saw() -> None:
    m, records, events = manager([
        ("Draining", [conn("c:1", 100), conn("c:2", 50)]),
        ("Deregistered", [conn("c:1", 120), conn("c:2", 60)]),
        ("Deregistered", [conn("c:1", 150), conn("c:3", 30)]),
        ("Deregistered", [conn("c:1", 150, idle_ms=2000)]),
    ])  # fmt: skip
    result = m.drain("shop", "web-1")
    assert (result.code, result.outcome) == (200, Outcome.DRAINED)
    assert Outcome.DRAINED.value == "deregistered+quiet"
    (r,) = records
    assert (r.namespace, r.pod, r.uid, r.service, r.outcome) == (
        "shop", "web-1", "u1", "web", "deregistered+quiet",
    )  # fmt: skip
    assert (r.seconds, r.deregistered_s) == (1.5, 0.5)
    assert (r.connections_at_deregistered, r.connections_at_end) == (2, 1)
    assert (r.new_connections, r.quiet_bytes) == (1, 60)
    assert r.ended_at.endswith("Z")
    (event,) = events
    assert event[:2] == ("Normal", "Drained")
    assert "deregistered+quiet after 1.5s" in event[2] and "deregistered at 0.5s" in event[2]
    assert "1 new connection(s)" in event[2] and "60 B" in event[2]


def test_a_timeout_is_recorded_and_is_a_warning() -> None:
    m, records, events = manager([("Draining", [conn("c:1", 100, idle_ms=0)])])
    result = m.drain("shop", "web-1")
    assert result.outcome is Outcome.TIMEOUT
    (r,) = records
    assert (r.outcome, r.seconds, r.service) == ("timeout", 27.0, "web")
    assert (r.deregistered_s, r.connections_at_deregistered, r.new_connections) == (None,) * 3
    assert r.quiet_bytes is None and r.connections_at_end == 1
    assert "the LB to deregister the pod" in r.message
    (event,) = events
    assert event[:2] == ("Warning", "DrainTimeout")
    assert "timeout after 27.0s" in event[2] and "the LB to deregister" in event[2]


def test_an_agent_shutdown_mid_drain_is_recorded_and_is_a_warning() -> None:
    stop = threading.Event()
    m, records, events = manager(
        [("Deregistered", [conn("c:1", 100, idle_ms=0)])], stop_after=3, stop=stop
    )
    result = m.drain("shop", "web-1", stop)
    assert (result.code, result.outcome) == (503, Outcome.AGENT_SHUTDOWN)
    assert Outcome.AGENT_SHUTDOWN.value == "agent-shutdown"
    (r,) = records
    assert (r.outcome, r.deregistered_s, r.connections_at_end) == ("agent-shutdown", 0.0, 1)
    assert events[0][:2] == ("Warning", "DrainAgentShutdown")


def test_refusals_are_recorded_without_an_event() -> None:
    m, records, events = manager([("Draining", [])], live=lambda ns, n: pod(terminating=False))
    m.cached_pod = lambda key: None  # type: ignore[method-assign]
    assert m.drain("shop", "web-1").code == 409

    def gone(ns: str, name: str) -> Pod:
        raise NotFound(name)

    m.live_pod = gone  # type: ignore[method-assign]
    assert m.drain("shop", "made-up").code == 404
    assert [(r.outcome, r.pod, r.uid, r.service) for r in records] == [
        ("refused", "web-1", "u1", "web"),
        ("refused", "made-up", "", "none"),
    ]
    assert events == []


# -- the ring, the JSON, the table, the metrics ------------------------------------------------
def record(name: str, outcome: str = "deregistered+quiet", **kw: Any) -> DrainRecord:
    base: dict[str, Any] = dict(
        namespace="shop", pod=name, uid=f"u-{name}", service="web", outcome=outcome,
        ended_at="2026-01-01T00:00:00Z", seconds=1.24, deregistered_s=0.61,
        connections_at_deregistered=2, connections_at_end=0, new_connections=0, quiet_bytes=0,
        message="the LB dropped the pod and it is quiet",
    )  # fmt: skip
    base.update(kw)
    return DrainRecord(**base)


def test_the_ring_is_bounded_and_refusals_cannot_push_drains_out() -> None:
    log = DrainLog(size=3, refused_size=2)
    for i in range(5):
        log.add(record(f"p{i}"))
    for i in range(50):
        log.add(record(f"x{i}", "refused", uid=""))
    shown = [r.pod for r in log.records()]
    assert shown == ["p2", "p3", "p4", "x48", "x49"]  # oldest first


def test_json_and_table() -> None:
    held = record("web-1")
    out = record_json(held)
    assert out["outcome"] == "deregistered+quiet" and out["deregistered_s"] == 0.61
    assert set(out) == {
        "namespace", "pod", "uid", "service", "outcome", "ended_at", "seconds",
        "deregistered_s", "connections_at_deregistered", "connections_at_end",
        "new_connections", "quiet_bytes", "message",
    }  # fmt: skip
    refused = record_json(record("x", "refused", uid="", service="none", seconds=0.0,
                                 deregistered_s=None, connections_at_deregistered=None,
                                 connections_at_end=None, new_connections=None,
                                 quiet_bytes=None))  # fmt: skip
    lines = drains_table([out, refused]).splitlines()
    assert lines[0].split() == [
        "ENDED", "POD", "SERVICE", "OUTCOME", "HELD", "s", "DEREGISTERED", "s", "CONNS",
        "DEREG/END", "NEW", "BYTES",
    ]  # fmt: skip
    assert lines[1].split() == ["2026-01-01T00:00:00Z", "shop/web-1", "web",
                                "deregistered+quiet", "1.24", "0.61", "2/0", "0", "0"]  # fmt: skip
    assert lines[2].split()[3:] == ["refused", "0.00", "-", "-", "-", "-"]
    assert drains_table([]) == "no drains yet"


def samples(registry: CollectorRegistry) -> dict[str, float]:
    """``name{label="value",...}`` -> value, labels sorted by name."""
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_metrics_by_namespace_and_service_and_the_signal_ended_ratio() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    assert "podlb_drain_signal_ended_ratio" not in samples(registry)
    metrics.observe_drain(record("a", new_connections=1, quiet_bytes=60))
    metrics.observe_drain(record("b", "timeout", deregistered_s=None,
                                 connections_at_deregistered=None, new_connections=None,
                                 quiet_bytes=None, connections_at_end=1))  # fmt: skip
    metrics.observe_drain(record("c", "refused", uid="", namespace="made-up", service="none"))
    got = samples(registry)
    web = 'namespace="shop",service="web"'
    assert {k: v for k, v in got.items() if k.startswith("podlb_drain_duration_seconds_count")} == {
        'podlb_drain_duration_seconds_count{namespace="shop",outcome="deregistered+quiet",'
        'service="web"}': 1.0,
        'podlb_drain_duration_seconds_count{namespace="shop",outcome="timeout",service="web"}': 1.0,
        # a refusal of a pod nobody knows is not labelled with the namespace it names
        'podlb_drain_duration_seconds_count{namespace="",outcome="refused",service="none"}': 1.0,
    }
    assert got[f"podlb_drain_deregister_seconds_count{{{web}}}"] == 1.0
    assert got[f"podlb_drain_connections_after_deregistered_total{{{web}}}"] == 1.0
    assert got[f"podlb_drain_bytes_after_deregistered_total{{{web}}}"] == 60.0
    assert got[f'podlb_drain_open_connections_count{{moment="deregistered",{web}}}'] == 1.0
    assert got[f'podlb_drain_open_connections_count{{moment="end",{web}}}'] == 2.0
    assert got["podlb_drain_signal_ended_ratio"] == 0.5  # refusals are no drain


def test_drain_events_are_classified_with_the_others() -> None:
    from agent.events import OTHER_EVENTS
    from agent.node.drain import _EVENTS

    for kind, reason in _EVENTS.values():
        assert OTHER_EVENTS[reason] == kind, reason


def test_drain_events_never_hold_the_hook_are_bounded_and_flushed_on_stop() -> None:
    written: list[str] = []
    release = threading.Event()

    def emit(p: Pod, event_type: str, reason: str, message: str) -> None:
        release.wait(5)  # an API server that does not answer
        written.append(reason)

    busy = [True]
    queue = EventQueue(emit, Clock(), size=2, flush_s=5.0, busy=lambda: busy[0])
    stop = threading.Event()
    worker = threading.Thread(target=queue.run, args=(stop,))
    worker.start()
    queue.emit(pod(), "Normal", "A", "")
    wait_until(lambda: queue.pending() == 0)  # the writer took A and waits on the API
    t0 = time.monotonic()
    for reason in ("B", "C", "D"):
        queue.emit(pod(), "Normal", reason, "")
    assert time.monotonic() - t0 < 0.5 and queue.dropped == 1  # B made room for D
    stop.set()
    queue.emit(pod(), "Warning", "E", "")  # a drain cut short by the stop; C makes room
    release.set()
    wait_until(lambda: written == ["A", "D", "E"])
    assert worker.is_alive()  # drains still finishing: it keeps writing
    busy[0] = False
    worker.join(5)
    assert not worker.is_alive()
