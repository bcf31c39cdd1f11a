"""The Baidu BLB provider through the real bce-python-sdk against the local BLB double."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from agent.clock import Clock, FakeClock
from agent.errors import TransientError
from agent.lb.baidu_blb import BaiduBLBProvider
from agent.lb.base import Action, AdminState, Health, LBAuthError, Op, PoolNotFound, PoolState
from tests.testbed.blb import (
    OP_CREATE_MEMBERS,
    OP_DESCRIBE_MEMBERS,
    OP_DESCRIBE_POLICYS,
    BlbDouble,
    authorization,
)
from tests.testbed.waiting import wait_for

pytestmark = pytest.mark.timeout(30)


class InstantClock(Clock):
    """Sleeps are recorded, not slept (retries and backoffs in bounded, measurable time)."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def provider(
    double: BlbDouble,
    *,
    secret: str | None = None,
    clock: Clock | None = None,
    calls: list[tuple[str, str]] | None = None,
    backoff_s: float = 0.01,
    **kw: object,
) -> BaiduBLBProvider:
    return BaiduBLBProvider(
        access_key_id=double.access_key_id,
        secret_access_key=secret or double.secret_access_key,
        endpoint=double.endpoint,
        timeout_s=2.0,
        backoff_s=backoff_s,
        clock=clock,
        on_call=(lambda op, outcome: calls.append((op, outcome))) if calls is not None else None,
        **kw,  # type: ignore[arg-type]
    )


def add(ip: str, port: int = 80, weight: int = 10) -> Action:
    return Action(Op.ADD, f"{ip}_{port}", ip, port, weight)


@pytest.fixture
def double() -> Iterator[BlbDouble]:
    with BlbDouble(health_interval_s=0.05) as d:
        yield d


@pytest.fixture
def listeners() -> Iterator[list[tuple[str, int]]]:
    """Real TCP listeners on 127.0.0.2 and 127.0.0.3 (loopback: bound to this test only)."""
    socks = []
    addrs = []
    for ip in ("127.0.0.2", "127.0.0.3"):
        s = socket.create_server((ip, 0))
        socks.append(s)
        addrs.append((ip, s.getsockname()[1]))
    try:
        yield addrs
    finally:
        for s in socks:
            s.close()


# -- observe ---------------------------------------------------------------------------------
def test_observe_reports_real_tcp_health_of_members_the_controller_registered(
    double: BlbDouble, listeners: list[tuple[str, int]]
) -> None:
    blb = double.add_blb("lb-obs")
    group = double.add_ip_group(blb)
    (ip1, p1), (ip2, p2) = listeners
    closed = socket.create_server(("127.0.0.4", 0))
    dead_port = closed.getsockname()[1]
    closed.close()  # nothing listens there any more: refused
    double.add_members(blb, group, [(ip1, p1, 10), (ip2, p2, 0), ("127.0.0.4", dead_port, 10)])
    p = provider(double)
    (inst,) = p.instances()
    assert inst == "127.0.0.1"

    def settled() -> PoolState | None:
        state = p.observe(inst, f"{blb}/{group}")
        return (
            state if all(s.health is not Health.CHECKING for s in state.servers.values()) else None
        )

    state = wait_for(settled, 5, "checked")
    got = {n: (s.weight, s.admin, s.health, s.sessions) for n, s in state.servers.items()}
    assert got == {
        f"{ip1}_{p1}": (10, AdminState.READY, Health.UP, None),
        f"{ip2}_{p2}": (0, AdminState.DRAIN, Health.UP, None),
        f"127.0.0.4_{dead_port}": (10, AdminState.READY, Health.DOWN, None),
    }


def test_a_listener_that_goes_away_turns_down(double: BlbDouble) -> None:
    blb = double.add_blb("lb-down")
    group = double.add_ip_group(blb)
    srv = socket.create_server(("127.0.0.5", 0))
    port = srv.getsockname()[1]
    double.add_members(blb, group, [("127.0.0.5", port, 10)])
    p = provider(double)
    (inst,) = p.instances()
    name = f"127.0.0.5_{port}"
    health = lambda: p.observe(inst, f"{blb}/{group}").servers[name].health  # noqa: E731
    wait_for(lambda: health() is Health.UP, 5, "up")
    srv.close()
    wait_for(lambda: health() is Health.DOWN, 5, "down")


def test_no_health_check_means_up_and_unknown_status_means_checking(double: BlbDouble) -> None:
    blb = double.add_blb("lb-hc")
    unchecked = double.add_ip_group(blb, health_check=None)
    double.add_members(blb, unchecked, [("10.1.0.1", 80, 5)])
    p = provider(double)
    (inst,) = p.instances()
    assert p.observe(inst, f"{blb}/{unchecked}").servers["10.1.0.1_80"].health is Health.UP
    with BlbDouble(health_fn=lambda ip, port: None) as undecided:
        blb2 = undecided.add_blb("lb-hc2")
        g2 = undecided.add_ip_group(blb2)
        undecided.add_members(blb2, g2, [("10.1.0.2", 80, 5)])
        time.sleep(0.3)  # several check rounds: still no verdict
        p2 = provider(undecided)
        s = p2.observe("127.0.0.1", f"{blb2}/{g2}").servers["10.1.0.2_80"]
        assert s.health is Health.CHECKING


def test_observe_paginates_with_the_marker(double: BlbDouble) -> None:
    double.max_keys_limit = 10
    blb = double.add_blb("lb-page")
    group = double.add_ip_group(blb, health_check=None)
    double.add_members(blb, group, [(f"10.2.0.{i}", 80, 1) for i in range(1, 26)])
    p = provider(double)
    state = p.observe("127.0.0.1", f"{blb}/{group}")
    assert set(state.servers) == {f"10.2.0.{i}_80" for i in range(1, 26)}
    assert len(double.calls_of(OP_DESCRIBE_MEMBERS)) == 3


def test_observe_pools_reads_each_ip_group_once_and_leaves_unknown_pools_out(
    double: BlbDouble,
) -> None:
    blb = double.add_blb("lb-many")
    g1 = double.add_ip_group(blb, health_check=None)
    g2 = double.add_ip_group(blb, health_check=None)
    double.add_listener(blb, "TCP", 80, g1)
    double.add_members(blb, g1, [("10.3.0.1", 80, 1)])
    double.add_members(blb, g2, [("10.3.0.2", 80, 1)])
    p = provider(double)
    pools = [f"{blb}/{g1}", f"{blb}/TCP:80", f"{blb}/{g2}", f"{blb}/ip_group-nope", "junk"]
    states = p.observe_pools("127.0.0.1", pools)
    assert set(states) == {f"{blb}/{g1}", f"{blb}/TCP:80", f"{blb}/{g2}"}
    assert states[f"{blb}/TCP:80"].servers == states[f"{blb}/{g1}"].servers
    assert set(states[f"{blb}/{g2}"].servers) == {"10.3.0.2_80"}
    reads = [c for c in double.calls_of(OP_DESCRIBE_MEMBERS) if c.status == 200]
    assert len(reads) == 2  # g1 once for two pool names, g2 once


def test_listener_pool_resolution_is_cached(double: BlbDouble) -> None:
    blb = double.add_blb("lb-l")
    group = double.add_ip_group(blb, health_check=None)
    double.add_listener(blb, "HTTP", 8080, group)
    p = provider(double)
    for _ in range(3):
        p.observe("127.0.0.1", f"{blb}/HTTP:8080")
    assert len(double.calls_of(OP_DESCRIBE_POLICYS)) == 1


@pytest.mark.parametrize(
    ("pool", "says"),
    [
        ("lb-missing/ip_group-1", "no IP group 'ip_group-1' on 'lb-missing'"),
        ("lb-pnf/ip_group-nope", "no IP group 'ip_group-nope'"),
        ("lb-pnf/TCP:9999", "no listener TCP:9999"),
        ("lb-pnf", "expected <blb-id>/<ip-group-id>"),
        ("lb-pnf/TCP:99999", "out of 1..65535"),
    ],
)
def test_unknown_or_malformed_pool_is_pool_not_found(
    double: BlbDouble, pool: str, says: str
) -> None:
    double.add_blb("lb-pnf")
    p = provider(double)
    with pytest.raises(PoolNotFound) as err:
        p.observe("127.0.0.1", pool)
    assert says in str(err.value)
    with pytest.raises(PoolNotFound):
        p.apply("127.0.0.1", pool, [add("10.0.0.1")])


# -- manage ----------------------------------------------------------------------------------
def test_manage_round_trip_add_weight_drain_remove() -> None:
    changes: list[list[tuple[str, int, int]]] = []
    with BlbDouble(apply_delay_s=0.15, on_change=lambda b, g, m: changes.append(m)) as double:
        blb = double.add_blb("lb-rt")
        group = double.add_ip_group(blb, health_check=None)
        double.add_listener(blb, "TCP", 80, group)
        pool = f"{blb}/TCP:80"
        p = provider(double)
        (inst,) = p.instances()

        def servers() -> dict[str, tuple[int, AdminState]]:
            return {n: (s.weight, s.admin) for n, s in p.observe(inst, pool).servers.items()}

        r = p.apply(inst, pool, [add("10.4.0.1", weight=20), add("10.4.0.2", weight=20)])
        assert (r.done, r.failed) == (2, ())
        assert servers() == {}  # the BLB applies asynchronously
        listed = {"10.4.0.1_80": (20, AdminState.READY), "10.4.0.2_80": (20, AdminState.READY)}
        wait_for(lambda: servers() == listed, 5, "listed")

        r = p.apply(inst, pool, [Action(Op.SET_WEIGHT, "10.4.0.1_80", weight=70)])
        assert (r.done, r.failed) == (1, ())
        wait_for(lambda: servers()["10.4.0.1_80"] == (70, AdminState.READY), 5, "weight")

        r = p.apply(inst, pool, [Action(Op.DRAIN, "10.4.0.2_80")])
        assert (r.done, r.failed) == (1, ())
        wait_for(lambda: servers()["10.4.0.2_80"] == (0, AdminState.DRAIN), 5, "drained")

        r = p.apply(inst, pool, [Action(Op.REMOVE, "10.4.0.2_80")])
        assert (r.done, r.failed) == (1, ())
        wait_for(lambda: set(servers()) == {"10.4.0.1_80"}, 5, "removed")
        r = p.apply(inst, pool, [Action(Op.REMOVE, "10.4.0.2_80")])  # gone: done, no call
        assert (r.done, r.failed) == (1, ())
    assert changes[-1] == [("10.4.0.1", 80, 70)]


def test_re_add_during_the_apply_delay_is_idempotent() -> None:
    with BlbDouble(apply_delay_s=0.3) as double:
        blb = double.add_blb("lb-idem")
        group = double.add_ip_group(blb, health_check=None)
        pool = f"{blb}/{group}"
        p = provider(double)
        assert p.apply("127.0.0.1", pool, [add("10.5.0.1")]).done == 1
        # the same provider remembers the pending add: no second create
        assert p.apply("127.0.0.1", pool, [add("10.5.0.1")]).done == 1
        assert len(double.calls_of(OP_CREATE_MEMBERS)) == 1
        # a new leader does not: the BLB answers "already exists", which counts as done
        fresh = provider(double)
        r = fresh.apply("127.0.0.1", pool, [add("10.5.0.1")])
        assert (r.done, r.failed) == (1, ())
        assert [c.code for c in double.calls_of(OP_CREATE_MEMBERS)] == ["", "MemberAlreadyExists"]
        # a pending member cannot be drained yet: reported, to be retried
        r = p.apply("127.0.0.1", pool, [Action(Op.DRAIN, "10.5.0.1_80")])
        assert r.failed and r.failed[0][1].startswith("pending:")
        wait_for(lambda: len(double.members(blb, group)) == 1, 5, "listed")
        assert p.apply("127.0.0.1", pool, [Action(Op.DRAIN, "10.5.0.1_80")]).done == 1


def test_the_51st_add_is_refused_before_any_call(double: BlbDouble) -> None:
    blb = double.add_blb("lb-cap")
    group = double.add_ip_group(blb, health_check=None)
    double.add_members(blb, group, [(f"10.6.0.{i}", 80, 1) for i in range(1, 50)])
    p = provider(double)
    r = p.apply("127.0.0.1", f"{blb}/{group}", [add("10.6.1.1"), add("10.6.1.2")])
    assert r.done == 1
    ((action, why),) = r.failed
    assert action.server == "10.6.1.2_80"
    assert "max_backends=50" in why and "not sent to the BLB" in why
    (create,) = double.calls_of(OP_CREATE_MEMBERS)  # only the 50th went out
    assert create.status == 200
    assert len(double.members(blb, group)) == 50


def test_the_blbs_own_quota_error_fails_only_the_actions_beyond_it(double: BlbDouble) -> None:
    double.member_quota = 3
    blb = double.add_blb("lb-quota")
    group = double.add_ip_group(blb, health_check=None)
    p = provider(double, max_backends=None)
    r = p.apply("127.0.0.1", f"{blb}/{group}", [add(f"10.7.0.{i}") for i in range(1, 5)])
    assert r.done == 3
    ((action, why),) = r.failed
    assert action.server == "10.7.0.4_80" and why.startswith("quota: QuotaExceeded")
    # one batch refused, then one by one
    assert [c.code for c in double.calls_of(OP_CREATE_MEMBERS)] == [
        "QuotaExceeded",
        "",
        "",
        "",
        "QuotaExceeded",
    ]


def test_concurrent_apply_from_two_threads(double: BlbDouble) -> None:
    blb = double.add_blb("lb-conc")
    group = double.add_ip_group(blb, health_check=None)
    p = provider(double)
    results = []
    errors: list[BaseException] = []

    def worker(base: int) -> None:
        try:
            for i in range(5):
                acts = [add(f"10.8.{base}.{i * 4 + j}") for j in range(1, 5)]
                results.append(p.apply("127.0.0.1", f"{blb}/{group}", acts))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(b,)) for b in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(r.done for r in results) == 40 and not any(r.failed for r in results)
    assert len(double.members(blb, group)) == 40


def test_concurrent_adds_respect_the_cap(double: BlbDouble) -> None:
    blb = double.add_blb("lb-conc-cap")
    group = double.add_ip_group(blb, health_check=None)
    p = provider(double, max_backends=10)
    results = []

    def worker(base: int) -> None:
        results.append(
            p.apply("127.0.0.1", f"{blb}/{group}", [add(f"10.9.{base}.{i}") for i in range(8)])
        )

    threads = [threading.Thread(target=worker, args=(b,)) for b in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.done for r in results) == 10
    assert len(double.members(blb, group)) == 10


# -- throttling, errors ----------------------------------------------------------------------
def test_throttling_is_retried_then_succeeds(double: BlbDouble) -> None:
    blb = double.add_blb("lb-thr")
    group = double.add_ip_group(blb, health_check=None)
    double.fail_next(OP_DESCRIBE_MEMBERS, 429, "RequestLimitExceeded", "slow down", times=2)
    double.fail_next(OP_CREATE_MEMBERS, 503, "ServiceUnavailable", "busy", times=1)
    calls: list[tuple[str, str]] = []
    clock = InstantClock()
    p = provider(double, calls=calls, clock=clock, backoff_s=0.5)
    assert p.apply("127.0.0.1", f"{blb}/{group}", [add("10.10.0.1")]).done == 1
    assert calls == [
        (OP_DESCRIBE_MEMBERS, "throttled"),
        (OP_DESCRIBE_MEMBERS, "throttled"),
        (OP_DESCRIBE_MEMBERS, "ok"),
        (OP_CREATE_MEMBERS, "error"),
        (OP_CREATE_MEMBERS, "ok"),
    ]
    assert clock.slept == [0.5, 1.0, 0.5]
    assert len(double.members(blb, group)) == 1


def test_rate_limited_double_is_absorbed_by_backoff() -> None:
    with BlbDouble(rate_limit_per_s=20) as double:
        blb = double.add_blb("lb-rate")
        group = double.add_ip_group(blb, health_check=None)
        calls: list[tuple[str, str]] = []
        p = provider(double, calls=calls, backoff_s=0.05, retries=6)
        for _ in range(40):
            p.observe("127.0.0.1", f"{blb}/{group}")
        outcomes = {o for _, o in calls}
        assert outcomes == {"ok", "throttled"}
        assert [o for _, o in calls].count("ok") == 40


def test_throttled_forever_is_a_transient_error_in_bounded_time(double: BlbDouble) -> None:
    blb = double.add_blb("lb-forever")
    group = double.add_ip_group(blb, health_check=None)
    double.fail_next(OP_DESCRIBE_MEMBERS, 429, "RequestLimitExceeded", "slow down", times=100)
    clock = InstantClock()
    p = provider(double, clock=clock, retries=4, backoff_s=0.5)
    with pytest.raises(TransientError, match="after 5 attempts \\(throttled\\)"):
        p.observe("127.0.0.1", f"{blb}/{group}")
    assert clock.slept == [0.5, 1.0, 2.0, 4.0]  # 7.5 s of backoff in all, then give up
    assert len(double.calls_of(OP_DESCRIBE_MEMBERS)) == 5


def test_unreachable_endpoint_is_transient() -> None:
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    clock = InstantClock()
    p = BaiduBLBProvider(
        access_key_id="ak",
        secret_access_key="sk",
        endpoint=f"http://127.0.0.1:{port}",
        retries=2,
        clock=clock,
    )
    with pytest.raises(TransientError, match="after 3 attempts \\(error\\)"):
        p.observe("127.0.0.1", "lb-1/ip_group-1")
    assert len(clock.slept) == 2


# -- auth ------------------------------------------------------------------------------------
def test_wrong_secret_is_an_auth_error_and_no_call_is_made_during_the_backoff(
    double: BlbDouble,
) -> None:
    blb = double.add_blb("lb-auth")
    group = double.add_ip_group(blb, health_check=None)
    clock = FakeClock()
    calls: list[tuple[str, str]] = []
    p = provider(double, secret="wrong", clock=clock, calls=calls, auth_backoff_s=60)
    with pytest.raises(LBAuthError) as err:
        p.observe("127.0.0.1", f"{blb}/{group}")
    text = str(err.value)
    assert "refused the credentials" in text and "SignatureDoesNotMatch" in text
    assert "PODLB_BAIDU_SECRET_ACCESS_KEY" in text and "no BLB calls for 60s" in text
    assert [c.code for c in double.calls] == ["SignatureDoesNotMatch"]
    assert calls == [(OP_DESCRIBE_MEMBERS, "auth")]
    for _ in range(5):  # no retry storm: refused here, every operation
        with pytest.raises(LBAuthError):
            p.apply("127.0.0.1", f"{blb}/{group}", [add("10.11.0.1")])
        with pytest.raises(LBAuthError):
            p.observe("127.0.0.1", f"{blb}/{group}")
    assert len(double.calls) == 1
    clock.advance(61)
    with pytest.raises(LBAuthError):
        p.observe("127.0.0.1", f"{blb}/{group}")
    assert len(double.calls) == 2  # tried again once the backoff ended


def test_unknown_access_key(double: BlbDouble) -> None:
    double.add_blb("lb-ak")
    p = BaiduBLBProvider(access_key_id="nobody", secret_access_key="x", endpoint=double.endpoint)
    with pytest.raises(LBAuthError, match="InvalidAccessKeyId"):
        p.observe("127.0.0.1", "lb-ak/ip_group-1")


def test_denied_operation_blocks_only_that_operation(double: BlbDouble) -> None:
    blb = double.add_blb("lb-deny")
    group = double.add_ip_group(blb, health_check=None)
    double.deny(OP_CREATE_MEMBERS)  # read-only credentials
    clock = FakeClock()
    p = provider(double, clock=clock)
    with pytest.raises(LBAuthError, match=f"denied {OP_CREATE_MEMBERS}.*AccessDenied"):
        p.apply("127.0.0.1", f"{blb}/{group}", [add("10.12.0.1")])
    with pytest.raises(LBAuthError):
        p.apply("127.0.0.1", f"{blb}/{group}", [add("10.12.0.1")])
    assert len(double.calls_of(OP_CREATE_MEMBERS)) == 1
    assert p.observe("127.0.0.1", f"{blb}/{group}").servers == {}  # observe still works


# -- the double's own checks -----------------------------------------------------------------
def raw(
    double: BlbDouble,
    method: str,
    path: str,
    query: str = "",
    body: bytes = b"",
    *,
    when: dt.datetime | None = None,
    secret: str | None = None,
) -> tuple[int, dict[str, str]]:
    host = double.endpoint.removeprefix("http://")
    headers = [
        ("Host", host),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
    ]
    auth = authorization(
        double.access_key_id,
        secret or double.secret_access_key,
        method,
        path,
        query,
        headers,
        timestamp=when,
    )
    conn = http.client.HTTPConnection(host, timeout=5)
    try:
        conn.putrequest(method, path + (f"?{query}" if query else ""), skip_host=True)
        for k, v in [*headers, ("Authorization", auth)]:
            conn.putheader(k, v)
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, (json.loads(data) if data else {})
    finally:
        conn.close()


def test_double_checks_signature_timestamp_and_bodies(double: BlbDouble) -> None:
    blb = double.add_blb("lb-raw")
    group = double.add_ip_group(blb)
    path = f"/v1/appblb/{blb}/ipgroup/member"
    status, doc = raw(double, "GET", path, f"ipGroupId={group}")
    assert (status, doc["memberList"]) == (200, [])
    status, doc = raw(double, "GET", path, f"ipGroupId={group}", secret="nope")
    assert (status, doc["code"]) == (403, "SignatureDoesNotMatch")
    assert doc["requestId"] and doc["message"]
    stale = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    status, doc = raw(double, "GET", path, f"ipGroupId={group}", when=stale)
    assert (status, doc["code"]) == (400, "RequestExpired")
    status, doc = raw(double, "POST", path, "clientToken=t1", b"{not json")
    assert (status, doc["code"]) == (400, "MalformedJSON")
    bad = json.dumps({"ipGroupId": group, "memberList": [{"ip": "10.0.0.1", "port": 80}]})
    status, doc = raw(double, "POST", path, "clientToken=t2", bad.encode())
    assert (status, doc["code"]) == (400, "InappropriateJSON")
    status, doc = raw(double, "GET", path, "maxKeys=5000&ipGroupId=" + group)
    assert (status, doc["code"]) == (400, "InvalidHTTPRequest")
    status, doc = raw(double, "GET", f"/v1/appblb/{blb}/nothing")
    assert (status, doc["code"]) == (400, "InvalidURI")


def test_double_replays_a_client_token_instead_of_applying_twice(double: BlbDouble) -> None:
    blb = double.add_blb("lb-token")
    group = double.add_ip_group(blb, health_check=None)
    path = f"/v1/appblb/{blb}/ipgroup/member"
    body = json.dumps(
        {"ipGroupId": group, "memberList": [{"ip": "10.13.0.1", "port": 80, "weight": 1}]}
    ).encode()
    assert raw(double, "POST", path, "clientToken=same", body)[0] == 200
    assert raw(double, "POST", path, "clientToken=same", body)[0] == 200
    assert double.members(blb, group) == [("10.13.0.1", 80, 1)]
