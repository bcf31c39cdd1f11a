"""The HAProxy provider against a real HAProxy and real netns pods."""

from __future__ import annotations

import functools
import http.client
import ipaddress
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from agent.errors import TransientError
from agent.lb.base import Action, AdminState, Health, Op, PoolNotFound, PoolState
from agent.lb.haproxy import HAProxyProvider
from agent.leader.desired import Backend, PoolSpec
from agent.leader.plan import plan_pool
from agent.model import PodKey
from tests.testbed.appproc import spawn_in_pod
from tests.testbed.haproxy import HAProxy, haproxy_version, supports_dynamic_servers
from tests.testbed.load import LoadGenerator
from tests.testbed.netns import NetnsPool, Pod, ip

pytestmark = [
    pytest.mark.haproxy,
    pytest.mark.skipif(
        not supports_dynamic_servers(),
        reason=f"needs haproxy >= 2.4 for dynamic servers (found {haproxy_version()})",
    ),
    pytest.mark.timeout(60),
]

OPTS = "check inter 200ms fall 2 rise 1"
T = TypeVar("T")


def provider(
    *lbs: HAProxy,
    on_command: Callable[[str, str, str], None] | None = None,
    retries: int = 3,
    backoff_s: float = 0.2,
    timeout_s: float = 2.0,
) -> HAProxyProvider:
    return HAProxyProvider(
        [f"unix:{lb.socket_path}" for lb in lbs],
        server_options=OPTS,
        on_command=on_command,
        retries=retries,
        backoff_s=backoff_s,
        timeout_s=timeout_s,
    )


def wait_for(what: str, fn: Callable[[], T], ok: Callable[[T], bool], timeout: float = 8.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {timeout}s")
        time.sleep(0.05)


def all_up(state: PoolState) -> bool:
    return bool(state.servers) and all(s.health is Health.UP for s in state.servers.values())


def get(port: int, conn: http.client.HTTPConnection | None = None) -> str:
    """GET / on a new connection (or on ``conn``, kept open) and return the pod name."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/")
        resp = c.getresponse()
        body = resp.read().decode()
        assert resp.status == 200, (resp.status, body)
        return body
    finally:
        if conn is None:
            c.close()


def adds(pods: list[Pod], weight: int = 1) -> list[Action]:
    return [Action(Op.ADD, f"s{i}", p.ip, 8080, weight) for i, p in enumerate(pods)]


def serving(netns_pool: NetnsPool, n: int) -> list[Pod]:
    """``n`` pods, each with the app on 8080 answering ``pod-<i>``."""
    pods = netns_pool.add_many_veth(n)
    for i, p in enumerate(pods):
        spawn_in_pod(p, 8080, f"pod-{i}")
    return pods


@pytest.fixture
def pods3(netns_pool: NetnsPool) -> list[Pod]:
    return serving(netns_pool, 3)


# -- add, traffic, observe -------------------------------------------------------------------
@pytest.mark.netns
def test_added_servers_turn_up_and_take_traffic(pods3: list[Pod]) -> None:
    calls: list[tuple[str, str, str]] = []
    with HAProxy(["be"], server_options=OPTS) as lb:
        p = provider(lb, on_command=lambda *a: calls.append(a))
        (inst,) = p.instances()
        assert p.observe(inst, "be") == PoolState("be")
        result = p.apply(inst, "be", adds(pods3, weight=3))
        assert (result.done, result.failed) == (3, ())
        state = wait_for("pool up", lambda: p.observe(inst, "be"), all_up)
        assert {(s.address, s.port, s.weight, s.admin) for s in state.servers.values()} == {
            (pod.ip, 8080, 3, AdminState.READY) for pod in pods3
        }
        assert {get(lb.port) for _ in range(9)} == {"pod-0", "pod-1", "pod-2"}
        # every server in rotation: observe_all reads no `show stat` (and no sessions)
        before = len(calls)
        assert p.observe_all(inst) == {"be": state}  # sessions not read: all in rotation
        assert {s.sessions for s in state.servers.values()} == {None}
        assert "show stat" not in {verb for _, verb, _ in calls[before:]}
        p.apply(inst, "be", [Action(Op.DRAIN, "s0")])
        drained = p.observe_all(inst)["be"].servers
        assert drained["s0"].admin is AdminState.DRAIN and drained["s0"].sessions == 0
        assert drained["s1"].sessions == 0  # its backend has a server out: read
    verbs = {(verb, outcome) for _, verb, outcome in calls}
    assert {("add server", "ok"), ("enable health", "ok"), ("enable server", "ok")} <= verbs
    assert {("show servers state", "ok"), ("show stat", "ok")} <= verbs


@pytest.mark.netns
def test_a_few_backends_read_one_by_one_read_as_all_at_once(pods3: list[Pod]) -> None:
    """observe_pools of a few backends (``show servers state <backend>`` each, on one
    connection) gives what observe_all gives of them: empty backends too, no unknown one, and
    sessions where a server is out of rotation; past observe_each_max, one whole read."""
    calls: list[tuple[str, str, str]] = []
    with HAProxy(["be", "idle", "other"], server_options=OPTS) as lb:
        p = provider(lb, on_command=lambda *a: calls.append(a))
        (inst,) = p.instances()
        p.apply(inst, "be", adds(pods3[:2]))
        p.apply(inst, "other", adds(pods3[2:]))
        wait_for(
            "pools up",
            lambda: p.observe_all(inst),
            lambda a: all_up(a["be"]) and all_up(a["other"]),
        )
        p.apply(inst, "be", [Action(Op.DRAIN, "s0")])
        calls.clear()
        few = p.observe_pools(inst, ["be", "idle", "nope", "bad name;"])
        assert [v for _, v, _ in calls] == ["show servers state"] * 3 + ["show stat"]
        every = p.observe_all(inst)
        assert few == {"be": every["be"], "idle": every["idle"]} and "other" in every
        assert few["be"].servers["s0"].sessions == 0 and few["idle"] == PoolState("idle")
        assert p.observe_pools(inst, []) == {}
        p.observe_each_max = 1
        calls.clear()
        assert p.observe_pools(inst, ["be", "idle"]) == {"be": every["be"], "idle": every["idle"]}
        assert [v for _, v, _ in calls][:2] == ["show backend", "show servers state"]


@pytest.mark.netns
def test_drain_keeps_existing_connection_then_remove(netns_pool: NetnsPool) -> None:
    """Mode tcp, so one client connection is one server session."""
    pods = serving(netns_pool, 2)
    with HAProxy(["be"], mode="tcp", server_options=OPTS) as lb:
        p = provider(lb)
        (inst,) = p.instances()
        p.apply(inst, "be", adds(pods))
        wait_for("pool up", lambda: p.observe(inst, "be"), all_up)
        keep = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=5)
        try:
            pinned = get(lb.port, keep)
            name = f"s{pinned[-1]}"
            other = f"pod-{1 - int(pinned[-1])}"

            assert p.apply(inst, "be", [Action(Op.DRAIN, name)]).done == 1
            assert {get(lb.port) for _ in range(6)} == {other}  # no new connections
            assert get(lb.port, keep) == pinned  # the existing one keeps working
            srv = p.observe(inst, "be").servers[name]
            assert (srv.admin, srv.health, srv.sessions) == (AdminState.DRAIN, Health.UP, 1)

            # Still a session: podlb does not even try the delete; reported, not raised.
            result = p.apply(inst, "be", [Action(Op.REMOVE, name)])
            assert result.done == 0
            assert result.failed[0][1] == "in_use: 1 streams, 1 sessions, 1 connections in use"
            assert p.observe(inst, "be").servers[name].admin is AdminState.MAINT
        finally:
            keep.close()
        wait_for("drained", lambda: p.observe(inst, "be").servers[name].sessions, lambda n: n == 0)
        result = p.apply(inst, "be", [Action(Op.REMOVE, name)])
        assert (result.done, result.failed) == (1, ())
        assert set(p.observe(inst, "be").servers) == {f"s{1 - int(pinned[-1])}"}


@pytest.mark.netns
def test_weight_change_and_enable(netns_pool: NetnsPool) -> None:
    pods = serving(netns_pool, 2)
    with HAProxy(["be"], server_options=OPTS) as lb:
        p = provider(lb)
        (inst,) = p.instances()
        p.apply(inst, "be", adds(pods))
        wait_for("pool up", lambda: p.observe(inst, "be"), all_up)
        assert p.apply(inst, "be", [Action(Op.SET_WEIGHT, "s0", weight=0)]).done == 1
        assert p.observe(inst, "be").servers["s0"].weight == 0
        assert {get(lb.port) for _ in range(6)} == {"pod-1"}
        result = p.apply(
            inst,
            "be",
            [Action(Op.SET_WEIGHT, "s0", weight=5), Action(Op.DRAIN, "s1")],
        )
        assert result.done == 2
        assert {get(lb.port) for _ in range(4)} == {"pod-0"}
        assert p.apply(inst, "be", [Action(Op.ENABLE, "s1")]).done == 1
        state = p.observe(inst, "be")
        assert (state.servers["s0"].weight, state.servers["s1"].admin) == (5, AdminState.READY)
        assert {get(lb.port) for _ in range(12)} == {"pod-0", "pod-1"}


@pytest.mark.netns
def test_a_staged_server_is_health_checked_out_of_rotation_until_enabled(
    netns_pool: NetnsPool,
) -> None:
    pods = serving(netns_pool, 2)
    with HAProxy(["be"], server_options=OPTS) as lb:
        p = provider(lb)
        (inst,) = p.instances()
        p.apply(inst, "be", adds(pods[:1]))
        staged = Action(Op.STAGE, "s1", pods[1].ip, 8080, 1)
        assert p.apply(inst, "be", [staged]).done == 1
        state = wait_for("both up", lambda: p.observe(inst, "be"), all_up)
        assert state.servers["s1"].admin is AdminState.DRAIN  # checked: UP, yet no traffic
        assert {get(lb.port) for _ in range(8)} == {"pod-0"}
        assert p.apply(inst, "be", [Action(Op.ENABLE, "s1")]).done == 1
        assert p.observe(inst, "be").servers["s1"].admin is AdminState.READY
        assert {get(lb.port) for _ in range(12)} == {"pod-0", "pod-1"}


@pytest.mark.netns
def test_a_staged_server_whose_app_starts_late_reads_checking_while_it_rises(
    netns_pool: NetnsPool,
) -> None:
    """Staged before its app listens, the server goes DOWN; once the app answers, HAProxy shows
    it ``DOWN 1/3`` until ``rise`` checks passed: no verdict (CHECKING), not a failing pod."""
    (pod,) = netns_pool.add_many_veth(1)
    with HAProxy(["be"], server_options="check inter 300ms fall 1 rise 3") as lb:
        p = HAProxyProvider(
            [f"unix:{lb.socket_path}"], server_options="check inter 300ms fall 1 rise 3"
        )
        (inst,) = p.instances()
        assert p.apply(inst, "be", [Action(Op.STAGE, "s0", pod.ip, 8080, 1)]).done == 1

        def health() -> Health:
            return p.observe(inst, "be").servers["s0"].health

        wait_for("DOWN", health, lambda h: h is Health.DOWN)
        spawn_in_pod(pod, 8080, "pod-0")
        seen = [wait_for("not DOWN", health, lambda h: h is not Health.DOWN)]
        seen.append(wait_for("UP", health, lambda h: h is Health.UP))
        assert seen == [Health.CHECKING, Health.UP]


# -- errors ----------------------------------------------------------------------------------
def test_rejected_commands_are_reported_not_raised() -> None:
    calls: list[tuple[str, str, str]] = []
    with HAProxy(["be"], server_options=OPTS) as lb:
        p = provider(lb, on_command=lambda *a: calls.append(a))
        (inst,) = p.instances()
        first = Action(Op.ADD, "s1", "10.255.0.1", 8080, 2)
        assert p.apply(inst, "be", [first]).done == 1
        batch = [
            Action(Op.REMOVE, "ghost"),  # no such server
            Action(Op.SET_WEIGHT, "ghost2", weight=3),
            Action(Op.ADD, "s2", "10.255.0.2", 8080, 999),  # weight out of range
            Action(Op.ADD, "s3", "10.255.0.3", 8080, 1),  # fine
            Action(Op.ADD, "bad name", "10.255.0.4", 8080),  # never sent
            Action(Op.DRAIN, "s1"),  # fine
        ]
        result = p.apply(inst, "be", batch)
        assert result.done == 2
        failed = {a.server: why for a, why in result.failed}
        assert failed == {
            "ghost": "no_server: No such server.",
            "ghost2": "no_server: No such server.",
            "s2": "rejected: weight of server s2 is not within 0 and 256 (999)..",
            "bad name": "invalid: server name 'bad name' has characters HAProxy refuses",
        }
        # Same server again (same address): "exists", and the existing one is left alone.
        again = p.apply(inst, "be", [first])
        assert again.done == 0 and [a for a, _ in again.failed] == [first]
        assert again.failed[0][1] == (
            "exists: Already exists a server with the same name in backend."
        )
        state = p.observe(inst, "be")
        assert set(state.servers) == {"s1", "s3"}
        assert state.servers["s1"].admin is AdminState.DRAIN  # not re-enabled by the failed add
    assert (inst, "set server", "rejected") in calls
    assert (inst, "add server", "rejected") in calls


def test_unknown_backend_is_pool_not_found() -> None:
    with HAProxy(["be"], server_options=OPTS) as lb:
        p = provider(lb)
        (inst,) = p.instances()
        with pytest.raises(PoolNotFound):
            p.observe(inst, "nope")
        with pytest.raises(PoolNotFound):
            p.apply(inst, "nope", [Action(Op.ADD, "s1", "10.255.0.1", 80)])
        with pytest.raises(PoolNotFound):
            p.apply(inst, "nope", [Action(Op.DRAIN, "s1")])
        assert p.observe(inst, "be").servers == {}


def test_stopped_haproxy_is_transient_after_bounded_retries() -> None:
    with HAProxy(["be"], server_options=OPTS) as lb:
        p = provider(lb, retries=2, backoff_s=0.05, timeout_s=0.5)
        (inst,) = p.instances()
        p.observe(inst, "be")
        lb.stop()
        for call in (
            lambda: p.observe(inst, "be"),
            lambda: p.observe_all(inst),
            lambda: p.apply(inst, "be", [Action(Op.ADD, "s1", "10.255.0.1", 80)]),
        ):
            t0 = time.monotonic()
            with pytest.raises(TransientError, match="after 3 attempts"):
                call()
            assert time.monotonic() - t0 < 2.0


def test_process_id_changes_with_a_restart_and_a_dead_instance_is_one_quick_error() -> None:
    seen: list[tuple[str, str]] = []
    with HAProxy(["be"], server_options=OPTS) as lb:
        p = provider(lb, timeout_s=0.5, on_command=lambda i, verb, out: seen.append((verb, out)))
        (inst,) = p.instances()
        first = p.process_id(inst)
        assert p.process_id(inst) == first
        lb.stop()
        t0 = time.monotonic()
        with pytest.raises(TransientError, match="show info"):
            p.process_id(inst)  # one attempt: no retry, no backoff
        assert time.monotonic() - t0 < 0.2
        lb.start()
        assert p.process_id(inst) != first
    assert seen == [("show info", "ok")] * 2 + [("show info", "error"), ("show info", "ok")]


@pytest.mark.netns
def test_restart_loses_servers_and_they_can_be_readded(netns_pool: NetnsPool) -> None:
    pod = netns_pool.add_veth()
    spawn_in_pod(pod, 8080, "pod-a")
    with HAProxy(["be", "other"], server_options=OPTS) as lb:
        p = provider(lb)
        (inst,) = p.instances()
        p.apply(inst, "be", adds([pod]))
        wait_for("up", lambda: p.observe(inst, "be"), all_up)
        lb.restart()
        assert p.observe(inst, "be") == PoolState("be")
        assert p.observe_all(inst) == {"be": PoolState("be"), "other": PoolState("other")}
        assert p.apply(inst, "be", adds([pod])).done == 1
        wait_for("up again", lambda: p.observe(inst, "be"), all_up)
        assert get(lb.port) == "pod-a"


@pytest.mark.netns
def test_two_instances_both_get_the_actions(pods3: list[Pod]) -> None:
    with HAProxy(["be"], server_options=OPTS) as lb1, HAProxy(["be"], server_options=OPTS) as lb2:
        p = provider(lb1, lb2)
        assert len(p.instances()) == 2
        for inst in p.instances():
            assert p.apply(inst, "be", adds(pods3)).done == 3
        for inst in p.instances():
            wait_for(inst, functools.partial(p.observe, inst, "be"), all_up)
        for lb in (lb1, lb2):
            assert {get(lb.port) for _ in range(9)} == {"pod-0", "pod-1", "pod-2"}
        for inst in p.instances():
            p.apply(inst, "be", [Action(Op.DRAIN, "s0")])
        for lb in (lb1, lb2):
            assert "pod-0" not in {get(lb.port) for _ in range(6)}


@pytest.mark.netns
def test_tcp_runtime_endpoint(netns_pool: NetnsPool) -> None:
    pod = netns_pool.add_veth()
    spawn_in_pod(pod, 8080, "pod-t")
    with HAProxy(["be"], server_options=OPTS, tcp_runtime=True) as lb:
        inst = f"tcp:127.0.0.1:{lb.runtime_port}"
        p = HAProxyProvider([inst], server_options=OPTS)
        assert p.apply(inst, "be", adds([pod])).done == 1
        state = wait_for("up", lambda: p.observe(inst, "be"), all_up)
        assert state.servers["s0"].address == pod.ip
        assert set(p.observe_all(inst)) == {"be"}
        assert get(lb.port) == "pod-t"


# -- IPv6 ------------------------------------------------------------------------------------
_V6_APP = (
    "import socket, sys\n"
    "from tests.testbed import app\n"
    "app.AppServer.address_family = socket.AF_INET6\n"
    "sys.exit(app.main(sys.argv[1:]))\n"
)


@pytest.mark.netns
def test_ipv6_pod(netns_pool: NetnsPool) -> None:
    """``add server`` needs ``[addr]:port`` for IPv6; the pod gets a ULA on its veth."""
    pod = netns_pool.add_veth()
    assert pod.host_if is not None
    net = ipaddress.IPv6Network(((0xFD << 120) | (secrets.randbits(56) << 64), 64))
    # canonical text (no leading zeros), as HAProxy prints it back
    host_addr, pod_addr = str(net[1]), str(net[2])
    ip("addr", "add", f"{host_addr}/64", "dev", pod.host_if, "nodad")
    ip("-n", pod.name, "addr", "add", f"{pod_addr}/64", "dev", "eth0", "nodad")
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root}
    argv = [sys.executable, "-c", _V6_APP, "--port", "8080", "--name", "pod-v6", "--host", "::"]
    proc = pod.popen(argv, cwd=root, env=env, stdout=subprocess.DEVNULL)

    def listening() -> bool:
        try:
            socket.create_connection((pod_addr, 8080), timeout=0.5).close()
            return True
        except OSError:
            assert proc.poll() is None, "v6 app exited"
            return False

    wait_for("v6 app listening", listening, bool)
    with HAProxy(["be"], server_options=OPTS) as lb:
        p = provider(lb)
        (inst,) = p.instances()
        assert p.apply(inst, "be", [Action(Op.ADD, "v6", pod_addr, 8080, 1)]).done == 1
        state = wait_for("v6 up", lambda: p.observe(inst, "be"), all_up)
        srv = state.servers["v6"]
        assert (srv.address, srv.port) == (pod_addr, 8080)
        assert get(lb.port) == "pod-v6"


# -- speed -----------------------------------------------------------------------------------
def test_thousands_of_actions_are_fast() -> None:
    """2,000 servers over 40 pools (no pod behind them: checks every 30 s); the bench figures
    for 10,000 are in the provider's commit message and the report."""
    pools = [f"be{i}" for i in range(40)]
    with HAProxy(pools, server_options="check inter 30s") as lb:
        p = HAProxyProvider([f"unix:{lb.socket_path}"], server_options="check inter 30s")
        (inst,) = p.instances()
        t0 = time.monotonic()
        for b, pool in enumerate(pools):
            acts = [Action(Op.ADD, f"s{i}", f"10.250.{b}.{i + 1}", 8080, 1) for i in range(50)]
            assert p.apply(inst, pool, acts).done == 50
        t_apply = time.monotonic() - t0
        t0 = time.monotonic()
        everything = p.observe_all(inst)
        t_all = time.monotonic() - t0
        t0 = time.monotonic()
        one = p.observe(inst, "be7")
        t_one = time.monotonic() - t0
        assert sum(len(s.servers) for s in everything.values()) == 2000
        assert len(one.servers) == 50 and one == everything["be7"]
        assert {s.health for s in one.servers.values()} == {Health.CHECKING}
        assert t_apply < 10 and t_all < 2 and t_one < 0.5, (t_apply, t_all, t_one)


# -- health while checks run (issue 17 defect 12) ----------------------------------------------
@pytest.mark.netns
def test_health_holds_while_slow_checks_run(pods3: list[Pod]) -> None:
    """HTTP checks answered in ~100 ms every 300 ms: a third of all observations land while a
    check runs. Health must stay UP through a quiet period: no flip at all."""
    opts = "check inter 300ms fall 2 rise 1"
    with HAProxy(
        ["be"], server_options=opts, health_check="option httpchk GET /?delay_ms=100"
    ) as lb:
        p = HAProxyProvider([f"unix:{lb.socket_path}"], server_options=opts)
        (inst,) = p.instances()
        p.apply(inst, "be", adds(pods3))
        wait_for("pool up", lambda: p.observe(inst, "be"), all_up)
        flips: list[tuple[str, Health]] = []
        observations = 0
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline:
            for name, srv in p.observe(inst, "be").servers.items():
                observations += 1
                if srv.health is not Health.UP:
                    flips.append((name, srv.health))
            time.sleep(0.01)
        assert observations > 300
        assert flips == [], f"{len(flips)} of {observations} observations not UP: {flips[:5]}"


# -- removal under load (issue 17 defect 11) ---------------------------------------------------
def alive(lb: HAProxy, when: str) -> None:
    if not lb.running:
        rc = lb.proc.returncode if lb.proc is not None else None
        raise AssertionError(f"HAProxy died {when} (exit {rc}): {lb.log()[-400:]}")


@pytest.mark.netns
@pytest.mark.slow
def test_removing_a_dead_pods_server_under_load_never_crashes_haproxy(
    netns_pool: NetnsPool,
) -> None:
    """A pod dies while in rotation (its app is killed: connections refused); podlb drains its
    server and removes it once it shows no session, as the leader plans, while clients keep
    coming. Requests that had picked the server wait to retry it (HAProxy's 1 s turn-around)
    and count as no session: 2.6.12's ``del server`` frees the server they still point to and
    HAProxy dies (SIGSEGV; ``MALLOC_PERTURB_`` makes glibc poison freed memory, so the use
    after free crashes every time). The removal must wait until nothing refers to it."""
    cycles = 3
    pods = netns_pool.add_many_veth(cycles + 1)
    spawn_in_pod(pods[0], 8080, "keep")
    refusals: list[str] = []
    with HAProxy(["be"], server_options=OPTS, env={"MALLOC_PERTURB_": "165"}) as lb:
        p = provider(lb)
        (inst,) = p.instances()
        p.apply(inst, "be", [Action(Op.ADD, "keep", pods[0].ip, 8080, 1)])
        with LoadGenerator(lb.url, concurrency=16, duration=cycles * 6 + 5, timeout=5) as gen:
            for c, victim in enumerate(pods[1:]):
                name = f"v{c}"
                app = spawn_in_pod(victim, 8080, name)
                assert p.apply(inst, "be", [Action(Op.ADD, name, victim.ip, 8080, 1)]).done == 1
                wait_for(f"{name} UP", lambda: p.observe(inst, "be"), all_up)
                time.sleep(0.5)  # taking its share of the load
                app.kill()
                app.wait()
                p.apply(inst, "be", [Action(Op.DRAIN, name)])
                wait_for(
                    f"{name} without session",
                    lambda: p.observe(inst, "be").servers[name].sessions,  # noqa: B023
                    lambda n: n == 0,
                )
                # What the leader does round after round: REMOVE until the server is gone.
                deadline = time.monotonic() + 15
                while True:
                    alive(lb, f"removing {name}")
                    if name not in p.observe(inst, "be").servers:
                        break
                    result = p.apply(inst, "be", [Action(Op.REMOVE, name)])
                    refusals += [why for _, why in result.failed]
                    assert time.monotonic() < deadline, f"{name} never removed: {refusals[-3:]}"
                    time.sleep(0.5)
                time.sleep(1.5)  # past the turn-around of any request that had picked it
                alive(lb, f"after removing {name}")
        res = gen.result()
        alive(lb, "at the end")
    # Refused only while something referred to the server; the survivors kept serving.
    assert all(why.startswith("in_use: ") for why in refusals), refusals
    assert res.by_pod.get("keep", 0) > 100, res.summary()


# -- a partly applied add (issue 17 defect 4) --------------------------------------------------
class AnswerLosingProxy:
    """A Runtime API socket in front of HAProxy's that, for the first ``times`` connections whose
    commands contain ``trigger``, passes the commands on, lets HAProxy run them all, and then
    closes the client's connection without a word: the changes land, the answers are lost."""

    def __init__(self, upstream: str, trigger: bytes, times: int = 1) -> None:
        self.upstream = upstream
        self.trigger = trigger
        self.times = times
        self.dropped = 0
        self._dir = tempfile.mkdtemp(prefix="lossy-")
        self.socket_path = os.path.join(self._dir, "runtime.sock")
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._srv.bind(self.socket_path)
        self._srv.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._srv.close()
        os.unlink(self.socket_path)
        os.rmdir(self._dir)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            with client, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as up:
                data = client.recv(1 << 16)  # a small batch comes in one piece
                up.connect(self.upstream)
                up.sendall(data)
                answer = b"".join(iter(lambda: up.recv(1 << 16), b""))  # to "quit"'s EOF
                if self.trigger in data and self.dropped < self.times:
                    self.dropped += 1
                    continue
                client.sendall(answer)


def spec_of(pod: Pod, name: str) -> PoolSpec:
    backend = Backend(name, pod.ip, 8080, 1, False, PodKey("shop", "web-0"))
    return PoolSpec("be", PodKey("shop", "web"), "http", {name: backend})


@pytest.mark.netns
def test_an_add_whose_answer_was_lost_is_finished_on_retry(netns_pool: NetnsPool) -> None:
    """The connection drops after ``add server`` ran: the retried add answers that the server
    exists. That is the add having worked: its checks and the server must still be enabled."""
    pod = netns_pool.add_veth()
    spawn_in_pod(pod, 8080, "pod-a")
    with HAProxy(["be"], server_options=OPTS) as lb:
        proxy = AnswerLosingProxy(lb.socket_path, b"add server")
        try:
            p = HAProxyProvider([f"unix:{proxy.socket_path}"], server_options=OPTS)
            (inst,) = p.instances()
            result = p.apply(inst, "be", [Action(Op.ADD, "s0", pod.ip, 8080, 1)])
            assert proxy.dropped == 1
            assert (result.done, result.failed) == (1, ())
            state = wait_for("up", lambda: p.observe(inst, "be"), all_up, timeout=5)
            assert state.servers["s0"].admin is AdminState.READY
        finally:
            proxy.close()


@pytest.mark.netns
def test_a_server_added_but_never_enabled_is_repaired_by_the_next_plans(
    netns_pool: NetnsPool,
) -> None:
    """The connection dropped for good between ``add server`` and ``enable health`` / ``enable
    server``: the server exists in maintenance with its health check off. Planned from what
    HAProxy reports, the next rounds must turn the check on and the server ready (before:
    only ``state ready``; the server took traffic unchecked and its pod stayed Registering)."""
    pod = netns_pool.add_veth()
    spawn_in_pod(pod, 8080, "pod-a")
    with HAProxy(["be"], server_options=OPTS) as lb:
        p = provider(lb)
        (inst,) = p.instances()
        name = f"{pod.ip}_8080"
        lb.runtime(f"add server be/{name} {pod.ip}:8080 {OPTS}")  # and nothing more
        assert lb.servers("be")[name]["status"] == "MAINT"
        deadline = time.monotonic() + 6
        while True:  # leader rounds: plan from what HAProxy reports, apply
            state = p.observe(inst, "be")
            if all_up(state) and state.servers[name].admin is AdminState.READY:
                break
            assert time.monotonic() < deadline, (state, lb.servers("be")[name]["status"])
            assert p.apply(inst, "be", plan_pool(spec_of(pod, name), state)).failed == ()
            time.sleep(0.3)
        assert lb.servers("be")[name]["check_status"] not in ("", "INI")  # checks ran
        assert plan_pool(spec_of(pod, name), p.observe(inst, "be")) == []
