from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from agent.clock import Clock, FakeClock
from agent.errors import DumpInterrupted, NotFound
from agent.model import LB_READY, Condition, Pod, PodKey, Service, ServicePort
from agent.node.drain import (
    Activity,
    Admission,
    DrainManager,
    Outcome,
    admit,
    decide,
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


class TickingClock(FakeClock):
    """Fake time that moves by the whole timeout whenever someone waits (no real sleeping)."""

    def wait(self, event: threading.Event, timeout: float) -> bool:
        if not event.is_set():
            self.advance(timeout)
        return event.is_set()


def test_a_failed_connection_read_does_not_end_the_drain() -> None:
    """Defect 6 (drain side): a netlink error while reading the pod's connections says nothing
    about them; the drain goes on waiting (it used to answer 500 at once)."""
    reads: list[str] = []

    def activity(paths: tuple[str, ...], inode: int) -> list[Activity]:
        reads.append("read")
        if len(reads) <= 3:
            raise DumpInterrupted("tcp activity: dump interrupted 5 times")
        return []

    clock = TickingClock()
    m = DrainManager(
        "n1", lambda ns, n: pod(), lambda key: pod(("False", "Deregistered")), lambda: [],
        lambda p: (("/run/netns/x",), 1, PORTS), activity, lambda *a: None, clock, poll_s=0.5,
    )  # fmt: skip
    result = m.drain("shop", "web")
    assert (result.code, result.outcome) == (200, Outcome.DRAINED), result
    assert len(reads) == 4 and result.seconds >= 1.5


def kubelet_stopped(reason: str = "TerminationByKubelet", **kw: Any) -> Pod:
    """A pod its kubelet stops without an API deletion (eviction, graceful node shutdown)."""
    cond = Condition("DisruptionTarget", "True", reason)
    return pod(
        None, terminating=False, deletion_grace_s=None, deletion_timestamp=None,
        conditions=(cond,), readiness_gates=(), **kw,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("the_pod", "ok", "reason"),
    [
        (pod(), True, Admission.DELETED),
        (kubelet_stopped(), True, Admission.STOPPED_BY_KUBELET),
        (kubelet_stopped(phase="Failed"), True, Admission.STOPPED_BY_KUBELET),  # node shutdown
        # Marks a caller could fake, or that an API deletion follows anyway: not enough.
        (kubelet_stopped("EvictionByEvictionAPI"), False, Admission.NOT_STOPPING),
        (kubelet_stopped("PreemptionByScheduler"), False, Admission.NOT_STOPPING),
        (pod(terminating=False, annotations=(("podlb.io/drain", "now"),)), False,
         Admission.NOT_STOPPING),
        (pod(terminating=False, phase="Failed"), False, Admission.NOT_STOPPING),
        (kubelet_stopped(node_name="n2"), False, Admission.OTHER_NODE),
    ],
)  # fmt: skip
def test_admit(the_pod: Pod, ok: bool, reason: Admission) -> None:
    verdict = admit(the_pod, "n1")
    assert (verdict.ready, verdict.reason) == (ok, reason)


def test_a_pod_its_kubelet_stops_is_drained() -> None:
    """Defect 10: eviction and graceful node shutdown run the preStop hook with no
    deletionTimestamp; the kubelet's DisruptionTarget mark is what admits the drain."""
    stopped = kubelet_stopped()
    m, _ = manager(lambda ns, n: stopped, cached=stopped)
    result = m.drain("shop", "web")
    assert (result.code, result.outcome) == (200, Outcome.DRAINED), result
    spoofed = kubelet_stopped("EvictionByEvictionAPI")
    m = DrainManager(
        "n1", lambda ns, n: spoofed, lambda key: spoofed, lambda: [],
        lambda p: (("/run/netns/x",), 1, PORTS), lambda paths, inode: [], lambda *a: None,
        TickingClock(), poll_s=0.5, announce_wait_s=2.0,
    )  # fmt: skip
    assert m.drain("shop", "web").code == 409


def test_a_hook_that_comes_before_the_mark_waits_for_it() -> None:
    """The kubelet calls the hook right after it queues its status write: a drain request a
    moment ahead of the DisruptionTarget mark in the cache is not refused."""
    seen: list[int] = []

    def cached(key: PodKey) -> Pod:
        seen.append(1)
        return kubelet_stopped() if len(seen) > 3 else pod(None, terminating=False)

    api_reads: list[str] = []
    m = DrainManager(
        "n1", lambda ns, n: api_reads.append(n) or pod(None, terminating=False), cached,
        lambda: [], lambda p: (("/run/netns/x",), 1, PORTS), lambda paths, inode: [],
        lambda *a: None, TickingClock(), poll_s=0.5, announce_wait_s=5.0,
    )  # fmt: skip
    result = m.drain("shop", "web")
    assert (result.code, result.outcome) == (200, Outcome.DRAINED), result
    assert api_reads == []


def test_drain_answers_from_the_cache_before_the_api() -> None:
    """Defect 9: a pod the informer shows terminating is drained without a live API GET."""
    api_reads: list[str] = []
    done_pod = pod(("False", "Deregistered"))
    m, _ = manager(lambda ns, n: api_reads.append(n) or done_pod, cached=done_pod)
    assert m.drain("shop", "web").outcome is Outcome.DRAINED
    assert api_reads == []


def test_callers_of_one_pod_and_api_reads_are_bounded() -> None:
    """Defect 9: waiters on one pod's drain are bounded (429 beyond), and requests the cache
    cannot answer (made-up pods) cost a bounded number of API reads at a time (503 beyond)."""
    release = threading.Event()
    busy = [Activity(8080, 0)]

    def activity(paths: tuple[str, ...], inode: int) -> list[Activity]:
        return [] if release.is_set() else busy

    m = DrainManager(
        "n1", lambda ns, n: pod(), lambda key: pod(("False", "Deregistered")), lambda: [],
        lambda p: (("/run/netns/x",), 1, PORTS), activity, lambda *a: None, Clock(),
        poll_s=0.01, max_waiters_per_pod=4,
    )  # fmt: skip
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(m.drain("shop", "web"))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    wait_until(lambda: m._running and m._running[PodKey("shop", "web")].waiters == 4)
    assert m.drain("shop", "web").code == 429  # the 5th caller
    release.set()
    for t in threads:
        t.join(5)
    assert [r.outcome for r in results] == [Outcome.DRAINED] * 4

    in_get = threading.Semaphore(0)
    unblock = threading.Event()

    def slow_get(ns: str, n: str) -> Pod:
        in_get.release()
        unblock.wait(5)
        raise NotFound(n)

    m = DrainManager(
        "n1", slow_get, lambda key: None, lambda: [], lambda p: None, lambda paths, inode: [],
        lambda *a: None, Clock(), api_reads=2,
    )  # fmt: skip
    codes: list[int] = []
    flood = [
        threading.Thread(target=lambda i=i: codes.append(m.drain("shop", f"made-up-{i}").code))
        for i in range(6)
    ]
    for t in flood[:2]:
        t.start()
    assert in_get.acquire(timeout=5) and in_get.acquire(timeout=5)
    for t in flood[2:]:
        t.start()
        t.join(5)
    assert sorted(codes) == [503] * 4
    unblock.set()
    for t in flood[:2]:
        t.join(5)
    assert sorted(codes) == [404] * 2 + [503] * 4


def wait_until(pred: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)
