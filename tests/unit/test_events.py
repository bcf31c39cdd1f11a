"""Events say what happened, and Warnings only when something is wrong.

What a real node showed: a clean rollout produced dozens of Warning Events
(``LbReadyRegistering``, ``LbReadyDeregistered``, ``DatapathReadyNoPodIP``, ...), and new pods
were told they were "removed from the LB" before they ever were in it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.events import KINDS, EventType, Kind, event_type
from agent.lb.base import AdminState, Health, ObservedServer, PoolState, server_name
from agent.leader.desired import desired_pools
from agent.leader.plan import LBReason, lb_verdicts
from agent.model import (
    DATAPATH_READY,
    LB_READY,
    Condition,
    Endpoint,
    EndpointSlice,
    Pod,
    PodKey,
    Service,
    ServicePort,
    SlicePort,
)
from agent.node.readiness import Reason
from agent.node.reporter import ConditionReporter, Desired
from tests.fakes import FakeStatusSink

NS = "shop"
NORMAL, WARNING = EventType.NORMAL, EventType.WARNING


# -- the classification ------------------------------------------------------------------------
def test_every_reason_of_both_conditions_is_classified() -> None:
    assert {r for c, r in KINDS if c == DATAPATH_READY} == set(Reason)
    assert {r for c, r in KINDS if c == LB_READY} == set(LBReason)
    assert set(KINDS) == {(c, r) for c, r in KINDS if c in (DATAPATH_READY, LB_READY)}


@pytest.mark.parametrize(
    ("condition", "reason", "kind"),
    [
        (DATAPATH_READY, Reason.READY, Kind.EXPECTED),
        (DATAPATH_READY, Reason.NO_POD_IP, Kind.EXPECTED),  # a pod being created
        (DATAPATH_READY, Reason.NAMESPACE_NOT_FOUND, Kind.LOSS),  # a scan away, or gone
        (DATAPATH_READY, Reason.NO_INTERFACE, Kind.PROBLEM),
        (DATAPATH_READY, Reason.NO_ADDRESS, Kind.PROBLEM),
        (DATAPATH_READY, Reason.LINK_DOWN, Kind.PROBLEM),
        (DATAPATH_READY, Reason.NOT_LISTENING, Kind.LOSS),  # the app starting, or stopped
        (LB_READY, LBReason.HEALTHY, Kind.EXPECTED),
        (LB_READY, LBReason.NOT_REGISTERED, Kind.EXPECTED),
        (LB_READY, LBReason.REGISTERING, Kind.EXPECTED),
        (LB_READY, LBReason.UNHEALTHY, Kind.PROBLEM),
        (LB_READY, LBReason.DRAINING, Kind.EXPECTED),
        (LB_READY, LBReason.DEREGISTERED, Kind.EXPECTED),
    ],
)
def test_classification_table(condition: str, reason: str, kind: Kind) -> None:
    assert KINDS[(condition, reason)] is kind


@pytest.mark.parametrize(
    ("condition", "reason", "was_ready", "stopping", "expected"),
    [
        # Expected life is Normal whatever came before.
        (DATAPATH_READY, "Ready", False, False, NORMAL),
        (DATAPATH_READY, "NoPodIP", False, False, NORMAL),
        (LB_READY, "Registering", False, False, NORMAL),
        (LB_READY, "NotRegistered", False, False, NORMAL),
        (LB_READY, "Draining", True, True, NORMAL),
        (LB_READY, "Deregistered", False, True, NORMAL),
        (LB_READY, "Healthy", False, False, NORMAL),
        # A loss is a Warning only when it takes a ready pod out.
        (DATAPATH_READY, "NotListening", False, False, NORMAL),  # the app is starting
        (DATAPATH_READY, "NotListening", True, False, WARNING),  # the app stopped listening
        (DATAPATH_READY, "NamespaceNotFound", False, False, NORMAL),
        (DATAPATH_READY, "NamespaceNotFound", True, False, WARNING),
        # Problems are Warnings...
        (DATAPATH_READY, "NoInterface", False, False, WARNING),
        (DATAPATH_READY, "LinkDown", True, False, WARNING),
        (DATAPATH_READY, "NoAddress", False, False, WARNING),
        (LB_READY, "Unhealthy", False, False, WARNING),
        (LB_READY, "Unhealthy", True, False, WARNING),
        # ... except on a pod being stopped: its app and sandbox are meant to go away.
        (DATAPATH_READY, "NotListening", True, True, NORMAL),
        (DATAPATH_READY, "LinkDown", True, True, NORMAL),
        # A reason nobody classified is not hidden.
        (LB_READY, "SomethingNew", False, False, WARNING),
    ],
)
def test_event_type(
    condition: str, reason: str, was_ready: bool, stopping: bool, expected: EventType
) -> None:
    assert event_type(condition, reason, was_ready=was_ready, stopping=stopping) is expected


# -- the reporter emits them -------------------------------------------------------------------
def walk(condition: str, steps: list[tuple[str, str]], stop_after: int | None = None) -> list[Any]:
    key = PodKey(NS, "web-0")
    sink = FakeStatusSink({key: Pod(NS, "web-0", "u1", "n1", (), "Pending")})
    reporter = ConditionReporter(condition, sink, sink.lookup, FakeClock())
    for i, (status, reason) in enumerate(steps):
        if stop_after is not None and i == stop_after:
            sink.pods[key] = replace(sink.pods[key], terminating=True)
        reporter.set_desired(key, Desired("u1", status, reason, "..."))
        reporter.write_one(key)
    return [(event_type, reason) for _name, event_type, reason in sink.events]


def test_a_pods_normal_life_is_normal_events() -> None:
    """A pod created, started, served, stopped: not one Warning."""
    assert walk(
        DATAPATH_READY,
        [("False", "NoPodIP"), ("False", "NotListening"), ("True", "Ready"),
         ("False", "NotListening"), ("False", "NamespaceNotFound")],
        stop_after=3,
    ) == [
        ("Normal", "DatapathReadyNoPodIP"), ("Normal", "DatapathReadyNotListening"),
        ("Normal", "DatapathReadyTrue"), ("Normal", "DatapathReadyNotListening"),
        ("Normal", "DatapathReadyNamespaceNotFound"),
    ]  # fmt: skip
    assert walk(
        LB_READY,
        [("False", "NotRegistered"), ("False", "Registering"), ("True", "Healthy"),
         ("False", "Draining"), ("False", "Deregistered")],
        stop_after=3,
    ) == [
        ("Normal", "LbReadyNotRegistered"), ("Normal", "LbReadyRegistering"),
        ("Normal", "LbReadyTrue"), ("Normal", "LbReadyDraining"),
        ("Normal", "LbReadyDeregistered"),
    ]  # fmt: skip


def test_problems_are_warnings() -> None:
    assert walk(
        DATAPATH_READY,
        [("True", "Ready"), ("False", "NotListening"), ("False", "LinkDown"), ("True", "Ready")],
    ) == [
        ("Normal", "DatapathReadyTrue"), ("Warning", "DatapathReadyNotListening"),
        ("Warning", "DatapathReadyLinkDown"), ("Normal", "DatapathReadyTrue"),
    ]  # fmt: skip
    assert walk(LB_READY, [("True", "Healthy"), ("False", "Unhealthy")]) == [
        ("Normal", "LbReadyTrue"),
        ("Warning", "LbReadyUnhealthy"),
    ]


# -- lb-ready of a pod that never was in the LB ------------------------------------------------
def svc() -> Service:
    return Service(
        NS, "web", "s1", "LoadBalancer", (("app", "web"),), (ServicePort(80, "http", name="http"),),
        (("podlb.io/direct", "true"),),
    )  # fmt: skip


def pod(name: str, cr: str, lb: str | None = None, terminating: bool = False) -> Pod:
    conds = [Condition("ContainersReady", cr)]
    if lb is not None:
        conds.append(Condition(LB_READY, "True" if lb == "Healthy" else "False", lb))
    return Pod(NS, name, f"u-{name}", "n1", (), "Running", terminating=terminating,
               conditions=tuple(conds))  # fmt: skip


def test_a_pod_never_in_the_lb_is_not_told_it_was_removed() -> None:
    pods = {
        p.key: p
        for p in (
            pod("new", "False"),  # starting: not ContainersReady yet, no lb-ready yet
            pod("new2", "False", lb="NotRegistered"),
            pod("was", "False", lb="Draining"),  # was in the LB, went unready, drained
            pod("gone", "True", lb="Deregistered", terminating=True),
            pod("never", "False", terminating=True),  # deleted before it was ever added
        )
    }
    ips = {"new": "10.0.0.1", "new2": "10.0.0.2", "was": "10.0.0.3", "gone": "10.0.0.4",
           "never": "10.0.0.5"}  # fmt: skip
    sl = EndpointSlice(NS, "web-abc", "web", "IPv4", (SlicePort("http", 8080),), tuple(
        Endpoint((ip,), False, False, pods[PodKey(NS, n)].terminating, "n1", PodKey(NS, n))
        for n, ip in ips.items()
    ))  # fmt: skip
    [spec], findings = desired_pools([svc()], [sl], pods)
    assert findings == []
    v = lb_verdicts([spec], {"haproxy": {"h1": {spec.pool: PoolState(spec.pool, {})}}})
    reasons = {k.name: (x.reason, x.message) for k, x in v.items()}
    assert reasons["new"][0] is LBReason.NOT_REGISTERED
    assert reasons["new2"][0] is LBReason.NOT_REGISTERED
    assert all("removed" not in reasons[n][1] for n in ("new", "new2", "never"))
    assert reasons["was"][0] is LBReason.DEREGISTERED
    assert reasons["gone"][0] is LBReason.DEREGISTERED
    # The drain of a stopping pod waits for Deregistered: it gets it, said as it is.
    assert reasons["never"] == (
        LBReason.DEREGISTERED,
        f"{spec.pool}/{server_name('10.0.0.5', 8080)}: not in the LB",
    )
    # Once in the LB, a pod that goes unready is drained as before.
    on_lb = ObservedServer(server_name("10.0.0.1", 8080), "10.0.0.1", 8080, 100,
                           AdminState.READY, Health.UP, 3)  # fmt: skip
    v = lb_verdicts([spec], {"haproxy": {"h1": {spec.pool: PoolState(spec.pool, {
        on_lb.name: on_lb})}}})  # fmt: skip
    assert v[PodKey(NS, "new")].reason is LBReason.DRAINING
