"""The Tencent CLB provider through the real SDK against the local CLB double (no cloud)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from tencentcloud.clb.v20180317 import clb_client, models
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import (
    TencentCloudSDKException,
)
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile

from agent.clock import Clock
from agent.errors import TransientError
from agent.lb.base import (
    Action,
    AdminState,
    Health,
    LBAuthError,
    Op,
    PoolNotFound,
    PoolState,
)
from agent.lb.tencent_clb import TencentCLBProvider
from tests.testbed.clb import ClbDouble
from tests.testbed.waiting import wait_for

pytestmark = pytest.mark.timeout(30)

LB = "lb-podlb01"
T = TypeVar("T")


class RecordingClock(Clock):
    """Real sleeps (short in these tests), recorded; ``advance`` skews the monotonic clock."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        time.sleep(max(0.0, seconds))


def provider(d: ClbDouble, **kw: Any) -> TencentCLBProvider:
    opts: dict[str, Any] = {
        "secret_id": d.secret_id,
        "secret_key": d.secret_key,
        "region": d.region,
        "endpoint": d.endpoint,
        "timeout_s": 2.0,
        "backoff_s": 0.01,
        "task_poll_s": 0.02,
        "task_timeout_s": 5.0,
    }
    opts.update(kw)
    return TencentCLBProvider(**opts)


def settled(fn: Callable[[], T], ok: Callable[[T], bool], what: str, timeout: float = 5.0) -> T:
    """``fn()`` once ``ok`` holds for it (polled with the testbed's one ``wait_for``)."""

    def probe() -> tuple[T] | None:
        value = fn()
        return (value,) if ok(value) else None

    got: tuple[T] = wait_for(probe, timeout, what)
    return got[0]


def add(ip: str, port: int = 8080, weight: int = 10) -> Action:
    return Action(Op.ADD, f"{ip}_{port}", ip, port, weight)


def view(state: PoolState) -> dict[str, tuple[int, AdminState, Health]]:
    return {n: (s.weight, s.admin, s.health) for n, s in state.servers.items()}


def count(d: ClbDouble, action: str) -> int:
    return d.actions().count(action)


@pytest.fixture
def clb() -> Iterator[ClbDouble]:
    with ClbDouble(health_fn=lambda ip, port: True, health_interval_s=0.05, rise=1) as d:
        d.add_lb(LB)
        d.add_listener(LB, "TCP", 80, listener_id="lbl-tcp80")
        yield d


@pytest.fixture
def tcp_listeners() -> Iterator[list[tuple[str, int, socket.socket]]]:
    """Two listening sockets on 127.0.0.2 and 127.0.0.3 (closed after the test)."""
    socks = []
    try:
        for host in ("127.0.0.2", "127.0.0.3"):
            s = socket.socket()
            s.bind((host, 0))
            s.listen(16)
            socks.append((host, s.getsockname()[1], s))
        yield socks
    finally:
        for _, _, s in socks:
            s.close()


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# -- observe -----------------------------------------------------------------------------------
def test_observe_health_from_real_tcp_checks(
    tcp_listeners: list[tuple[str, int, socket.socket]],
) -> None:
    with ClbDouble(health_interval_s=0.05, rise=2, fall=2) as d:
        d.add_lb(LB)
        lid = d.add_listener(LB, "TCP", 80)
        (h1, p1, _), (h2, p2, s2) = tcp_listeners
        dead = ("127.0.0.4", free_port("127.0.0.4"))
        d.register(LB, lid, [(h1, p1, 10), (h2, p2, 10), (*dead, 10)])  # TKE's controller
        p = provider(d)
        (inst,) = p.instances()
        first = p.observe(inst, f"{LB}/TCP:80")
        assert set(first.servers) == {f"{h1}_{p1}", f"{h2}_{p2}", f"{dead[0]}_{dead[1]}"}
        assert {s.health for s in first.servers.values()} <= {Health.CHECKING, Health.UP}
        assert all(s.sessions is None for s in first.servers.values())
        state = settled(
            lambda: p.observe(inst, f"{LB}/{lid}"),
            lambda st: all(s.health is not Health.CHECKING for s in st.servers.values()),
            "verdicts",
        )
        assert view(state) == {
            f"{h1}_{p1}": (10, AdminState.READY, Health.UP),
            f"{h2}_{p2}": (10, AdminState.READY, Health.UP),
            f"{dead[0]}_{dead[1]}": (10, AdminState.READY, Health.DOWN),
        }
        s2.close()  # the pod stops listening: the CLB's checks fail
        settled(
            lambda: p.observe(inst, f"{LB}/{lid}").servers[f"{h2}_{p2}"].health,
            lambda h: h is Health.DOWN,
            "down",
        )


def test_observe_pools_batches_per_lb_and_leaves_out_missing(clb: ClbDouble) -> None:
    clb.add_listener(LB, "UDP", 53, listener_id="lbl-udp53", health_check=False)
    http = clb.add_listener(LB, "HTTP", 8080)
    loc = clb.add_rule(LB, http, "app.example.com", "/")
    clb.add_lb("lb-other")
    clb.add_listener("lb-other", "TCP", 443, listener_id="lbl-o443")
    clb.register(LB, "lbl-tcp80", [("10.0.0.1", 80, 10)])
    clb.register(LB, "lbl-udp53", [("10.0.0.2", 53, 0)])
    clb.register(LB, http, [("10.0.0.3", 8080, 7)], location_id=loc)
    clb.register("lb-other", "lbl-o443", [("10.0.0.4", 443, 1)])
    clb.add_instance("ins-cvm1", "10.9.9.9")
    p = provider(clb)
    assert p.apply(clb.region, f"{LB}/TCP:80", [Action(Op.ADD, "ins-cvm1_80", weight=5)]).done == 1
    settled(
        lambda: p.observe(clb.region, f"{LB}/TCP:80"),
        lambda st: all(s.health is Health.UP for s in st.servers.values()),
        "checked",
    )
    calls_before = len(clb.calls)
    pools = [
        f"{LB}/TCP:80",
        f"{LB}/lbl-udp53",
        f"{LB}/HTTP:8080/{loc}",
        "lb-other/TCP:443",
        f"{LB}/TCP:81",  # no such listener
        "lb-gone/TCP:80",  # no such LB
        "garbage",
    ]
    states = p.observe_pools(clb.region, pools)
    assert set(states) == set(pools[:4])
    assert view(states[f"{LB}/TCP:80"]) == {
        "10.0.0.1_80": (10, AdminState.READY, Health.UP),
        "ins-cvm1_80": (5, AdminState.READY, Health.UP),  # a CVM: the leader leaves it alone
    }
    assert states[f"{LB}/TCP:80"].servers["ins-cvm1_80"].address == "10.9.9.9"
    assert view(states[f"{LB}/lbl-udp53"]) == {"10.0.0.2_53": (0, AdminState.DRAIN, Health.UP)}
    assert set(states[f"{LB}/HTTP:8080/{loc}"].servers) == {"10.0.0.3_8080"}
    assert set(states["lb-other/TCP:443"].servers) == {"10.0.0.4_443"}
    made = [c.action for c in clb.calls[calls_before:]]
    # One DescribeTargets and one DescribeTargetHealth per LB; listeners from the cache, but
    # the missing listener and the unknown LB ask DescribeListeners again.
    assert made.count("DescribeTargets") == 2
    assert made.count("DescribeTargetHealth") == 2
    assert made.count("DescribeListeners") == 3


# -- manage ------------------------------------------------------------------------------------
def test_manage_round_trip(clb: ClbDouble) -> None:
    changes: list[tuple[str, str, str | None, list[tuple[str, int, int]]]] = []
    clb.on_change = lambda lb, lid, loc, targets: changes.append((lb, lid, loc, targets))
    outcomes: list[tuple[str, str]] = []
    p = provider(clb, on_call=lambda a, o: outcomes.append((a, o)))
    pool = f"{LB}/TCP:80"
    r = p.apply(clb.region, pool, [add("10.0.0.1", weight=30), add("10.0.0.2", weight=30)])
    assert (r.done, r.failed) == (2, ())
    listed = settled(
        lambda: p.observe(clb.region, pool),
        lambda st: all(s.health is Health.UP for s in st.servers.values()),
        "up",
    )
    assert view(listed) == {
        "10.0.0.1_8080": (30, AdminState.READY, Health.UP),
        "10.0.0.2_8080": (30, AdminState.READY, Health.UP),
    }
    steps: list[tuple[Action, tuple[int, AdminState]]] = [
        (Action(Op.SET_WEIGHT, "10.0.0.1_8080", weight=70), (70, AdminState.READY)),
        (Action(Op.DRAIN, "10.0.0.1_8080"), (0, AdminState.DRAIN)),
        (Action(Op.ENABLE, "10.0.0.1_8080", weight=20), (20, AdminState.READY)),
        (Action(Op.DRAIN, "10.0.0.1_8080"), (0, AdminState.DRAIN)),
    ]
    for action, (weight, admin) in steps:
        assert p.apply(clb.region, pool, [action]).done == 1
        srv = p.observe(clb.region, pool).servers["10.0.0.1_8080"]
        assert (srv.weight, srv.admin) == (weight, admin), action
    assert p.apply(clb.region, pool, [Action(Op.REMOVE, "10.0.0.1_8080")]).done == 1
    assert set(p.observe(clb.region, pool).servers) == {"10.0.0.2_8080"}
    assert clb.targets(LB, "lbl-tcp80") == [("10.0.0.2", 8080, 30)]
    assert changes[0] == (LB, "lbl-tcp80", None, [("10.0.0.1", 8080, 30), ("10.0.0.2", 8080, 30)])
    assert changes[-1] == (LB, "lbl-tcp80", None, [("10.0.0.2", 8080, 30)])
    assert {o for _, o in outcomes} == {"ok"}
    assert {a for a, _ in outcomes} >= {
        "BatchRegisterTargets",
        "BatchModifyTargetWeight",
        "BatchDeregisterTargets",
        "DescribeTaskStatus",
    }


def test_layer7_rule_pool(clb: ClbDouble) -> None:
    http = clb.add_listener(LB, "HTTPS", 443)
    loc_a = clb.add_rule(LB, http, "a.example.com", "/")
    loc_b = clb.add_rule(LB, http, "b.example.com", "/api")
    p = provider(clb)
    assert p.apply(clb.region, f"{LB}/{http}/{loc_b}", [add("10.0.1.1")]).done == 1
    assert clb.targets(LB, http, loc_b) == [("10.0.1.1", 8080, 10)]
    assert clb.targets(LB, http, loc_a) == []
    assert set(p.observe(clb.region, f"{LB}/HTTPS:443/{loc_b}").servers) == {"10.0.1.1_8080"}


def test_chunking_to_the_documented_limits(clb: ClbDouble) -> None:
    clb.add_listener(LB, "TCP", 9000, listener_id="lbl-big", health_check=False)
    p = provider(clb)
    pool = f"{LB}/lbl-big"
    ips = [f"10.2.{i // 250}.{i % 250 + 1}" for i in range(1001)]
    r = p.apply(clb.region, pool, [add(ip, 80) for ip in ips])
    assert (r.done, r.failed) == (1001, ())
    reg = [c for c in clb.calls if c.action == "BatchRegisterTargets"]
    assert [len(c.params["Targets"]) for c in reg] == [500, 500, 1]
    assert len(p.observe(clb.region, pool).servers) == 1001

    r = p.apply(clb.region, pool, [Action(Op.SET_WEIGHT, f"{ip}_80", weight=3) for ip in ips[:501]])
    assert r.done == 501
    mod = [c for c in clb.calls if c.action == "BatchModifyTargetWeight"]
    assert [[len(rule["Targets"]) for rule in c.params["ModifyList"]] for c in mod] == [
        [50] * 10,
        [1],
    ]
    r = p.apply(clb.region, pool, [Action(Op.REMOVE, f"{ip}_80") for ip in ips])
    assert r.done == 1001
    assert count(clb, "BatchDeregisterTargets") == 3
    assert p.observe(clb.region, pool).servers == {}


# -- throttling and busy LBs -----------------------------------------------------------------
def test_throttled_calls_are_retried(clb: ClbDouble) -> None:
    outcomes: list[tuple[str, str]] = []
    clock = RecordingClock()
    p = provider(clb, clock=clock, on_call=lambda a, o: outcomes.append((a, o)))
    clb.fail_next("DescribeTargets", "RequestLimitExceeded", "too fast", times=2)
    assert p.observe(clb.region, f"{LB}/TCP:80").servers == {}
    assert [o for a, o in outcomes if a == "DescribeTargets"] == ["throttled", "throttled", "ok"]
    assert clock.sleeps == [0.01, 0.02]


def test_real_rate_limit_is_waited_out() -> None:
    # One DescribeTargets a (calendar) second: three observes started together, just after a
    # second began, cannot all have their own second, so at least one is refused and then
    # retried into the next one. (Three in a row could: on a loaded machine an observe took
    # over half a second, and the three fell into three seconds.)
    with ClbDouble(rate_limit_per_s=1, health_fn=lambda ip, port: True) as d:
        d.add_lb(LB)
        d.add_listener(LB, "TCP", 80)
        p = provider(d, backoff_s=0.2)
        p.observe(d.region, f"{LB}/TCP:80")  # listeners cached; the SDK warmed up
        time.sleep(1.05 - time.monotonic() % 1)  # the double counts monotonic seconds
        d.calls.clear()
        with ThreadPoolExecutor(3) as pool:
            seen = list(pool.map(lambda _: p.observe(d.region, f"{LB}/TCP:80"), range(3)))
        assert [s.servers for s in seen] == [{}, {}, {}]
        codes = [c.code for c in d.calls if c.action == "DescribeTargets"]
        assert codes.count("ok") == 3
        assert "RequestLimitExceeded" in codes


def test_throttled_forever_gives_transient_error_in_bounded_time(clb: ClbDouble) -> None:
    clock = RecordingClock()
    p = provider(clb, clock=clock, retries=4, backoff_s=0.02)
    p.observe(clb.region, f"{LB}/TCP:80")  # listeners cached
    clb.fail_next("DescribeTargets", "RequestLimitExceeded", "too fast", times=100)
    t0 = time.monotonic()
    with pytest.raises(TransientError, match="DescribeTargets failed after 5 attempts"):
        p.observe(clb.region, f"{LB}/TCP:80")
    assert time.monotonic() - t0 < 2.0
    assert clock.sleeps == [0.02, 0.04, 0.08, 0.16]
    assert [c.code for c in clb.calls if c.action == "DescribeTargets"][1:] == [
        "RequestLimitExceeded"
    ] * 5


def test_busy_lb_is_retried() -> None:
    """TKE's controller runs a task on the LB: writes get ResourceInOperating until it ends."""
    with ClbDouble(task_delay_s=0.3, health_fn=lambda ip, port: True) as d:
        d.add_lb(LB)
        lid = d.add_listener(LB, "TCP", 80)
        outcomes: list[tuple[str, str]] = []
        p = provider(d, backoff_s=0.1, on_call=lambda a, o: outcomes.append((a, o)))
        p.observe(d.region, f"{LB}/TCP:80")
        d.register(LB, lid, [("10.0.0.9", 8080, 10)])
        r = p.apply(d.region, f"{LB}/TCP:80", [add("10.0.0.1")])
        assert (r.done, r.failed) == (1, ())
        assert ("BatchRegisterTargets", "throttled") in outcomes
        assert "FailedOperation.ResourceInOperating" in [c.code for c in d.calls]
        assert d.targets(LB, lid) == [("10.0.0.1", 8080, 10), ("10.0.0.9", 8080, 10)]


# -- async tasks and eventual consistency --------------------------------------------------------
def test_apply_waits_for_the_task() -> None:
    with ClbDouble(task_delay_s=0.3, health_fn=lambda ip, port: True) as d:
        d.add_lb(LB)
        lid = d.add_listener(LB, "TCP", 80)
        p = provider(d)
        t0 = time.monotonic()
        assert p.apply(d.region, f"{LB}/{lid}", [add("10.0.0.1")]).done == 1
        assert time.monotonic() - t0 >= 0.3
        assert d.targets(LB, lid) == [("10.0.0.1", 8080, 10)]
        statuses = [c for c in d.calls if c.action == "DescribeTaskStatus"]
        assert len(statuses) >= 2  # running, then done

        d.fail_next_task("backend ENI detached")
        r = p.apply(d.region, f"{LB}/{lid}", [add("10.0.0.2")])
        assert r.done == 0
        assert r.failed[0][1] == "task: failed: backend ENI detached"

        slow = provider(d, task_timeout_s=0.1)
        d.task_delay_s = 1.0
        r = slow.apply(d.region, f"{LB}/{lid}", [add("10.0.0.3")])
        assert r.done == 0 and r.failed[0][1].startswith("task: timeout: task ")


def test_describe_lag_and_idempotent_repeats() -> None:
    with ClbDouble(describe_lag_s=0.5, health_fn=lambda ip, port: True) as d:
        d.add_lb(LB)
        lid = d.add_listener(LB, "TCP", 80)
        p = provider(d)
        pool = f"{LB}/{lid}"
        assert p.apply(d.region, pool, [add("10.0.0.1")]).done == 1
        assert p.observe(d.region, pool).servers == {}  # registered, not yet listed
        # The leader sees no target and adds it again, with a new one: both count as done.
        r = p.apply(d.region, pool, [add("10.0.0.1"), add("10.0.0.2")])
        assert (r.done, r.failed) == (2, ())
        assert d.targets(LB, lid) == [("10.0.0.1", 8080, 10), ("10.0.0.2", 8080, 10)]
        settled(lambda: p.observe(d.region, pool).servers, lambda s: len(s) == 2, "listed")
        # Deregistering a target that is not there is done too.
        r = p.apply(d.region, pool, [Action(Op.REMOVE, "10.0.0.7_8080")])
        assert (r.done, r.failed) == (1, ())
        # A weight change for a target that is not there is a failure.
        r = p.apply(d.region, pool, [Action(Op.SET_WEIGHT, "10.0.0.7_8080", weight=5)])
        assert r.done == 0 and "not bound" in r.failed[0][1]


# -- auth --------------------------------------------------------------------------------------
def test_wrong_secret_is_an_auth_error_without_a_retry_storm(clb: ClbDouble) -> None:
    clock = RecordingClock()
    outcomes: list[tuple[str, str]] = []
    p = provider(
        clb,
        secret_key="not-the-key",
        clock=clock,
        on_call=lambda a, o: outcomes.append((a, o)),
    )
    with pytest.raises(LBAuthError) as first:
        p.observe(clb.region, f"{LB}/TCP:80")
    msg = str(first.value)
    assert "AuthFailure.SignatureFailure" in msg and "PODLB_TENCENT_SECRET_KEY" in msg
    assert len(clb.calls) == 1 and outcomes == [("DescribeListeners", "auth")]
    with pytest.raises(LBAuthError) as again:
        p.apply(clb.region, f"{LB}/TCP:80", [add("10.0.0.1")])
    assert str(again.value) == msg
    assert len(clb.calls) == 1  # refused locally
    clock.advance(61)  # auth_backoff_s later it asks again
    with pytest.raises(LBAuthError):
        p.observe(clb.region, f"{LB}/TCP:80")
    assert len(clb.calls) == 2

    unknown = provider(clb, secret_id="AKIDunknown")
    with pytest.raises(LBAuthError, match=r"AuthFailure\.SecretIdNotFound"):
        unknown.observe(clb.region, f"{LB}/TCP:80")


def test_missing_permission_names_the_action(clb: ClbDouble) -> None:
    clb.deny("BatchRegisterTargets")
    p = provider(clb)
    pool = f"{LB}/TCP:80"
    with pytest.raises(LBAuthError, match="lacks clb:BatchRegisterTargets"):
        p.apply(clb.region, pool, [add("10.0.0.1")])
    n = len(clb.calls)
    with pytest.raises(LBAuthError, match="lacks clb:BatchRegisterTargets"):
        p.apply(clb.region, pool, [add("10.0.0.1")])
    assert count(clb, "BatchRegisterTargets") == 1
    # Reading still works (observe mode needs only Describe* permissions).
    assert p.observe(clb.region, pool).servers == {}
    assert len(clb.calls) == n + 2


# -- quota and pools -----------------------------------------------------------------------------
def test_quota_fails_the_actions_with_the_clouds_message() -> None:
    with ClbDouble(max_targets_per_listener=2, health_fn=lambda ip, port: True) as d:
        d.add_lb(LB)
        d.add_listener(LB, "TCP", 80)
        outcomes: list[tuple[str, str]] = []
        p = provider(d, on_call=lambda a, o: outcomes.append((a, o)))
        r = p.apply(d.region, f"{LB}/TCP:80", [add(f"10.0.0.{i}") for i in (1, 2, 3)])
        assert r.done == 0 and len(r.failed) == 3
        assert all(
            why.startswith("quota: BatchRegisterTargets: LimitExceeded: The number of backends")
            for _, why in r.failed
        )
        assert ("BatchRegisterTargets", "quota") in outcomes
        assert count(d, "BatchRegisterTargets") == 1  # not retried
        r = p.apply(d.region, f"{LB}/TCP:80", [add(f"10.0.0.{i}") for i in (1, 2)])
        assert (r.done, r.failed) == (2, ())


@pytest.mark.parametrize(
    "pool",
    ["lb-podlb01", "lb-podlb01/http:80", "lb-podlb01/TCP:80/x", "tcp80", "lb-podlb01/TCP:99999"],
)
def test_malformed_pool_makes_no_call(clb: ClbDouble, pool: str) -> None:
    p = provider(clb)
    with pytest.raises(PoolNotFound, match="CLB pool"):
        p.observe(clb.region, pool)
    with pytest.raises(PoolNotFound, match="CLB pool"):
        p.apply(clb.region, pool, [add("10.0.0.1")])
    assert clb.calls == []


@pytest.mark.parametrize(
    ("pool", "says"),
    [
        (f"{LB}/TCP:81", "no such listener"),
        (f"{LB}/lbl-nothere", "no such listener"),
        ("lb-nothere/TCP:80", "LBIdNotFound"),
        (f"{LB}/HTTP:8080", "needs a location ID"),
        (f"{LB}/HTTP:8080/loc-nothere", "has no rule"),
    ],
)
def test_unknown_pool(clb: ClbDouble, pool: str, says: str) -> None:
    http = clb.add_listener(LB, "HTTP", 8080)
    clb.add_rule(LB, http, "x.example.com", "/")
    p = provider(clb)
    with pytest.raises(PoolNotFound, match=says):
        p.observe(clb.region, pool)
    with pytest.raises(PoolNotFound, match=says):
        p.apply(clb.region, pool, [add("10.0.0.1")])
    assert count(clb, "BatchRegisterTargets") == 0


def test_listener_deleted_after_caching(clb: ClbDouble) -> None:
    p = provider(clb)
    assert p.observe(clb.region, f"{LB}/TCP:80").servers == {}
    with clb._lock:  # the listener is deleted in the console
        del clb._lbs[LB]["lbl-tcp80"]
    with pytest.raises(PoolNotFound):
        p.apply(clb.region, f"{LB}/TCP:80", [add("10.0.0.1")])
    with pytest.raises(PoolNotFound):
        p.observe(clb.region, f"{LB}/TCP:80")


# -- concurrency -------------------------------------------------------------------------------
def test_concurrent_apply_from_two_threads() -> None:
    with ClbDouble(task_delay_s=0.05, health_fn=lambda ip, port: True) as d:
        d.add_lb(LB)
        lid = d.add_listener(LB, "TCP", 80)
        p = provider(d)
        results: dict[int, Any] = {}

        def run(n: int) -> None:
            actions = [add(f"10.{n}.0.{i}") for i in range(1, 6)]
            for a in actions:  # one call each: the two threads interleave
                results.setdefault(n, []).append(p.apply(d.region, f"{LB}/TCP:80", [a]))

        threads = [threading.Thread(target=run, args=(n,)) for n in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        assert all(r.done == 1 and r.failed == () for n in (1, 2) for r in results[n])
        assert len(d.targets(LB, lid)) == 10
        assert "FailedOperation.ResourceInOperating" not in [c.code for c in d.calls]


# -- the double itself -------------------------------------------------------------------------
def test_double_checks_parameters_and_signatures(clb: ClbDouble) -> None:
    http = HttpProfile(protocol="http", endpoint=clb.endpoint.removeprefix("http://"))
    client = clb_client.ClbClient(
        credential.Credential(clb.secret_id, clb.secret_key),
        clb.region,
        ClientProfile(httpProfile=http),
    )
    with pytest.raises(TencentCloudSDKException) as e:
        client.DescribeTargets(models.DescribeTargetsRequest())
    assert e.value.code == "MissingParameter"
    req = models.BatchRegisterTargetsRequest()
    req.from_json_string(
        json.dumps({"LoadBalancerId": LB, "Targets": [{"ListenerId": "lbl-tcp80", "Port": 80}]})
    )
    with pytest.raises(TencentCloudSDKException) as e:
        client.BatchRegisterTargets(req)
    assert e.value.code == "InvalidParameter" and "InstanceId and EniIp" in str(e.value.message)

    raw = urllib.request.Request(
        clb.endpoint,
        data=b'{"LoadBalancerId": "lb-podlb01"}',
        headers={"Content-Type": "application/json", "X-TC-Action": "DescribeTargets"},
    )
    with urllib.request.urlopen(raw, timeout=5) as resp:
        answer = json.loads(resp.read())
    assert answer["Response"]["Error"]["Code"] == "AuthFailure.InvalidAuthorization"
