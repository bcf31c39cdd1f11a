"""The leader's reconcile round against in-memory fakes of our own interfaces."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

import pytest

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
    server_name,
)
from agent.lb.fence import Term, fenced
from agent.leader.reconcile import FULL_READ_S, Leader
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
from agent.node.reporter import ConditionReporter, Desired
from tests.fakes import FakeStatusSink

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
        return self.snapshot().get(key)

    def snapshot(self) -> dict[tuple[str, str], T]:
        return {(i.namespace, i.name): i for i in self._items}  # type: ignore[attr-defined]

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
                    a.server, a.address, a.port, min(a.weight, self.max_weight),
                    AdminState.READY, Health.UP, 0,
                )  # fmt: skip
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
    registering_hold_s: float = 0.0,  # Registering written at once: verdicts round by round
) -> tuple[Leader, FakeStatusSink]:
    sink = FakeStatusSink()
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
            registering_hold_s=registering_hold_s,
        ),
        sink,
    )  # fmt: skip


def write_all(ld: Leader) -> None:
    ld.reporter.write_queued()


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


def test_a_rounds_lb_changes_are_handed_over_before_its_verdicts_are_decided() -> None:
    """The changes run on the workers while the verdicts are decided: an ENABLE read back in
    the same round has landed sooner (the verdicts come from what the LB showed before)."""
    lb = FakeLB({"h1": {POOL: {}}})
    ld, _sink = leader([pod("a")], [slice_for({"a": "10.0.0.1"})], lb)
    handed: list[int] = []
    decide = ld._verdicts.write

    def write(*args: Any) -> bool:
        handed.append(len(lb.applied))
        return decide(*args)

    ld._verdicts.write = write  # type: ignore[method-assign]
    ld.round()
    assert handed == [1] and lb.applied[0][2:] == (Op.ADD, A)


def test_an_admission_within_the_hold_is_one_write() -> None:
    """Registering is held back while a pod has waited less than the hold: an admission that
    lands within it writes Healthy alone (under churn, the write in between was half the
    lb-ready writes, queued ahead of the Healthy that unblocks the pod)."""
    lb = FakeLB({"h1": {POOL: {}}})
    ld, sink = leader([pod("a")], [slice_for({"a": "10.0.0.1"})], lb, registering_hold_s=2.0)
    assert ld.round() is True  # added; the verdict (from before the add) is Registering
    write_all(ld)
    ld.clock.advance(0.5)  # type: ignore[attr-defined]
    ld.round()
    write_all(ld)
    assert [(k.name, c.reason) for k, c in sink.writes] == [("a", "Healthy")]


def test_a_new_pods_first_not_registered_is_held_like_registering() -> None:
    """A rollout's new pod is ready a moment after podlb first sees it: its first lb-ready
    write is then Healthy, not NotRegistered before it (a write and an Event less per pod);
    a pod that stays unready gets its NotRegistered once the hold is over."""
    lb = FakeLB({"h1": {POOL: {}}})
    ld, sink = leader(
        [pod("a", cr="False"), pod("b", cr="False")],
        [slice_for({"a": "10.0.0.1", "b": "10.0.0.2"})], lb, registering_hold_s=2.0,
    )  # fmt: skip
    assert ld.round() is True  # NotRegistered held: look again soon
    write_all(ld)
    assert sink.writes == []
    ld.pods._items[0] = pod("a")  # type: ignore[attr-defined]
    ld.clock.advance(1.0)  # type: ignore[attr-defined]
    for _ in range(2):  # a added, then in rotation
        ld.round()
        write_all(ld)
    assert [(k.name, c.reason) for k, c in sink.writes] == [("a", "Healthy")]
    ld.clock.advance(1.0)  # type: ignore[attr-defined]
    ld.round()
    write_all(ld)
    assert [(k.name, c.reason) for k, c in sink.writes][1:] == [("b", "NotRegistered")]
    ld.pods._items[1] = replace(pod("b", cr="False"), uid="u-b2")  # type: ignore[attr-defined]
    ld.round()  # b recreated under its name (a StatefulSet's): held as new
    write_all(ld)
    assert len(sink.writes) == 2
    # a readiness that flaps does not start the hold again: timed from the first sighting
    ld3, sink3 = leader(
        [pod("d", cr="False")], [slice_for({"d": "10.0.0.4"})], FakeLB({"h1": {POOL: {}}}),
        registering_hold_s=2.0,
    )  # fmt: skip
    ld3._applier.executor = HeldExecutor()  # its ADD never lands: Registering while ready
    for cr, step in (("False", 0.0), ("True", 1.0), ("False", 0.5), ("False", 0.6)):
        ld3.pods._items[0] = pod("d", cr=cr)  # type: ignore[attr-defined]
        ld3.clock.advance(step)  # type: ignore[attr-defined]
        ld3.round()
        write_all(ld3)
    assert [(k.name, c.reason) for k, c in sink3.writes] == [("d", "NotRegistered")]
    # a pod that carries lb-ready already (an earlier term wrote it) is not held
    carried = Condition(LB_READY, "False", "NotRegistered")
    ld2, _sink2 = leader(
        [replace(pod("c", cr="False"), conditions=(
            Condition("ContainersReady", "False"), carried))],
        [slice_for({"c": "10.0.0.3"})], lb, registering_hold_s=2.0,
    )  # fmt: skip
    ld2.round()
    assert (ld2.reporter.desired(PodKey(NS, "c")) or Desired("", "", "", "")).reason == (
        "NotRegistered"
    )


class QuickLB(FakeLB):
    """A FakeLB read one pool at a time at once (agent.lb.base.QuickObserve), like HAProxy."""

    def observes_quickly(self) -> bool:
        return True


def test_an_admission_is_read_back_and_written_in_its_own_round() -> None:
    """On a QuickObserve LB the round reads back the pools it ENABLEd servers in and writes
    Healthy at once; a round at 10,000 servers takes most of a second, so waiting for the next
    one was half of a pod's time to lb-ready under churn."""
    staged = ObservedServer(A, "10.0.0.1", 8080, 100, AdminState.DRAIN, Health.UP, 0)
    for lb, rounds in (
        (FakeLB({"h1": {POOL: {A: staged}}}), 2),
        (QuickLB({"h1": {POOL: {A: staged}}}), 1),
    ):
        ld, sink = leader([pod("a")], [slice_for({"a": "10.0.0.1"})], lb)
        for _ in range(rounds):
            ld.round()
        write_all(ld)
        assert [op for _i, _p, op, _s in lb.applied] == [Op.ENABLE]
        assert [(k.name, c.reason) for k, c in sink.writes] == [("a", "Healthy")], lb
        ld.round()
        write_all(ld)
        assert len(sink.writes) == 1 and [op for _i, _p, op, _s in lb.applied] == [Op.ENABLE]
    # an LB that could not be read back: the next round sees it, as before
    lb = QuickLB({"h1": {POOL: {A: staged}}})
    ld, sink = leader([pod("a")], [slice_for({"a": "10.0.0.1"})], lb)
    real, reads = lb.observe_pools, []

    def read_back_fails(instance: str, pools: Collection[str]) -> dict[str, PoolState]:
        reads.append(set(pools))
        if len(reads) == 2:  # the round's observation, then its read-back
            raise TransientError("gone")
        return real(instance, pools)

    lb.observe_pools = read_back_fails  # type: ignore[method-assign]
    ld.round()
    write_all(ld)
    assert reads == [{POOL}, {POOL}]  # the round's verdict stands: the staged server's
    assert [(k.name, c.reason) for k, c in sink.writes] == [("a", "Registering")]
    ld.round()
    write_all(ld)
    assert [(k.name, c.reason) for k, c in sink.writes][1:] == [("a", "Healthy")]


def test_the_read_back_decides_again_only_the_pools_read_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The read-back's verdicts are a pass over the pools read back (a whole pass goes over
    every pod: 10,000 at scale); a pod also behind another pool gets a whole pass."""
    from agent.leader.verdicts import VerdictWriter

    passes: list[str] = []
    whole = VerdictWriter.write
    monkeypatch.setattr(
        VerdictWriter, "write", lambda self, *a: passes.append("whole") or whole(self, *a)
    )
    staged = ObservedServer(A, "10.0.0.1", 8080, 100, AdminState.DRAIN, Health.UP, 0)
    c = server_name("10.0.0.3", 8080)
    up = ObservedServer(c, "10.0.0.3", 8080, 100, AdminState.READY, Health.UP, 0)
    lb = QuickLB({"h1": {POOL: {A: staged}, API_POOL: {c: up}}})
    ld, sink = two_pools(lb)
    ld.round()
    write_all(ld)
    assert passes == ["whole"]  # the round's; the read-back's went over web alone
    assert {(k.name, c.reason) for k, c in sink.writes} == {("a", "Healthy"), ("c", "Healthy")}
    # pod a also behind a second Service of its own (pool both): a whole pass
    both = replace(SVC, name="both", uid="s3")
    lb = QuickLB({"h1": {POOL: {A: staged}, API_POOL: {c: up}, "shop.both.http": {A: staged}}})
    ld, sink = two_pools(lb)
    ld.services._items.append(both)  # type: ignore[attr-defined]
    ld.slices._items.append(  # type: ignore[attr-defined]
        replace(slice_for({"a": "10.0.0.1"}), name="both-x", service="both")
    )
    passes.clear()
    ld.round()
    write_all(ld)
    assert passes == ["whole", "whole"]
    assert sink.conditions[PodKey(NS, "a")].reason == "Healthy"


class CountingLB(QuickLB):
    """A QuickLB that notes the pools each observation asked for."""

    def __init__(self, pools: dict[str, dict[str, dict[str, ObservedServer]]]) -> None:
        super().__init__(pools)
        self.reads: list[set[str]] = []

    def observe_pools(self, instance: str, pools: Collection[str]) -> dict[str, PoolState]:
        self.reads.append(set(pools))
        return super().observe_pools(instance, pools)


API_POOL = "shop.api.http"
API_SVC = replace(SVC, name="api", uid="s2", selector=(("app", "api"),))


def two_pools(lb: FakeLB) -> tuple[Leader, FakeStatusSink]:
    """Pools web (pod a) and api (pod c), the api pod ready, the web pod too."""
    api_pod = replace(pod("c"), labels=(("app", "api"),))
    api_slice = replace(
        slice_for({"c": "10.0.0.3"}), name="api-x", service="api",
    )  # fmt: skip
    return leader(
        [pod("a"), api_pod], [slice_for({"a": "10.0.0.1"}), api_slice], lb, [SVC, API_SVC]
    )


def settle(ld: Leader, lb: CountingLB) -> list[set[str]]:
    """Rounds until one reads nothing; what they read."""
    lb.reads.clear()
    for _ in range(6):
        before = len(lb.reads)
        ld.round()
        if len(lb.reads) == before:
            return lb.reads
    raise AssertionError(f"never quiet: {lb.reads}")


def test_a_round_reads_only_the_pools_that_may_have_changed_and_its_share_of_the_sweep() -> None:
    """At 10,000 servers reading all of HAProxy was a third of a round: a round reads the
    pools whose backends changed, with a change in flight or a server out of rotation, and
    takes the others as the last round read them; each is read again within full_read_s."""
    lb = CountingLB({"h1": {POOL: {}, API_POOL: {}}})
    ld, sink = two_pools(lb)
    settle(ld, lb)
    write_all(ld)
    assert {(k.name, c.reason) for k, c in sink.conditions.items()} == {
        ("a", "Healthy"), ("c", "Healthy"),
    }  # fmt: skip
    ld.pods._items.append(replace(pod("b")))  # type: ignore[attr-defined]
    ld.slices._items[0] = slice_for({"a": "10.0.0.1", "b": "10.0.0.2"})  # type: ignore[attr-defined]
    # web's backends changed: web alone, until B's add is seen and nothing is left to do
    assert set(map(frozenset, settle(ld, lb))) == {frozenset({POOL})}
    write_all(ld)
    assert sink.conditions[PodKey(NS, "b")].reason == "Healthy"
    # behind podlb's back: api's server fails its checks; seen once the sweep reaches it
    c = server_name("10.0.0.3", 8080)
    lb.pools["h1"][API_POOL][c] = replace(lb.pools["h1"][API_POOL][c], health=Health.DOWN)
    lb.reads.clear()
    ld.round()
    assert lb.reads == []
    ld.clock.advance(FULL_READ_S)  # type: ignore[attr-defined]
    ld.round()
    ld.round()
    assert lb.reads == [{POOL, API_POOL}, {API_POOL}]  # then api's, every round, while down


def test_the_sweep_reads_every_pool_within_full_read_s_a_share_each_round() -> None:
    """Reading all of HAProxy at once every full_read_s made one round in six a quarter of a
    second longer at 10,000 servers: each round reads its share instead, the pools read
    longest ago, and none is left unread for full_read_s."""
    names = [f"s{i}" for i in range(8)]
    services = [replace(SVC, name=n, uid=f"u{n}", selector=(("app", n),)) for n in names]
    pods = [replace(pod(n), labels=(("app", n),)) for n in names]
    slices = [
        replace(slice_for({n: f"10.0.0.{i + 1}"}), name=f"{n}-x", service=n)
        for i, n in enumerate(names)
    ]
    pools = {f"{NS}.{n}.http" for n in names}
    lb = CountingLB({"h1": {p: {} for p in pools}})
    ld, _sink = leader(pods, slices, lb, services)
    settle(ld, lb)  # every server added and in rotation: nothing may change any more
    lb.reads.clear()
    read_at = {p: 0.0 for p in pools}
    for r in range(1, 25):  # a round every full_read_s / 4: a quarter of the pools each
        ld.clock.advance(FULL_READ_S / 4)  # type: ignore[attr-defined]
        ld.round()
        assert len(lb.reads) == r and len(lb.reads[-1]) == 2, lb.reads
        now = r * FULL_READ_S / 4
        read_at |= {p: now for p in lb.reads[-1]}
        assert all(now - t <= FULL_READ_S for t in read_at.values()), (r, read_at)
    # rounds far apart (the resync, when nothing happens): every pool, each round
    lb.reads.clear()
    ld.clock.advance(FULL_READ_S)  # type: ignore[attr-defined]
    ld.round()
    assert lb.reads == [pools]


class HeldExecutor(Executor):
    """Runs what is submitted only on release(): LB changes in flight across rounds."""

    def __init__(self) -> None:
        self.held: list[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.held.append((future, fn, args))
        return future

    def release(self) -> None:
        held, self.held = self.held, []
        for future, fn, args in held:
            future.set_result(fn(*args))


def test_a_pool_is_read_again_after_a_change_of_podlb_lands_in_it() -> None:
    """A change can land after a round's read while the next plan has nothing to do (the pod
    was deleted meanwhile): the pool is read again, not taken as last read (from a review:
    its server stayed in rotation until the next whole read)."""
    lb = CountingLB({"h1": {POOL: {}, API_POOL: {}}})
    ld, _sink = two_pools(lb)
    settle(ld, lb)
    held = HeldExecutor()
    ld._applier.executor = held
    ld.pods._items.append(pod("b"))  # type: ignore[attr-defined]
    ld.slices._items[0] = slice_for({"a": "10.0.0.1", "b": "10.0.0.2"})  # type: ignore[attr-defined]
    ld.round()  # B's add, in flight
    ld.pods._items[-1] = pod("b", terminating=True)  # type: ignore[attr-defined]
    ld.slices._items[0] = slice_for(  # type: ignore[attr-defined]
        {"a": "10.0.0.1", "b": "10.0.0.2"}, terminating={"b"}
    )
    ld.round()  # B not on the LB yet: nothing to do
    held.release()  # the add lands: B in rotation
    lb.reads.clear()
    ld.round()
    assert lb.reads == [{POOL}]
    held.release()
    assert (B in lb.pools["h1"][POOL]) and lb.applied[-1][2:] == (Op.DRAIN, B)


def test_a_pool_with_a_server_out_of_rotation_is_read_every_round() -> None:
    drained = ObservedServer(A, "10.0.0.1", 8080, 100, AdminState.DRAIN, Health.UP, 3)
    lb = CountingLB({"h1": {POOL: {A: drained}}})
    ld, _sink = leader(
        [pod("a", terminating=True)],
        [
            slice_for(
                {},
            )
        ],
        lb,
    )
    for _ in range(3):
        ld.round()
    assert lb.reads[-2:] == [{POOL}, {POOL}]


def test_an_lb_restart_or_a_failed_read_makes_the_next_round_read_all() -> None:
    lb = CountingLB({"h1": {POOL: {}, API_POOL: {}}})
    ld, _sink = two_pools(lb)
    settle(ld, lb)
    lb.reads.clear()
    ld._reads.restarted()  # what probe_lbs says when an instance restarted or is back
    ld.round()
    ld.round()
    assert lb.reads == [{POOL, API_POOL}]
    lb.reads.clear()
    ld.clock.advance(FULL_READ_S)  # type: ignore[attr-defined]
    lb.reachable = False
    ld.round()  # the whole read fails
    lb.reachable = True
    ld.round()  # read whole again, not narrowed to what the failed round would have read
    assert lb.reads == [{POOL, API_POOL}, {POOL, API_POOL}]


def test_an_lb_not_read_quickly_is_read_whole_every_round() -> None:
    lb = FakeLB({"h1": {POOL: {}, API_POOL: {}}})
    reads: list[set[str]] = []
    real = lb.observe_pools
    lb.observe_pools = lambda i, ps: reads.append(set(ps)) or real(i, ps)  # type: ignore[method-assign]
    ld, _sink = two_pools(lb)
    for _ in range(4):
        ld.round()
    assert reads == [{POOL, API_POOL}] * 4


def test_what_is_kept_of_a_pool_goes_when_the_round_no_longer_sees_it() -> None:
    lb = FakeLB({"h1": {POOL: {}}})
    ld, _sink = leader([pod("a")], [slice_for({"a": "10.0.0.1"})], lb)
    for _ in range(3):
        ld.round()
    assert set(ld._applier._settled) == {("haproxy", "h1", POOL)}
    lb.reachable = False  # not observed: nothing planned, nothing kept
    ld.round()
    assert ld._applier._settled == {} and ld._applier._drain_since == {}


def test_changes_of_desired_backends_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    lb = FakeLB({"h1": {POOL: {}}})
    ld, _sink = leader([pod("a"), pod("b")], [slice_for({"a": "10.0.0.1", "b": "10.0.0.2"})], lb)
    caplog.set_level(logging.INFO, logger="agent.leader.reconcile")

    def logged() -> list[str]:
        got = [r.getMessage() for r in caplog.records if "desired" in r.getMessage()]
        caplog.clear()
        return got

    ld.round()
    assert logged() == [f"leader: desired {POOL}: 2 backends (+{A},{B} -none)"]
    ld.round()
    assert logged() == []
    ld.slices = FakeCache([slice_for({"a": "10.0.0.1"})])
    ld.round()
    assert logged() == [f"leader: desired {POOL}: 1 backends (+none -{B})"]
    ld.services = FakeCache([])
    ld.round()
    assert logged() == [f"leader: desired {POOL}: 0 backends (+none -{A})"]


def test_a_settled_pool_is_not_planned_again_until_its_spec_or_state_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pool with nothing to do and every server in rotation is not planned again while its
    spec is the same object and the LB shows the same of it (1,000 pools a round)."""
    from agent.leader import applier

    planned: list[str] = []
    real = applier.plan_pool

    def counting(spec: Any, state: PoolState, **kw: Any) -> Any:
        planned.append(state.pool)
        return real(spec, state, **kw)

    monkeypatch.setattr(applier, "plan_pool", counting)
    lb = FakeLB({"h1": {POOL: {}}})
    ld, _sink = leader([pod("a"), pod("b")], [slice_for({"a": "10.0.0.1", "b": "10.0.0.2"})], lb)
    ld.round()  # adds
    ld.round()  # nothing to do
    ld.round()  # nothing to do (a new spec: what the LB has changed), settled
    assert len(planned) == 3
    ld.round()
    assert len(planned) == 3  # not planned again
    lb.pools["h1"][POOL][A] = replace(lb.pools["h1"][POOL][A], health=Health.DOWN)
    ld.round()
    assert len(planned) == 4  # the LB shows something else: planned (nothing to do again)
    ld.slices = FakeCache([slice_for({"a": "10.0.0.1"})])
    ld.round()
    assert len(planned) == 5 and lb.pools["h1"][POOL][B].admin is AdminState.DRAIN


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
    ld._owned[("haproxy", POOL)] = (NS, "web")
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


# -- cloud LBs: observe and manage modes, several providers -------------------------------------
CLB_POOL = "lb-1/TCP:80"
TKE_SVC = Service(
    NS, "web", "s1", "LoadBalancer", (("app", "web"),), (ServicePort(80, "http", name="http"),),
    (("service.cloud.tencent.com/direct-access", "true"),
     ("service.kubernetes.io/loadbalance-id", "lb-1")),
)  # fmt: skip


def cloud_server(name: str, weight: int = 100, health: Health = Health.UP) -> ObservedServer:
    admin = AdminState.READY if weight else AdminState.DRAIN  # no drain state but weight 0
    address, port = name.rsplit("_", 1)
    return ObservedServer(name, address, int(port), weight, admin, health, None)


def cloud_leader(
    pods: list[Pod], slices: list[EndpointSlice], svc: Service, *lbs: FakeLB
) -> tuple[Leader, FakeStatusSink]:
    ld, sink = leader(pods, slices, None, services=[svc])
    ld.providers = {lb.name: lb for lb in lbs}
    return ld, sink


def reasons(ld: Leader, sink: FakeStatusSink) -> dict[str, str | None]:
    write_all(ld)
    return {k.name: c.reason for k, c in sink.conditions.items()}


def test_observe_mode_reads_the_cloud_lb_and_never_writes_it() -> None:
    clb = FakeLB({"ap-guangzhou": {CLB_POOL: {}}}, name="tencent-clb", max_weight=100)
    pods = [pod("a"), pod("b")]
    ld, sink = cloud_leader(pods, [slice_for({"a": "10.0.0.1", "b": "10.0.0.2"})], TKE_SVC, clb)
    assert ld.round() is True
    assert reasons(ld, sink) == {"a": "Registering", "b": "Registering"}
    # The cloud's controller registers a; b's health check still fails.
    clb.pools["ap-guangzhou"][CLB_POOL] = {
        A: cloud_server(A),
        B: cloud_server(B, health=Health.DOWN),
    }
    ld.round()
    assert reasons(ld, sink) == {"a": "Healthy", "b": "Unhealthy"}
    # b terminates: Draining while the CLB still sends it traffic, Deregistered at weight 0
    # (the CLB counts no sessions: the node agent waits for quiet) or once it is gone.
    ld.pods = FakeCache([pod("a"), pod("b", terminating=True)])
    ld.slices = FakeCache([slice_for({"a": "10.0.0.1", "b": "10.0.0.2"}, terminating={"b"})])
    ld.round()
    assert reasons(ld, sink)["b"] == "Draining"
    clb.pools["ap-guangzhou"][CLB_POOL][B] = cloud_server(B, weight=0)
    ld.round()
    assert reasons(ld, sink)["b"] == "Deregistered"
    del clb.pools["ap-guangzhou"][CLB_POOL][B]
    ld.round()
    assert reasons(ld, sink)["b"] == "Deregistered"
    # The Service goes away: an observed pool is not podlb's to empty.
    ld.services = FakeCache([])
    ld.round()
    ld.round()
    assert clb.applied == [] and A in clb.pools["ap-guangzhou"][CLB_POOL]


def test_managed_cloud_pool_weights_to_zero_and_removes_once_the_pod_is_gone() -> None:
    clb = FakeLB({"r": {CLB_POOL: {}}}, name="tencent-clb", max_weight=100)
    managed = replace(TKE_SVC, annotations=(*TKE_SVC.annotations, ("podlb.io/lb-mode", "manage")))
    weighted = replace(pod("a"), annotations=(("podlb.io/weight", "200"),))
    ld, sink = cloud_leader([weighted], [slice_for({"a": "10.0.0.1"})], managed, clb)
    ld.round()
    assert clb.applied == [("r", CLB_POOL, Op.ADD, A)]
    assert clb.pools["r"][CLB_POOL][A].weight == 100  # capped to the CLB's maximum
    clb.pools["r"][CLB_POOL][A] = cloud_server(A)
    ld.pods = FakeCache([pod("a", terminating=True)])
    ld.slices = FakeCache([slice_for({"a": "10.0.0.1"}, terminating={"a"})])
    ld.round()
    clb.pools["r"][CLB_POOL][A] = cloud_server(A, weight=0)  # what the CLB reports after DRAIN
    ld.round()
    ld.round()
    assert [op for _i, _p, op, _s in clb.applied] == [Op.ADD, Op.DRAIN]  # kept while draining
    assert reasons(ld, sink)["a"] == "Deregistered"
    ld.pods = FakeCache([])
    ld.slices = FakeCache([slice_for({})])
    ld.round()
    assert [op for _i, _p, op, _s in clb.applied] == [Op.ADD, Op.DRAIN, Op.REMOVE]


def test_providers_are_independent_and_a_missing_one_is_reported() -> None:
    haproxy = FakeLB({"h1": {POOL: {}}})
    clb = FakeLB({"r": {CLB_POOL: {A: cloud_server(A)}}}, name="tencent-clb", max_weight=100)
    ld, sink = leader([pod("a")], [slice_for({"a": "10.0.0.1"})], haproxy, services=[TKE_SVC])
    ld.round()
    assert sink.events == [("web", "Warning", "LBProviderNotConfigured")]
    assert haproxy.applied == [] and reasons(ld, sink) == {}
    # With the CLB configured but HAProxy unreachable, the CLB pool is still judged.
    haproxy.reachable = False
    ld.providers = {"haproxy": haproxy, "tencent-clb": clb}
    ld.round()
    assert reasons(ld, sink) == {"a": "Healthy"}


class BlockingLB(FakeLB):
    """apply() waits until released: a slow cloud API."""

    def __init__(self, pools: dict[str, dict[str, dict[str, ObservedServer]]]) -> None:
        super().__init__(pools)
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def apply(self, instance: str, pool: str, actions: Sequence[Action]) -> ApplyResult:
        self.entered.release()
        assert self.release.wait(5)
        return super().apply(instance, pool, actions)


def test_slow_lb_changes_run_beside_the_rounds_and_are_never_issued_twice() -> None:
    lb = BlockingLB({"h1": {POOL: {}}})
    ld, _ = leader([pod("a")], [slice_for({"a": "10.0.0.1"})], lb)
    ld = replace(ld, apply_executor=ThreadPoolExecutor(4))
    try:
        assert ld.round() is True  # ADD a handed to a worker
        assert lb.entered.acquire(timeout=5)
        ld.round()  # a's change is in flight: not planned again
        # b becomes ready while a's ADD is still running: its ADD goes out at once.
        ld.pods = FakeCache([pod("a"), pod("b")])
        ld.slices = FakeCache([slice_for({"a": "10.0.0.1", "b": "10.0.0.2"})])
        ld.round()
        assert lb.entered.acquire(timeout=5)
        lb.release.set()
    finally:
        ld.apply_executor.shutdown(wait=True)
    assert sorted(s for _i, _p, _op, s in lb.applied) == [A, B]
    ld.round()
    assert sorted(s for _i, _p, _op, s in lb.applied) == [A, B]  # both in: nothing more


class IndependentBlockingLB(BlockingLB):
    def independent_writes(self) -> bool:
        return True


def test_registrations_and_drains_of_one_round_do_not_wait_for_each_other() -> None:
    """A slow drain or removal (HAProxy waiting for a server to be unused) must not hold a new
    pod's registration of the same round, nor the reverse, where writes are independent; a
    provider without that (a cloud LB: quota, its own order) gets one batch in plan order."""
    up = ObservedServer(A, "10.0.0.1", 8080, 100, AdminState.READY, Health.UP, 0)
    pods = [pod("a", terminating=True), pod("b")]
    slices = [slice_for({"a": "10.0.0.1", "b": "10.0.0.2"}, {"a"})]
    for lb, calls in ((IndependentBlockingLB({"h1": {POOL: {A: up}}}), 2),
                      (BlockingLB({"h1": {POOL: {A: up}}}), 1)):  # fmt: skip
        ld, _ = leader(pods, slices, lb)
        ld = replace(ld, apply_executor=ThreadPoolExecutor(4))
        try:
            ld.round()
            # Each batch is inside the LB at once: neither waits for the other to return.
            assert all(lb.entered.acquire(timeout=5) for _ in range(calls))
            assert not lb.entered.acquire(timeout=0.2)
            lb.release.set()
        finally:
            ld.apply_executor.shutdown(wait=True)
        applied = [(op, s) for _i, _p, op, s in lb.applied]
        if calls == 2:  # side by side: either may land first
            applied.sort()
        assert applied == [(Op.ADD, B), (Op.DRAIN, A)]


class StagingLB(FakeLB):
    """A FakeLB that stages (agent.lb.base.Staging): STAGE holds a server in DRAIN, UP."""

    def stages(self) -> bool:
        return True

    def apply(self, instance: str, pool: str, actions: Sequence[Action]) -> ApplyResult:
        staged = [a for a in actions if a.op is Op.STAGE]
        result = super().apply(instance, pool, [a for a in actions if a.op is not Op.STAGE])
        for a in staged:
            assert a.address and a.port and a.weight is not None
            self.applied.append((instance, pool, a.op, a.server))
            self.pools[instance][pool][a.server] = ObservedServer(
                a.server, a.address, a.port, a.weight, AdminState.DRAIN, Health.UP, 0
            )
        return ApplyResult(done=result.done + len(staged))


def test_a_staged_pod_is_admitted_with_one_enable_and_leaves_the_leader_at_rest() -> None:
    lb = StagingLB({"h1": {POOL: {}}})
    pods = [pod("a"), pod("b", cr="False")]
    ld, _ = leader(pods, [slice_for({"a": "10.0.0.1", "b": "10.0.0.2"})], lb)
    for _ in range(3):
        ld.round()
    assert sorted((op, s) for _i, _p, op, s in lb.applied) == [(Op.ADD, A), (Op.STAGE, B)]
    # Converged with b staged (out of rotation, not ready): a quiet round, no fast polling.
    assert ld.round() is False
    ld.pods = FakeCache([pod("a"), pod("b")])
    ld.round()
    assert lb.applied[-1][2:] == (Op.ENABLE, B)
    assert lb.pools["h1"][POOL][B].admin is AdminState.READY
    # An LB that does not stage (a cloud LB's provider) never gets a STAGE.
    cloud = FakeLB({"h1": {POOL: {}}})
    ld, _ = leader(pods, [slice_for({"a": "10.0.0.1", "b": "10.0.0.2"})], cloud)
    for _ in range(3):
        ld.round()
    assert [(op, s) for _i, _p, op, s in cloud.applied] == [(Op.ADD, A)]


def test_gate_admit_checked_looks_again_soon_until_the_staged_server_is_up() -> None:
    """Nothing wakes the leader when HAProxy turns a staged server UP: with gate-admit checked
    it polls (a busy round) while such a pod waits, and is at rest once it is admitted."""
    lb = StagingLB({"h1": {POOL: {}}})
    checked = replace(
        SVC, annotations=(("podlb.io/direct", "true"), ("podlb.io/gate-admit", "checked"))
    )
    ld, _ = leader([pod("b", cr="False")], [slice_for({"b": "10.0.0.2"})], lb, [checked])
    ld.round()  # stages b
    down = replace(lb.pools["h1"][POOL][B], health=Health.DOWN)
    lb.pools["h1"][POOL][B] = down
    assert ld.round() is True  # b waits for its checks: look again soon
    lb.pools["h1"][POOL][B] = replace(down, health=Health.UP)
    ld.round()
    assert ld.reporter.desired(PodKey(NS, "b")).status == "True"  # type: ignore[union-attr]
    assert ld.round() is False


def test_a_routing_problem_on_a_live_service_leaves_its_managed_pool_alone() -> None:
    lb = FakeLB({"h1": {POOL: {}}})
    ld, sink = leader([pod("a")], [slice_for({"a": "10.0.0.1"})], lb)
    ld.round()
    assert A in lb.pools["h1"][POOL]
    typo = replace(SVC, annotations=(*SVC.annotations, ("podlb.io/lb-provider", "haproxyy")))
    ld.services = FakeCache([typo])
    for _ in range(3):
        ld.round()
    assert lb.pools["h1"][POOL][A].admin is AdminState.READY  # not drained, not removed
    assert ("web", "Warning", "BadAnnotation") in sink.events


def test_a_pool_turned_observed_is_never_written_again_even_when_its_service_goes() -> None:
    clb = FakeLB({"r": {CLB_POOL: {}}}, name="tencent-clb", max_weight=100)
    managed = replace(TKE_SVC, annotations=(*TKE_SVC.annotations, ("podlb.io/lb-mode", "manage")))
    ld, _ = cloud_leader([pod("a")], [slice_for({"a": "10.0.0.1"})], managed, clb)
    ld.round()
    assert A in clb.pools["r"][CLB_POOL]
    clb.applied.clear()
    ld.services = FakeCache([TKE_SVC])  # back to observe: the cloud's controller owns it
    ld.round()
    ld.services = FakeCache([])
    ld.round()
    ld.round()
    assert clb.applied == [] and A in clb.pools["r"][CLB_POOL]


def test_a_pod_behind_two_providers_keeps_its_condition_while_one_is_unreachable() -> None:
    haproxy = FakeLB({"h1": {POOL: {}}})
    clb = FakeLB({"r": {CLB_POOL: {}}}, name="tencent-clb", max_weight=100)
    ld, sink = leader([pod("a")], [slice_for({"a": "10.0.0.1"})], haproxy)
    tke = replace(TKE_SVC, name="web-tke", uid="s2")
    ld.services = FakeCache([SVC, tke])
    ld.slices = FakeCache([slice_for({"a": "10.0.0.1"}), replace(slice_for({"a": "10.0.0.1"}),
                           name="web-tke-x", service="web-tke")])  # fmt: skip
    ld.providers = {"haproxy": haproxy, "tencent-clb": clb}
    ld.round()
    ld.round()
    assert reasons(ld, sink) == {"a": "Registering"}  # UP in HAProxy, not in the CLB yet
    clb.reachable = False
    ld.round()
    assert reasons(ld, sink) == {"a": "Registering"}  # not Healthy on half the evidence


def test_cloud_pool_keeps_drained_live_pods_and_unseen_pools_confirm_nothing() -> None:
    clb = FakeLB({"r": {CLB_POOL: {}}}, name="tencent-clb", max_weight=100)
    managed = replace(TKE_SVC, annotations=(*TKE_SVC.annotations, ("podlb.io/lb-mode", "manage")))
    b = replace(pod("b"), ips=("10.0.0.2",))
    ld, sink = cloud_leader([pod("a"), b], [slice_for({"a": "10.0.0.1", "b": "10.0.0.2"})],
                            managed, clb)  # fmt: skip
    ld.round()
    clb.pools["r"][CLB_POOL] = {A: cloud_server(A), B: cloud_server(B)}
    ld.slices = FakeCache([slice_for({"a": "10.0.0.1"})])  # b leaves the endpoints, still runs
    ld.round()
    clb.pools["r"][CLB_POOL][B] = cloud_server(B, weight=0)
    ld.round()
    ld.round()
    assert B in clb.pools["r"][CLB_POOL]  # its connections may still be open
    # A leaving pod whose pool the LB did not show is not confirmed Deregistered.
    ld.pods = FakeCache([pod("a", terminating=True), b])
    ld.slices = FakeCache([slice_for({"a": "10.0.0.1"}, terminating={"a"})])
    del clb.pools["r"][CLB_POOL]
    ld.round()
    assert reasons(ld, sink)["a"] == "Draining"


def in_rotation(p: Pod, sink: FakeStatusSink) -> Pod:
    """The pod as the informer shows it once its lb-ready condition was written."""
    return replace(p, conditions=(*p.conditions, sink.conditions[p.key]))


def set_pods(ld: Leader, pods: list[Pod]) -> None:
    """New informer contents, seen by the round and by the condition writer alike."""
    ld.pods._items[:] = pods  # type: ignore[attr-defined]


def test_an_lb_restart_is_repaired_without_taking_pods_out_of_rotation() -> None:
    """Issue 17 defect 8: h1 restarts and loses every runtime server. Pods that were
    lb-ready=True stay so (no write at all); their servers are re-added; the loss is one
    Warning Event on the Service and a metric."""
    lb = FakeLB({"h1": {POOL: {}}, "h2": {POOL: {}}})
    pods = [pod("a"), pod("b")]
    ld, sink = leader(pods, [slice_for({"a": "10.0.0.1", "b": "10.0.0.2"})], lb)
    lost: list[tuple[str, int]] = []
    ld.metrics.servers_lost = lambda provider, n: lost.append((provider, n))
    ld.round()
    ld.round()
    write_all(ld)
    set_pods(ld, [in_rotation(p, sink) for p in pods])
    assert {c.status for c in sink.conditions.values()} == {"True"}
    sink.writes.clear()

    lb.pools["h1"][POOL].clear()  # h1 restarted
    lb.applied.clear()
    ld.round()
    write_all(ld)
    assert sorted((i, op.value, s) for i, _p, op, s in lb.applied) == [
        ("h1", "add", A), ("h1", "add", B),
    ]  # fmt: skip
    # Re-added; the first health check has not run yet.
    for name, srv in lb.pools["h1"][POOL].items():
        lb.pools["h1"][POOL][name] = replace(srv, health=Health.CHECKING)
    ld.round()
    write_all(ld)
    for name, srv in lb.pools["h1"][POOL].items():
        lb.pools["h1"][POOL][name] = replace(srv, health=Health.UP)
    ld.round()
    write_all(ld)
    assert sink.writes == []  # never False, nothing written at all
    assert [e for e in sink.events if e[2] == "LBServersLost"] == [
        ("web", "Warning", "LBServersLost")
    ]
    assert lost == [("haproxy", 2)]

    # A failing check still takes a pod in rotation out; a new pod waits for every instance.
    lb.pools["h2"][POOL][A] = replace(lb.pools["h2"][POOL][A], health=Health.DOWN)
    set_pods(ld, [*ld.pods.items(), pod("c")])
    ld.slices = FakeCache([slice_for({"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3"})])
    ld.round()
    write_all(ld)
    assert {c.reason for _k, c in sink.writes} == {"Unhealthy", "Registering"}
    assert {k.name: c.reason for k, c in sink.conditions.items()} == {
        "a": "Unhealthy",
        "b": "Healthy",
        "c": "Registering",
    }
    assert lost == [("haproxy", 2)]  # a new pod's server is not a loss


@dataclass
class RestartingLB(FakeLB):
    """A FakeLB whose instances report a process id (None: not reachable)."""

    ids: dict[str, str | None] = field(default_factory=dict)
    probes: int = 0

    def process_id(self, instance: str) -> str:
        with fenced("show info"):  # as a real provider fences each request
            self.probes += 1
            ident = self.ids[instance]
            if ident is None:
                raise TransientError(f"{instance} refused")
            return ident


def test_an_lb_restart_wakes_a_round_at_once_and_probes_are_fenced() -> None:
    """Issue 17: a restarted instance answers 503 until its servers are back, so its new process
    (or its return after it could not be reached) wakes the leader, not the next resync."""
    lb = RestartingLB({"h1": {POOL: {}}, "h2": {POOL: {}}}, ids={"h1": "10@1", "h2": "20@1"})
    ld, _sink = leader([pod("a")], [slice_for({"a": "10.0.0.1"})], lb)
    assert ld.probe_lbs() is False and not ld._wake.is_set()  # first ids: only noted
    assert ld.probe_lbs() is False and not ld._wake.is_set()
    lb.ids["h1"] = "11@2"  # restarted between two probes
    assert ld.probe_lbs() is False and ld._wake.is_set()
    ld._wake.clear()
    lb.ids["h2"] = None  # stopping: nothing to reconcile yet, probe again soon
    assert ld.probe_lbs() is True and not ld._wake.is_set()
    lb.ids["h2"] = "20@1"  # back (even with the same id: a connection lost and found)
    assert ld.probe_lbs() is False and ld._wake.is_set()
    ld._wake.clear()
    ld._term = Term(lambda: False, "ended")  # no request outside the term
    probes = lb.probes
    assert ld.probe_lbs() is None and lb.probes == probes and not ld._wake.is_set()
    plain, _ = leader([], [], FakeLB({"h1": {POOL: {}}}))
    assert plain.probe_lbs() is False  # a provider that cannot tell is not probed


def test_findings_are_reported_once_with_no_lb_provider_too() -> None:
    """With no LB provider the leader only logs the desired state; a problem it finds is
    still an Event once while it lasts (it was one per round)."""
    bad = replace(SVC, name="bad", selector=None)
    ld, sink = leader([], [], None, services=[bad])
    for _ in range(3):
        assert ld.round() is False
    assert sink.events == [("bad", "Warning", "NoSelector")]


def test_the_garbage_collector_is_frozen_after_the_first_full_round_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A leader's informers hold tens of thousands of objects for the whole term: once the
    first round on synced informers has run, they are exempted from full collections (once);
    not while the informers are still listing, and not by leaders built for tests."""
    import time

    from agent.clock import Clock
    from agent.leader import reconcile
    from agent.leader.scope import LeaderScope

    frozen: list[int] = []

    def freeze() -> None:
        frozen.append(1)

    monkeypatch.setattr(reconcile, "_freeze_gc", freeze)
    lb = FakeLB({"h1": {POOL: {}}})
    ld, _ = leader([pod("a")], [slice_for({"a": "10.0.0.1"})], lb, synced=False)
    ld.freeze_gc, ld.clock, ld.fast_period_s = True, Clock(), 0.01
    scope = LeaderScope("a", Clock(), time.monotonic() + 60)
    thread = threading.Thread(target=ld.run, args=(scope,), daemon=True)
    thread.start()
    try:
        time.sleep(0.2)
        assert frozen == []  # the informers have not synced: no full round yet
        for cache in (ld.services, ld.slices, ld.pods):
            cache.synced.set()
        deadline = time.monotonic() + 5
        while ld._full_rounds < 3 and time.monotonic() < deadline:
            ld.poke()
            time.sleep(0.02)
        assert ld._full_rounds >= 3 and frozen == [1]
    finally:
        scope.stopped.set()
        thread.join(5)
    built, _ = leader([pod("a")], [slice_for({"a": "10.0.0.1"})], lb)
    assert built.freeze_gc is False


def test_a_pool_shown_by_the_very_same_servers_is_not_compared_field_by_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """10,000 servers a round: where the states, or their servers, are the very objects of last
    time (HAProxy's reader keeps unchanged servers), the view is not built to be compared."""
    from agent.leader import verdicts

    up = ObservedServer(A, "10.0.0.1", 8080, 100, AdminState.READY, Health.UP, None)
    one, again = PoolState(POOL, {A: up}), PoolState(POOL, {A: up})
    views: list[object] = []
    real = verdicts._view
    monkeypatch.setattr(verdicts, "_view", lambda st: views.append(st) or real(st))
    assert verdicts._same_view((one, None), (one, None)) and views == []
    assert verdicts._same_view((one,), (again,)) and views == []
    quieter = PoolState(POOL, {A: replace(up, sessions=0)})  # another object, the same view
    assert verdicts._same_view((one,), (quieter,)) and views == [one, quieter]
    down = PoolState(POOL, {A: replace(up, health=Health.DOWN)})
    assert not verdicts._same_view((one,), (down,))
    assert not verdicts._same_view((one,), (None,)) and not verdicts._same_view((one,), ())


def test_a_pools_verdicts_are_recomputed_only_when_what_they_read_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Remembered verdicts (agent.leader.verdicts): a round where nothing a verdict reads
    changed computes none, session counts alone change nothing, and a failing health check is
    seen at once."""
    from agent.leader import verdicts

    computed: list[str] = []
    real = verdicts.pool_verdicts

    def counting(spec: Any, states: Any, admitted: Any) -> Any:
        computed.append(spec.pool)
        return real(spec, states, admitted)

    monkeypatch.setattr(verdicts, "pool_verdicts", counting)
    lb = FakeLB({"h1": {POOL: {}}})
    ld, sink = leader([pod("a"), pod("b")], [slice_for({"a": "10.0.0.1", "b": "10.0.0.2"})], lb)
    for _ in range(3):  # added; seen UP; the pool's spec made again with what the LB has
        ld.round()
    assert reasons(ld, sink) == {"a": "Healthy", "b": "Healthy"}
    computed.clear()
    ld.round()
    assert computed == []  # nothing changed
    servers = lb.pools["h1"][POOL]
    servers[A] = replace(servers[A], sessions=7)
    ld.round()
    assert computed == [POOL]  # has sessions now (what a drain's verdict reads)
    computed.clear()
    servers[A] = replace(servers[A], sessions=9)
    ld.round()
    assert computed == []  # busier, not different
    servers[A] = replace(servers[A], health=Health.DOWN)
    ld.round()
    assert computed == [POOL]
    assert reasons(ld, sink) == {"a": "Unhealthy", "b": "Healthy"}
