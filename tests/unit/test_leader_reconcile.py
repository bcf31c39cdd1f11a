"""The leader's reconcile round against in-memory fakes of our own interfaces."""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from agent.clock import FakeClock
from agent.errors import TransientError
from agent.lb.base import (
    Action,
    AdminState,
    ApplyResult,
    Health,
    ObservedServer,
    Op,
    PoolNotFound,
    PoolState,
)
from agent.leader.desired import server_name
from agent.leader.reconcile import Leader
from agent.model import (
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
from agent.node.reporter import ConditionReporter

T = TypeVar("T")
NS = "shop"
POOL = "shop.web.http"


class FakeCache(Generic[T]):
    def __init__(self, items: list[T], synced: bool = True) -> None:
        self._items = items
        self.synced = threading.Event()
        if synced:
            self.synced.set()

    def items(self) -> list[T]:
        return list(self._items)

    def get(self, key: tuple[str, str]) -> T | None:
        return next((i for i in self._items if (i.namespace, i.name) == key), None)  # type: ignore[attr-defined]

    def run(self, stop: threading.Event) -> None:
        stop.wait()

    def stop_watch(self) -> None:
        pass


@dataclass
class FakeLB:
    """An LB that keeps servers in memory: ADD makes them UP at once."""

    pools: dict[str, dict[str, dict[str, ObservedServer]]]  # instance -> pool -> servers
    reachable: bool = True
    applied: list[tuple[str, str, Op, str]] = field(default_factory=list)
    name: str = "haproxy"
    max_weight: int = 256
    default_max_backends: int | None = None

    def instances(self) -> Sequence[str]:
        return list(self.pools)

    def observe_pools(self, instance: str, pools: Collection[str]) -> dict[str, PoolState]:
        if not self.reachable:
            raise TransientError("unreachable")
        return {p: self.observe(instance, p) for p in pools if p in self.pools[instance]}

    def observe(self, instance: str, pool: str) -> PoolState:
        if not self.reachable:
            raise TransientError("unreachable")
        if pool not in self.pools[instance]:
            raise PoolNotFound(pool)
        return PoolState(pool, dict(self.pools[instance][pool]))

    def apply(self, instance: str, pool: str, actions: Sequence[Action]) -> ApplyResult:
        servers = self.pools[instance][pool]
        for a in actions:
            self.applied.append((instance, pool, a.op, a.server))
            old = servers.get(a.server)
            if a.op is Op.ADD:
                assert a.address and a.port and a.weight is not None
                servers[a.server] = ObservedServer(
                    a.server, a.address, a.port, a.weight, AdminState.READY, Health.UP, 0
                )
            elif a.op is Op.REMOVE:
                servers.pop(a.server)
            elif old is not None:
                admin = {Op.DRAIN: AdminState.DRAIN, Op.ENABLE: AdminState.READY}.get(
                    a.op, old.admin
                )
                weight = a.weight if a.weight is not None else old.weight
                servers[a.server] = ObservedServer(
                    old.name, old.address, old.port, weight, admin, old.health, old.sessions
                )
        return ApplyResult(done=len(actions))


class FakeSink:
    def __init__(self) -> None:
        self.conditions: dict[PodKey, Condition] = {}
        self.events: list[tuple[str, str, str]] = []

    def patch_condition(self, key: PodKey, condition: Condition) -> None:
        self.conditions[key] = condition

    def emit_event(self, pod: Pod, event_type: str, reason: str, message: str) -> None:
        self.events.append((pod.name, event_type, reason))

    def emit_object_event(
        self,
        kind: str,
        namespace: str,
        name: str,
        uid: str,
        event_type: str,
        reason: str,
        message: str,
    ) -> None:
        self.events.append((name, event_type, reason))


def pod(name: str, *, terminating: bool = False, cr: str = "True") -> Pod:
    return Pod(
        namespace=NS, name=name, uid=f"u-{name}", node_name="n1", ips=(), phase="Running",
        terminating=terminating, labels=(("app", "web"),),
        conditions=(Condition("ContainersReady", cr),), readiness_gates=(LB_READY,),
    )  # fmt: skip


SVC = Service(
    NS, "web", "s1", "LoadBalancer", (("app", "web"),), (ServicePort(80, "http", name="http"),),
    (("podlb.io/direct", "true"),),
)  # fmt: skip


def slice_for(pods: dict[str, str], terminating: set[str] = frozenset()) -> EndpointSlice:  # type: ignore[assignment]
    return EndpointSlice(NS, "web-x", "web", "IPv4", (SlicePort("http", 8080),), tuple(
        Endpoint((ip,), n not in terminating, True, n in terminating, "n1", PodKey(NS, n))
        for n, ip in pods.items()
    ))  # fmt: skip


def leader(
    pods: list[Pod],
    slices: list[EndpointSlice],
    lb: FakeLB | None,
    services: list[Service] | None = None,
    synced: bool = True,
) -> tuple[Leader, FakeSink]:
    sink = FakeSink()
    pod_cache = FakeCache(pods, synced)
    reporter = ConditionReporter(
        LB_READY, sink, lambda k: pod_cache.get((k.namespace, k.name)), FakeClock()
    )
    return (
        Leader(
            services=FakeCache(services if services is not None else [SVC], synced),
            slices=FakeCache(slices, synced), pods=pod_cache, providers={lb.name: lb} if lb else {},
            reporter=reporter,
            events=sink, clock=FakeClock(),
        ),
        sink,
    )  # fmt: skip


def write_all(ld: Leader) -> None:
    while ld.reporter.pending():
        key = ld.reporter._next_key()
        assert key is not None
        ld.reporter.write_one(key)


A = server_name("10.0.0.1", 8080)
B = server_name("10.0.0.2", 8080)


def test_round_registers_on_every_instance_then_reports_healthy() -> None:
    lb = FakeLB({"h1": {POOL: {}}, "h2": {POOL: {}}})
    ld, sink = leader([pod("a"), pod("b")], [slice_for({"a": "10.0.0.1", "b": "10.0.0.2"})], lb)
    assert ld.round() is True  # adds in flight
    assert sorted((i, op.value, s) for i, _p, op, s in lb.applied) == [
        ("h1", "add", A), ("h1", "add", B), ("h2", "add", A), ("h2", "add", B),
    ]  # fmt: skip
    ld.round()
    write_all(ld)
    assert {k.name: (c.status, c.reason) for k, c in sink.conditions.items()} == {
        "a": ("True", "Healthy"),
        "b": ("True", "Healthy"),
    }
    lb.applied.clear()
    ld.round()
    assert lb.applied == []  # nothing changes: no LB command


def test_terminating_pod_drains_then_is_deregistered() -> None:
    lb = FakeLB({"h1": {POOL: {}}})
    pods = [pod("a"), pod("b")]
    ld, sink = leader(pods, [slice_for({"a": "10.0.0.1", "b": "10.0.0.2"})], lb)
    ld.round()
    pods[1] = pod("b", terminating=True)
    ld.pods = FakeCache(pods)
    ld.slices = FakeCache([slice_for({"a": "10.0.0.1", "b": "10.0.0.2"}, terminating={"b"})])
    ld.round()
    assert lb.pools["h1"][POOL][B].admin is AdminState.DRAIN
    ld.round()  # sessions are 0: removed
    assert B not in lb.pools["h1"][POOL]
    ld.round()
    write_all(ld)
    assert (sink.conditions[PodKey(NS, "b")].reason) == "Deregistered"
    assert sink.conditions[PodKey(NS, "a")].status == "True"


def test_fail_static_unsynced_unreachable_and_empty_endpoints() -> None:
    server = ObservedServer(A, "10.0.0.1", 8080, 100, AdminState.READY, Health.UP, 0)
    lb = FakeLB({"h1": {POOL: {A: server}}})
    ld, _ = leader([pod("a")], [], lb, synced=False)
    ld.round()
    assert lb.applied == []
    # Endpoints empty but the Service's pod exists: keep the backend.
    ld, _ = leader([pod("a")], [], lb)
    ld._owned.add(("haproxy", POOL))
    ld.round()
    assert lb.applied == [] and A in lb.pools["h1"][POOL]
    # LB unreachable: nothing applied, no lb-ready written.
    lb.reachable = False
    ld, sink = leader([pod("a")], [slice_for({"a": "10.0.0.1"})], lb)
    ld.round()
    write_all(ld)
    assert lb.applied == [] and sink.conditions == {}


def test_deleted_service_empties_its_pool_and_problems_are_events() -> None:
    lb = FakeLB({"h1": {POOL: {}}})
    ld, sink = leader([pod("a")], [slice_for({"a": "10.0.0.1"})], lb)
    ld.round()
    assert A in lb.pools["h1"][POOL]
    ld.services = FakeCache([])
    ld.pods = FakeCache([])
    ld.slices = FakeCache([])
    ld.round()  # drain
    ld.round()  # remove
    assert lb.pools["h1"][POOL] == {}
    bad = Service(
        NS,
        "bad",
        "s2",
        "LoadBalancer",
        None,
        (ServicePort(80, 80),),
        (("podlb.io/direct", "true"),),
    )
    ld.services = FakeCache([bad])
    ld.round()
    ld.round()
    assert sink.events == [("bad", "Warning", "NoSelector")]  # once, not per round
