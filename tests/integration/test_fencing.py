"""LB writes are fenced by the leadership term (issue 17, defect 1).

The real leader loop drives the real Tencent CLB provider through its SDK against the CLB double.
A term ends while a change is being retried or is in flight: no request of that term may reach
the LB after the end, and the Lease is released only once no request of the term can still land.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes import client

from agent.clock import Clock
from agent.kube.calls import Calls
from agent.kube.lease import LeaseStore
from agent.lb.base import Action, Op
from agent.lb.fence import Term, TermEnded, bound, fenced
from agent.lb.tencent_clb import TencentCLBProvider
from agent.leader.election import ElectionConfig, LeaderElector, LeaderScope
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
from tests.fakes import FakeStatusSink
from tests.testbed.clb import ClbDouble
from tests.testbed.kubeapi import KubeAPIServer
from tests.testbed.waiting import wait_for
from tests.unit.test_leader_reconcile import FakeCache

pytestmark = pytest.mark.timeout(60)

LB = "lb-podlb01"
NS = "shop"
REGISTER = "BatchRegisterTargets"


def leader(clb: ClbDouble, **provider_kw: Any) -> Leader:
    """A leader managing one CLB pool with one backend to register (10.0.0.1:8080)."""
    svc = Service(
        NS, "web", "s1", "LoadBalancer", (("app", "web"),), (ServicePort(80, "http", name="http"),),
        (("podlb.io/direct", "true"), ("podlb.io/lb-provider", "tencent-clb"),
         ("podlb.io/lb-id", LB)),
    )  # fmt: skip
    pod = Pod(
        NS, "a", "u-a", "n1", ("10.0.0.1",), "Running", labels=(("app", "web"),),
        conditions=(Condition("ContainersReady", "True"),), readiness_gates=(LB_READY,),
    )  # fmt: skip
    eps = EndpointSlice(
        NS, "web-x", "web", "IPv4", (SlicePort("http", 8080),),
        (Endpoint(("10.0.0.1",), True, True, False, "n1", PodKey(NS, "a")),),
    )  # fmt: skip
    opts: dict[str, Any] = {
        "secret_id": clb.secret_id, "secret_key": clb.secret_key, "region": clb.region,
        "endpoint": clb.endpoint, "timeout_s": 2.0, "backoff_s": 0.1, "retries": 8,
        "task_poll_s": 0.02,
    }  # fmt: skip
    opts.update(provider_kw)
    pods = FakeCache([pod])
    clock = Clock()
    return Leader(
        services=FakeCache([svc]), slices=FakeCache([eps]), pods=pods,
        providers={"tencent-clb": TencentCLBProvider(**opts)},
        reporter=ConditionReporter(
            LB_READY, FakeStatusSink(), lambda k: pods.get((k.namespace, k.name)), clock
        ),
        events=FakeStatusSink(), clock=clock, default_provider="tencent-clb",
        apply_executor=ThreadPoolExecutor(2, thread_name_prefix="lb-apply"),
        fast_period_s=0.1,
    )  # fmt: skip


@pytest.fixture
def clb() -> Iterator[ClbDouble]:
    with ClbDouble(health_fn=lambda ip, port: True, health_interval_s=0.05, rise=1) as d:
        d.add_lb(LB)
        d.add_listener(LB, "TCP", 80, listener_id="lbl-tcp80")
        yield d


def test_no_retry_of_an_ended_term_reaches_the_lb(clb: ClbDouble) -> None:
    """The registration is throttled and retried with backoff; the term ends meanwhile: the
    retries stop at once instead of landing after a successor may have taken over."""
    clb.fail_next(REGISTER, "RequestLimitExceeded", "too fast", times=1000)
    ld = leader(clb)
    scope = LeaderScope("a", Clock(), time.monotonic() + 300)
    thread = threading.Thread(target=ld.run, args=(scope,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: clb.actions().count(REGISTER) >= 2, 10, "registrations retried")
        ended = time.monotonic()
        scope._stop()  # the term ends (the elector's watchdog or a step-down does this)
        time.sleep(2.5)  # backoff 0.2, 0.4, 0.8 ...: unfenced retries would land now
        late = [c for c in clb.calls if c.action == REGISTER and c.at > ended + 0.05]
        assert late == [], f"{len(late)} registrations reached the LB after the term ended"
    finally:
        scope._stop()
        thread.join(10)
    assert not thread.is_alive()


@pytest.fixture
def api() -> Iterator[KubeAPIServer]:
    with KubeAPIServer(port=0) as server:
        admin = server.api_client()
        client.CoreV1Api(admin).create_namespace({"metadata": {"name": "podlb"}})
        admin.close()
        yield server


def lease_holder(api: KubeAPIServer) -> str:
    admin = api.api_client()
    try:
        lease = client.CoordinationV1Api(admin).read_namespaced_lease("podlb-leader", "podlb")
        return str(lease.spec.holder_identity or "")
    finally:
        admin.close()


@pytest.mark.parametrize(("held_s", "released"), [(7.0, True), (14.0, False)])
def test_the_lease_is_released_only_when_no_call_of_the_term_can_land(
    api: KubeAPIServer, clb: ClbDouble, held_s: float, released: bool
) -> None:
    """On shutdown a registration is still in flight (the LB answers after ``held_s``). The
    Lease may be released only after it has landed; when it cannot end within the stop
    timeout (10 s) the Lease is left to expire."""
    clb.slow(REGISTER, held_s)
    api_client = api.api_client()
    store = LeaseStore(api_client, Calls(), "podlb", "podlb-leader", timeout_s=1.0)
    config = ElectionConfig(lease_duration_s=3.0, renew_deadline_s=2.0, retry_period_s=0.2)
    elector = LeaderElector(store, "a", Clock(), config)
    ld = leader(clb, timeout_s=20.0)
    stop = threading.Event()
    thread = threading.Thread(target=elector.run, args=(stop, ld.run), daemon=True)
    thread.start()
    try:
        wait_for(lambda: clb.in_flight(REGISTER) == 1, 10, "a registration in flight")
        stop.set()  # SIGTERM
        while thread.is_alive() and lease_holder(api) == "a":
            time.sleep(0.02)
        given_up = time.monotonic()
        landed = [c.at for c in clb.calls if c.action == REGISTER]
        if released:
            assert lease_holder(api) == ""
            assert landed and landed[0] <= given_up, "the Lease was released before the call"
        thread.join(20)
        assert not thread.is_alive()
        if not released:
            assert lease_holder(api) == "a", "released while a call could still land"
    finally:
        stop.set()
        clb.slow(REGISTER, 0)
        thread.join(20)
        api_client.close()


# -- each provider: every request (each chunk, each retry) checks the term


class CountedTerm:
    """A term that holds for the first ``n`` requests only."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.term = Term(self._valid, "test")

    def _valid(self) -> bool:
        self.left -= 1
        return self.left >= 0


def test_clb_chunks_of_an_ended_term_are_not_sent(clb: ClbDouble) -> None:
    """600 registrations are two BatchRegisterTargets calls (500 a call): the term holds for
    the first call only (its task poll and the second chunk are refused)."""
    p = TencentCLBProvider(
        secret_id=clb.secret_id, secret_key=clb.secret_key, region=clb.region,
        endpoint=clb.endpoint, timeout_s=2.0, task_poll_s=0.02,
    )  # fmt: skip
    p.observe(clb.region, f"{LB}/TCP:80")  # listeners cached: the term counts writes only
    actions = [
        Action(Op.ADD, f"10.1.{i // 250}.{i % 250}_8080", f"10.1.{i // 250}.{i % 250}", 8080, 10)
        for i in range(600)
    ]
    counted = CountedTerm(1)
    with bound(counted.term), pytest.raises(TermEnded):
        p.apply(clb.region, f"{LB}/TCP:80", actions)
    assert clb.actions().count(REGISTER) == 1
    assert counted.term.in_flight == 0 and counted.term.unsettled is None


def test_blb_retries_of_an_ended_term_are_not_sent() -> None:
    from agent.lb.baidu_blb import BaiduBLBProvider
    from tests.testbed.blb import OP_CREATE_MEMBERS, OP_DESCRIBE_MEMBERS, BlbDouble

    with BlbDouble(health_interval_s=0.05) as double:
        blb = double.add_blb("lb-fence")
        group = double.add_ip_group(blb, health_check=None)
        double.fail_next(OP_CREATE_MEMBERS, 503, "ServiceUnavailable", "busy", times=5)
        p = BaiduBLBProvider(
            access_key_id=double.access_key_id, secret_access_key=double.secret_access_key,
            endpoint=double.endpoint, timeout_s=2.0, backoff_s=0.01,
        )  # fmt: skip
        counted = CountedTerm(2)  # the member list, then one create: its retry is refused
        with bound(counted.term), pytest.raises(TermEnded):
            p.apply("127.0.0.1", f"{blb}/{group}", [Action(Op.ADD, "10.9.0.1_80", "10.9.0.1", 80)])
        assert len(double.calls_of(OP_DESCRIBE_MEMBERS)) == 1
        assert len(double.calls_of(OP_CREATE_MEMBERS)) == 1
        assert counted.term.unsettled == f"BLB 127.0.0.1 {OP_CREATE_MEMBERS}"  # it got a 503


@pytest.mark.haproxy
def test_haproxy_phases_of_an_ended_term_are_not_sent() -> None:
    """An ADD is `add server`, then `enable health` + `enable server`: the term ends after the
    first exchange, so the server stays in maintenance (the next leader plans from that)."""
    from agent.lb.base import AdminState
    from agent.lb.haproxy import HAProxyProvider
    from tests.testbed.haproxy import HAProxy, supports_dynamic_servers

    if not supports_dynamic_servers():
        pytest.skip("needs haproxy >= 2.4 for dynamic servers")
    opts = "check inter 200ms fall 2 rise 1"
    with HAProxy(["be"], server_options=opts) as lb:
        p = HAProxyProvider([f"unix:{lb.socket_path}"], server_options=opts, timeout_s=2.0)
        (inst,) = p.instances()
        counted = CountedTerm(1)
        with bound(counted.term), pytest.raises(TermEnded):
            p.apply(inst, "be", [Action(Op.ADD, "s1", "10.255.0.1", 8080, 2)])
        state = p.observe(inst, "be")  # no term bound: not fenced
        assert state.servers["s1"].admin is AdminState.MAINT


# -- the term itself


def test_term_counts_calls_in_flight_and_settles_bounded() -> None:
    leading = [True]
    term = Term(lambda: leading[0], "t")
    entered, release = threading.Event(), threading.Event()

    def slow_call() -> None:
        with bound(term), fenced("slow"):
            entered.set()
            release.wait(5)

    worker = threading.Thread(target=slow_call, daemon=True)
    worker.start()
    entered.wait(5)
    assert term.in_flight == 1
    leading[0] = False
    with bound(term), pytest.raises(TermEnded), fenced("late"):
        raise AssertionError("sent after the term ended")
    t0 = time.monotonic()
    assert term.settle(0.2) is False  # still in flight: bounded wait, then "do not release"
    assert 0.15 < time.monotonic() - t0 < 1.0
    release.set()
    worker.join(5)
    assert term.settle(1.0) is True
    with fenced("no term bound"):  # observing, the CLI: not fenced
        pass


def test_a_call_that_failed_may_still_land() -> None:
    term = Term(lambda: True, "t")
    with bound(term), pytest.raises(OSError), fenced("lost answer"):
        raise OSError("timed out")
    assert term.unsettled == "lost answer"
    assert term.settle(0.1) is False
