from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.errors import NotFound
from agent.model import LB_READY, Condition, Pod, PodKey, Service, ServicePort
from agent.node.drain import (
    Activity,
    DrainManager,
    Outcome,
    decide,
    drain_started,
    drain_timeout_s,
    parse_duration,
)


def pod(lb: tuple[str, str] | None = ("False", "Draining"), **kw: Any) -> Pod:
    conds = (Condition(LB_READY, lb[0], lb[1]),) if lb else ()
    base: dict[str, Any] = dict(
        namespace="shop", name="web", uid="u1", node_name="n1", ips=("10.0.0.1",),
        phase="Running", terminating=True, grace_period_s=30, deletion_grace_s=30,
        readiness_gates=(LB_READY,), conditions=conds, labels=(("app", "web"),),
    )  # fmt: skip
    base.update(kw)
    return Pod(**base)


PORTS = frozenset({8080})


@pytest.mark.parametrize(
    ("the_pod", "conns", "elapsed", "done", "outcome"),
    [
        (pod(), [], 0.5, False, None),  # the LB has not deregistered it yet
        (pod(("False", "Deregistered")), [], 0.5, True, Outcome.DRAINED),
        (pod(("False", "Deregistered")), [Activity(8080, 10)], 0.5, False, None),  # busy
        (pod(("False", "Deregistered")), [Activity(8080, 1500)], 0.5, True, Outcome.DRAINED),
        (pod(("False", "Deregistered")), [Activity(9809, 1)], 0.5, True, Outcome.DRAINED),
        (pod(("False", "Deregistered")), None, 0.5, True, Outcome.DRAINED),  # netns gone
        (pod(), [Activity(8080, 10)], 27.0, True, Outcome.TIMEOUT),
        # No gate and no lb-ready condition: only quietness counts.
        (pod(None, readiness_gates=()), [], 0.1, True, Outcome.DRAINED),
    ],
)
def test_decide(
    the_pod: Pod, conns: list[Activity] | None, elapsed: float, done: bool, outcome: Outcome | None
) -> None:
    step = decide(the_pod, conns, PORTS, quiet_s=1.0, elapsed_s=elapsed, timeout_s=27.0)
    assert (step.done, step.outcome) == (done, outcome)
    assert step.waiting_for


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("25", 25.0), ("25s", 25.0), ("1500ms", 1.5), ("2m", 120.0), (" 3 s ", 3.0), ("x", None),
     ("-1", None), ("", None)],
)  # fmt: skip
def test_parse_duration(raw: str, seconds: float | None) -> None:
    assert parse_duration(raw) == seconds


def test_drain_timeout_sources() -> None:
    svc = Service("shop", "web", "s", "LoadBalancer", (("app", "web"),), (ServicePort(80, 8080),),
                  (("podlb.io/drain-timeout", "10s"),))  # fmt: skip
    assert drain_timeout_s(pod(), []) == (27.0, None)  # grace 30 s less the margin
    assert drain_timeout_s(pod(), [svc]) == (10.0, None)
    assert drain_timeout_s(pod(annotations=(("podlb.io/drain-timeout", "5"),)), [svc]) == (
        5.0,
        None,
    )
    assert drain_timeout_s(pod(annotations=(("podlb.io/drain-timeout", "5m"),)), []) == (30.0, None)
    value, problem = drain_timeout_s(pod(annotations=(("podlb.io/drain-timeout", "soon"),)), [])
    assert value == 27.0 and problem and "soon" in problem


def test_drain_started_from_deletion_timestamp() -> None:
    now = dt.datetime(2026, 1, 1, 12, 0, 30, tzinfo=dt.UTC)
    p = pod(deletion_timestamp="2026-01-01T12:00:40Z", deletion_grace_s=30)
    assert drain_started(p, now) == dt.datetime(2026, 1, 1, 12, 0, 10, tzinfo=dt.UTC)
    assert drain_started(pod(deletion_timestamp=None), now) == now


def manager(
    live: Any, cached: Pod | None = None, conns: list[Activity] | None = None
) -> tuple[DrainManager, list[Any]]:
    events: list[Any] = []
    m = DrainManager(
        "n1", live, lambda key: cached, lambda: [],
        lambda p: (("/run/netns/x",), 1, PORTS), lambda paths, inode: list(conns or []),
        lambda p, t, r, msg: events.append((p.name, t, r)), FakeClock(), poll_s=0.01,
    )  # fmt: skip
    return m, events


def test_refusals_are_checked_against_the_api() -> None:
    m, _ = manager(lambda ns, n: pod(terminating=False))
    assert m.drain("shop", "web").code == 409
    m, _ = manager(lambda ns, n: pod(node_name="n2"))
    assert m.drain("shop", "web").code == 404

    def gone(ns: str, n: str) -> Pod:
        raise NotFound("gone")

    m, _ = manager(gone)
    assert m.drain("shop", "web").code == 404


def test_drain_returns_when_deregistered_and_shares_one_drain() -> None:
    done_pod = pod(("False", "Deregistered"))
    m, _ = manager(lambda ns, n: pod(), cached=done_pod)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(m.drain("shop", "web"))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert [r.outcome for r in results] == [Outcome.DRAINED] * 3
    assert m.in_flight() == 0
    assert PodKey("shop", "web") not in m._running
