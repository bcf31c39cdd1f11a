"""The readiness gate's stated bound: ``podlb.io/gate-timeout`` and
``podlb.io/gate-on-timeout: hold | admit`` per Service. ``hold`` (the default) keeps a pod the LB
has not confirmed out of rotation and says so (reason ``GateTimeout``, a Warning Event, a
metric); ``admit`` sets lb-ready True with reason ``GateTimeoutAdmitted`` (Warning Event,
metric). A malformed value is a Warning on the Service and the default applies."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.lb.base import Health
from agent.leader.gate import (
    DEFAULT_TIMEOUT_S,
    GATE_ON_TIMEOUT,
    GATE_TIMEOUT,
    GatePolicy,
    OnTimeout,
    combine,
    gate_policy,
)
from agent.leader.plan import LBReason, gate_verdict
from agent.leader.reconcile import Leader
from agent.leader.verdicts import REGISTERING_HOLD_S
from agent.model import Condition, Service, Verdict
from tests.fakes import FakeStatusSink
from tests.unit.test_leader_reconcile import (
    POOL,
    SVC,
    FakeLB,
    leader,
    pod,
    slice_for,
    write_all,
)


def svc(**annotations: str) -> Service:
    return replace(SVC, annotations=(*SVC.annotations, *annotations.items()))


@pytest.mark.parametrize(
    ("annotations", "policy", "problem"),
    [
        ({}, GatePolicy(DEFAULT_TIMEOUT_S, OnTimeout.HOLD), None),
        ({GATE_TIMEOUT: "90s"}, GatePolicy(90.0, OnTimeout.HOLD), None),
        ({GATE_TIMEOUT: "2m", GATE_ON_TIMEOUT: "admit"}, GatePolicy(120.0, OnTimeout.ADMIT), None),
        ({GATE_ON_TIMEOUT: " Hold "}, GatePolicy(DEFAULT_TIMEOUT_S, OnTimeout.HOLD), None),
        ({GATE_TIMEOUT: "soon"}, GatePolicy(), "'soon' is not a duration"),
        ({GATE_TIMEOUT: "0s"}, GatePolicy(), "'0s' is not a duration"),
        ({GATE_TIMEOUT: "30s", GATE_ON_TIMEOUT: "open"}, GatePolicy(30.0, OnTimeout.HOLD),
         "'open' is not hold or admit"),
    ],
)  # fmt: skip
def test_gate_policy_from_annotations(
    annotations: dict[str, str], policy: GatePolicy, problem: str | None
) -> None:
    got, problems = gate_policy(svc(**annotations))
    assert got == policy
    if problem is None:
        assert problems == []
    else:
        (message,) = problems
        assert problem in message and "using" in message


def test_a_pod_behind_several_services_gets_the_shortest_bound_and_hold_wins() -> None:
    admit, hold = OnTimeout.ADMIT, OnTimeout.HOLD
    assert combine([GatePolicy(90, admit), GatePolicy(30, admit)]) == GatePolicy(30, admit)
    assert combine([GatePolicy(90, hold), GatePolicy(30, admit)]) == GatePolicy(30, hold)


REGISTERING = Verdict(False, LBReason.REGISTERING, "shop.web.http/x: waiting for health checks")


@pytest.mark.parametrize(
    ("verdict", "policy", "waited", "before", "reason", "ready"),
    [
        (REGISTERING, GatePolicy(90, OnTimeout.HOLD), 89.0, False, LBReason.REGISTERING, False),
        (REGISTERING, GatePolicy(90, OnTimeout.HOLD), 90.0, False, LBReason.GATE_TIMEOUT, False),
        (REGISTERING, GatePolicy(90, OnTimeout.ADMIT), 91.0, False,
         LBReason.GATE_TIMEOUT_ADMITTED, True),
        # timed out under an earlier leader: still timed out (no flip back to Registering)
        (REGISTERING, GatePolicy(90, OnTimeout.ADMIT), 0.0, True,
         LBReason.GATE_TIMEOUT_ADMITTED, True),
        (Verdict(False, LBReason.UNHEALTHY, "check fails"), GatePolicy(9, OnTimeout.HOLD), 10.0,
         False, LBReason.GATE_TIMEOUT, False),
        # not waiting at the gate: left alone
        (Verdict(True, LBReason.HEALTHY, "up"), GatePolicy(9, OnTimeout.ADMIT), 10.0, False,
         LBReason.HEALTHY, True),
        (Verdict(False, LBReason.DRAINING, "d"), GatePolicy(9, OnTimeout.ADMIT), 10.0, False,
         LBReason.DRAINING, False),
        (Verdict(False, LBReason.NOT_REGISTERED, "n"), GatePolicy(9, OnTimeout.ADMIT), 10.0,
         False, LBReason.NOT_REGISTERED, False),
    ],
)  # fmt: skip
def test_gate_verdict(
    verdict: Verdict[LBReason],
    policy: GatePolicy,
    waited: float,
    before: bool,
    reason: LBReason,
    ready: bool,
) -> None:
    got = gate_verdict(verdict, policy, waited, timed_out_before=before)
    assert (got.reason, got.ready) == (reason, ready)
    if reason in (LBReason.GATE_TIMEOUT, LBReason.GATE_TIMEOUT_ADMITTED):
        assert verdict.message in got.message  # what the LB said is kept
        assert f"{GATE_ON_TIMEOUT}: {policy.on_timeout}" in got.message


# -- the leader's rounds -------------------------------------------------------------------------
class NeverUpLB(FakeLB):
    """Added servers never pass a health check (no check result yet)."""

    healthy: bool = False

    def observe(self, instance: str, pool: str):  # type: ignore[no-untyped-def]
        state = super().observe(instance, pool)
        if not self.healthy:
            for name, srv in state.servers.items():
                state.servers[name] = replace(srv, health=Health.CHECKING)
        return state


def gated(service: Service) -> tuple[Leader, FakeStatusSink, NeverUpLB, list[tuple[str, str, str]]]:
    lb = NeverUpLB({"h1": {POOL: {}}})
    ld, sink = leader(
        [pod("a")], [slice_for({"a": "10.0.0.1"})], lb, [service],
        registering_hold_s=REGISTERING_HOLD_S,
    )  # fmt: skip
    timeouts: list[tuple[str, str, str]] = []
    ld.metrics.gate_timeout = lambda ns, s, policy: timeouts.append((ns, s, policy))
    return ld, sink, lb, timeouts


def step(ld: Leader, sink: FakeStatusSink, advance: float = 0.0) -> tuple[str, str, str]:
    """Advance the leader's clock, run a round, write, and show the informer the result."""
    ld.clock.advance(advance)  # type: ignore[attr-defined]
    ld.round()
    write_all(ld)
    cond = sink.conditions.get(pod("a").key)
    if cond is not None:
        with_cond = replace(pod("a"), conditions=(*pod("a").conditions, cond))
        ld.pods._items[:] = [with_cond]  # type: ignore[attr-defined]
    return (cond.status, cond.reason, cond.message) if cond else ("", "", "")


def test_hold_keeps_the_pod_out_and_says_so() -> None:
    ld, sink, lb, timeouts = gated(svc(**{GATE_TIMEOUT: "5s"}))
    # Registering is written once the pod has waited REGISTERING_HOLD_S (2 s) at the gate.
    assert step(ld, sink) == ("", "", "")
    assert step(ld, sink, REGISTERING_HOLD_S - 0.1) == ("", "", "")
    assert step(ld, sink, 0.1)[:2] == ("False", "Registering")
    status, reason, message = step(ld, sink, 4.5)
    assert (status, reason) == ("False", "GateTimeout")
    assert "held out of rotation" in message and "waiting for health checks" in message
    assert timeouts == [("shop", "web", "hold")]
    assert ("a", "Warning", "LbReadyGateTimeout") in sink.events
    assert step(ld, sink, 60.0)[:2] == ("False", "GateTimeout")  # still held, counted once
    assert timeouts == [("shop", "web", "hold")]
    lb.healthy = True  # the LB confirms at last: admitted as usual
    assert step(ld, sink, 1.0)[:2] == ("True", "Healthy")


def test_admit_sets_lb_ready_with_a_distinct_reason() -> None:
    ld, sink, lb, timeouts = gated(svc(**{GATE_TIMEOUT: "5s", GATE_ON_TIMEOUT: "admit"}))
    step(ld, sink)
    assert step(ld, sink, 2.0)[:2] == ("False", "Registering")
    status, reason, message = step(ld, sink, 5.0)
    assert (status, reason) == ("True", "GateTimeoutAdmitted")
    assert "admitted without the LB's confirmation" in message
    assert timeouts == [("shop", "web", "admit")]
    assert ("a", "Warning", "LbReadyGateTimeoutAdmitted") in sink.events
    # In rotation now, yet never reported Healthy while the LB does not say so.
    assert step(ld, sink, 1.0)[:2] == ("True", "GateTimeoutAdmitted")
    lb.healthy = True
    assert step(ld, sink, 1.0)[:2] == ("True", "Healthy")
    assert timeouts == [("shop", "web", "admit")]


def test_a_new_leader_keeps_a_pod_admitted_by_the_gate_timeout() -> None:
    service = svc(**{GATE_TIMEOUT: "5s", GATE_ON_TIMEOUT: "admit"})
    admitted = Condition("podlb.io/lb-ready", "True", "GateTimeoutAdmitted", "earlier leader")
    before = replace(pod("a"), conditions=(*pod("a").conditions, admitted))
    lb = NeverUpLB({"h1": {POOL: {}}})
    ld, sink = leader([before], [slice_for({"a": "10.0.0.1"})], lb, [service])
    timeouts: list[tuple[str, str, str]] = []
    ld.metrics.gate_timeout = lambda ns, s, policy: timeouts.append((ns, s, policy))
    ld.round()
    ld.round()
    write_all(ld)
    assert pod("a").key not in sink.conditions  # nothing to write: it stays admitted
    assert timeouts == []


def test_the_default_is_hold_after_ten_minutes_and_a_bad_value_is_a_warning() -> None:
    ld, sink, _lb, timeouts = gated(svc(**{GATE_TIMEOUT: "soon", GATE_ON_TIMEOUT: "maybe"}))
    step(ld, sink)
    assert step(ld, sink, DEFAULT_TIMEOUT_S - 1)[:2] == ("False", "Registering")
    assert step(ld, sink, 1.0)[:2] == ("False", "GateTimeout")
    assert timeouts == [("shop", "web", "hold")]
    bad = [e for e in sink.events if e[2] == "BadAnnotation"]
    assert bad == [("web", "Warning", "BadAnnotation")] * 2  # one per annotation, once


def test_pods_waiting_nowhere_near_the_bound_are_untouched() -> None:
    ld, sink, lb, timeouts = gated(svc())
    lb.healthy = True
    step(ld, sink)
    assert step(ld, sink, DEFAULT_TIMEOUT_S * 2)[:2] == ("True", "Healthy")
    assert timeouts == []
