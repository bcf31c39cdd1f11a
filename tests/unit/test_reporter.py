"""The condition writers (agent/node/reporter.py, agent/node/pending.py): several at once under
one rate limit, one pod by one writer at a time with its newest condition, what someone waits
for first (issue 18: lb-ready p99 was 41 s at 30,000 pods behind one writer)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from agent.clock import Clock, FakeClock
from agent.errors import TransientError
from agent.model import LB_READY, Condition, Pod, PodKey
from agent.node.pending import Priority, priority
from agent.node.reporter import ECHO_S, ConditionReporter, Desired, writers_for
from tests.fakes import FakeStatusSink
from tests.testbed.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

NS = "shop"
HEALTHY = ("True", "Healthy")
REGISTERING = ("False", "Registering")
NOT_REGISTERED = ("False", "NotRegistered")


def pod(name: str, lb: tuple[str, str] | None = None, terminating: bool = False) -> Pod:
    conds = (Condition(LB_READY, *lb),) if lb else ()
    return Pod(NS, name, f"u-{name}", "n1", (), "Running", terminating=terminating,
               conditions=(Condition("ContainersReady", "True"), *conds))  # fmt: skip


def want(name: str, verdict: tuple[str, str], message: str = "") -> Desired:
    return Desired(f"u-{name}", *verdict, message or verdict[1])


def key(name: str) -> PodKey:
    return PodKey(NS, name)


def written(sink: FakeStatusSink, name: str) -> list[tuple[str, str | None]]:
    return [(c.status, c.reason) for k, c in sink.writes if k == key(name)]


@contextmanager
def running(reporter: ConditionReporter) -> Iterator[threading.Thread]:
    stop = threading.Event()
    failed: list[BaseException] = []

    def body() -> None:
        try:
            reporter.run(stop)
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=body, name="condition-writer", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "the writers did not stop"
    assert not failed, failed


# -- the classes -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "current", "terminating", "cls"),
    [
        ("True", REGISTERING, False, Priority.UNBLOCK),  # admitted: its rollout waits
        ("True", None, False, Priority.UNBLOCK),
        ("False", HEALTHY, True, Priority.UNBLOCK),  # Draining a stopping pod
        ("False", ("False", "Draining"), True, Priority.UNBLOCK),  # Deregistered: its drain
        ("False", HEALTHY, False, Priority.REMOVE),  # Unhealthy: out of rotation
        ("False", None, False, Priority.INFO),  # NotRegistered of a pod not ready yet
        ("False", NOT_REGISTERED, False, Priority.INFO),  # Registering
        ("True", HEALTHY, False, Priority.INFO),  # a reason change that stays True
    ],
)
def test_priority_classes(
    status: str, current: tuple[str, str] | None, terminating: bool, cls: Priority
) -> None:
    p = pod("a", current, terminating)
    assert priority(status, p, p.condition(LB_READY)) is cls
    assert priority(status, None, None) is Priority.INFO  # not in the cache yet


def test_writers_follow_the_rate() -> None:
    assert [writers_for(r) for r in (1, 20, 21, 50, 100, 10_000)] == [2, 2, 3, 5, 8, 8]


# -- order -------------------------------------------------------------------------------------
def test_what_someone_waits_for_is_written_first_then_first_come_first_served() -> None:
    pods = {
        "new": pod("new"),  # not ready yet: NotRegistered
        "reg": pod("reg", NOT_REGISTERED),  # -> Registering
        "out": pod("out", HEALTHY),  # -> Unhealthy
        "in": pod("in", REGISTERING),  # -> Healthy
        "stop": pod("stop", ("False", "Draining"), terminating=True),  # -> Deregistered
        "in2": pod("in2", REGISTERING),
        "new2": pod("new2"),  # NotRegistered; stopped while queued
    }
    sink = FakeStatusSink({p.key: p for p in pods.values()})
    reporter = ConditionReporter(LB_READY, sink, sink.lookup, FakeClock(), writers=1)
    verdicts = {"new": NOT_REGISTERED, "reg": REGISTERING, "out": ("False", "Unhealthy"),
                "in": HEALTHY, "stop": ("False", "Deregistered"), "in2": HEALTHY,
                "new2": NOT_REGISTERED}  # fmt: skip
    for name, verdict in verdicts.items():
        reporter.set_desired(key(name), want(name, verdict))
    sink.pods[key("new2")] = pod("new2", terminating=True)
    reporter.mark_dirty(key("new2"))  # its class is looked at again
    assert reporter.pending() == 7
    assert reporter.write_queued() == 7
    assert [k.name for k, _c in sink.writes] == ["in", "stop", "in2", "new2", "out", "new", "reg"]
    assert reporter.pending() == 0


def test_events_of_pods_without_a_desired_condition_cost_no_lookup() -> None:
    looked: list[PodKey] = []
    sink = FakeStatusSink({key("a"): pod("a")})

    def lookup(k: PodKey) -> Pod | None:
        looked.append(k)
        return sink.lookup(k)

    reporter = ConditionReporter(LB_READY, sink, lookup, FakeClock())
    reporter.mark_dirty(key("other"))
    assert looked == [] and reporter.pending() == 0
    reporter.set_desired(key("a"), want("a", NOT_REGISTERED))
    reporter.write_queued()
    looked.clear()
    reporter.mark_dirty(key("a"))  # ours: looked at again (someone may have overwritten it)
    assert looked == [key("a")] and reporter.pending() == 1


# -- concurrency -------------------------------------------------------------------------------
def test_writes_overlap() -> None:
    """Four pods, four writers: the four writes are in flight at once (a write each returns
    only when all four have started)."""
    barrier = threading.Barrier(4, timeout=10)

    def together(k: PodKey, c: Condition) -> None:
        barrier.wait()  # BrokenBarrierError unless four writes are in flight

    pods = {key(n): pod(n) for n in "abcd"}
    sink = FakeStatusSink(pods, on_patch=together)
    reporter = ConditionReporter(LB_READY, sink, sink.lookup, Clock(), writers=4)
    with running(reporter):
        for n in "abcd":
            reporter.set_desired(key(n), want(n, NOT_REGISTERED))
        wait_for(lambda: len(sink.writes) == 4, 10, "four writes")
    assert sink.max_in_flight == 4


def test_a_pod_has_one_writer_at_a_time_and_its_newest_condition_wins() -> None:
    """Pod a's first write hangs; meanwhile a changes twice and other pods are written. No
    second writer takes a while its write is in flight; then a is written once more, with the
    newest condition (the one in between never is, and nothing older comes after it)."""
    entered, release = threading.Event(), threading.Event()

    def slow_a(k: PodKey, c: Condition) -> None:
        if k == key("a") and not entered.is_set():
            entered.set()
            assert release.wait(10)

    pods = {key(n): pod(n) for n in "abc"}
    sink = FakeStatusSink(pods, on_patch=slow_a)
    reporter = ConditionReporter(LB_READY, sink, sink.lookup, Clock(), writers=4)
    with running(reporter):
        reporter.set_desired(key("a"), want("a", NOT_REGISTERED))
        assert entered.wait(10)
        reporter.set_desired(key("a"), want("a", REGISTERING))
        reporter.set_desired(key("a"), want("a", HEALTHY))
        for n in "bc":
            reporter.set_desired(key(n), want(n, NOT_REGISTERED))
        wait_for(lambda: written(sink, "b") and written(sink, "c"), 10, "b and c written")
        assert written(sink, "a") == []  # still in flight, and not taken by a second writer
        release.set()
        wait_for(lambda: reporter.pending() == 0, 10, "all written")
    assert written(sink, "a") == [NOT_REGISTERED, HEALTHY]
    assert sink.max_in_flight_per_pod == 1
    assert sink.pods[key("a")].condition(LB_READY) == sink.conditions[key("a")]


def test_a_condition_changed_while_waiting_for_the_rate_limit_is_written_as_it_is_now() -> None:
    """The writer waits for a token, then writes the newest desired condition, not the one it
    saw before the wait."""
    clock = FakeClock()
    sink = FakeStatusSink({key("a"): pod("a")})
    reporter = ConditionReporter(LB_READY, sink, sink.lookup, clock, rate_per_s=1, burst=1)
    reporter.bucket.delay()  # the only token is gone: the next write waits a second
    reporter.set_desired(key("a"), want("a", REGISTERING))
    thread = threading.Thread(target=reporter.write_queued, daemon=True)
    thread.start()
    wait_for(lambda: reporter.bucket.tokens < 0, 5, "the writer waiting for its token")
    reporter.set_desired(key("a"), want("a", HEALTHY))
    clock.advance(1.0)
    thread.join(5)
    assert written(sink, "a") == [HEALTHY]


# -- the rate limit ----------------------------------------------------------------------------
def test_the_bucket_bounds_the_rate_of_all_writers_together() -> None:
    """10 writes/s, burst 2, four writers, twelve pods: by fake time T at most 2 + 10 T
    writes."""
    clock = FakeClock()
    start = clock.monotonic()
    stamps: list[float] = []
    pods = {key(f"p{i}"): pod(f"p{i}") for i in range(12)}
    sink = FakeStatusSink(pods, on_patch=lambda k, c: stamps.append(clock.monotonic() - start))
    reporter = ConditionReporter(
        LB_READY, sink, sink.lookup, clock, rate_per_s=10, burst=2, writers=4
    )
    with running(reporter):
        for k in pods:
            reporter.set_desired(k, want(k.name, NOT_REGISTERED))
        for _ in range(200):
            if len(sink.writes) == 12:
                break
            time.sleep(0.01)  # the writers keep up with the fake time
            clock.advance(0.02)
    assert len(sink.writes) == 12
    for n, t in enumerate(sorted(stamps), start=1):
        assert n <= 2 + 10 * t + 1e-6, f"write {n} at {t:.2f}s: faster than the rate"
    assert max(stamps) < 2.0  # and not much slower: (12 - 2) / 10 s


# -- metrics and failures ----------------------------------------------------------------------
def test_the_wait_is_from_pending_to_written_across_retries() -> None:
    clock = FakeClock()
    fail = [True]

    def flaky(k: PodKey, c: Condition) -> None:
        if fail.pop() if fail else False:
            raise TransientError("503")

    waits: list[float] = []
    sink = FakeStatusSink({key("a"): pod("a")}, on_patch=flaky)
    reporter = ConditionReporter(LB_READY, sink, sink.lookup, clock, on_wait=waits.append)
    reporter.set_desired(key("a"), want("a", NOT_REGISTERED))
    clock.advance(2.0)
    assert reporter.write_queued() == 1  # failed: waits to retry
    assert reporter.pending() == 1 and sink.writes == [] and waits == []
    assert reporter.write_queued() == 0  # not yet
    clock.advance(1.0)
    assert reporter.write_queued() == 1
    assert waits == [3.0] and reporter.pending() == 0
    reporter.set_desired(key("a"), want("a", NOT_REGISTERED, "other words"))
    reporter.write_queued()  # message only: checked, not written, no wait observed
    assert waits == [3.0] and len(sink.writes) == 1


def test_a_writer_that_fails_stops_the_others_and_run_raises() -> None:
    def broken(k: PodKey, c: Condition) -> None:
        raise RuntimeError("bug")

    sink = FakeStatusSink({key("a"): pod("a")}, on_patch=broken)
    reporter = ConditionReporter(LB_READY, sink, sink.lookup, Clock(), writers=3)
    reporter.set_desired(key("a"), want("a", NOT_REGISTERED))
    with pytest.raises(RuntimeError, match="bug"):
        reporter.run(threading.Event())


def test_a_write_the_cache_did_not_show_yet_is_put_right_when_the_pod_is_marked_dirty() -> None:
    """The writer compares with the informer's cache, which may not show its own last write
    yet: wanting the old condition back then looks like nothing to do. The leader marks each
    pod dirty on its watch events (agent/runtime.py), and the check then finds the difference."""
    sink = FakeStatusSink()  # the API server: it keeps what was written
    cache = {key("a"): pod("a", REGISTERING)}  # the informer, one write behind
    reporter = ConditionReporter(LB_READY, sink, cache.get, FakeClock())
    reporter.set_desired(key("a"), want("a", HEALTHY))
    reporter.write_queued()
    reporter.set_desired(key("a"), want("a", REGISTERING))
    reporter.write_queued()
    assert written(sink, "a") == [HEALTHY]  # skipped: the cache shows Registering already
    cache[key("a")] = pod("a", HEALTHY)  # the watch event of our write arrives
    reporter.mark_dirty(key("a"))
    reporter.write_queued()
    assert written(sink, "a") == [HEALTHY, REGISTERING]


def test_a_slow_event_does_not_hold_the_pods_next_write() -> None:
    """A transition's Event is a second request: sent by a thread of its own, so the pod's
    next condition (Registering, then Healthy a round later) does not wait for it (under churn
    at 30,000 pods the Event held each pod's next write behind it)."""
    release = threading.Event()

    class SlowEvents(FakeStatusSink):
        def emit_event(self, pod: Pod, event_type: str, reason: str, message: str) -> None:
            release.wait(10)
            super().emit_event(pod, event_type, reason, message)

    sink = SlowEvents({key("a"): pod("a", NOT_REGISTERED)})
    reporter = ConditionReporter(LB_READY, sink, sink.lookup, Clock(), rate_per_s=100)
    with running(reporter):
        reporter.set_desired(key("a"), want("a", REGISTERING))
        wait_for(lambda: written(sink, "a") == [REGISTERING], 5, "Registering written")
        reporter.set_desired(key("a"), want("a", HEALTHY))
        wait_for(lambda: len(written(sink, "a")) == 2, 3, "Healthy written, Event pending")
        assert sink.events == []  # the first Event is still on its way
        release.set()
        wait_for(lambda: len(sink.events) == 2, 5, "both Events sent, in order")
    assert [r for _, _, r in sink.events] == ["LbReadyRegistering", "LbReadyTrue"]
    assert written(sink, "a") == [REGISTERING, HEALTHY]


def test_a_write_is_not_written_again_while_its_watch_event_is_on_the_way() -> None:
    """Until the cache shows a write, the pod's earlier events still show the condition from
    before: marked dirty by one of them, the pod is not written again (twice the requests and
    the Events under churn at 30,000 pods); looked at again once its event should have come,
    and written then if the cache still differs (someone else changed it)."""
    clock = FakeClock()
    sink = FakeStatusSink()  # the API server: it keeps what was written
    cache = {key("a"): pod("a", REGISTERING)}  # the informer, behind
    reporter = ConditionReporter(LB_READY, sink, cache.get, clock)
    reporter.set_desired(key("a"), want("a", HEALTHY))
    reporter.write_queued()
    reporter.mark_dirty(key("a"))  # an event from before the write
    clock.advance(ECHO_S / 2)
    reporter.write_queued()
    assert written(sink, "a") == [HEALTHY] and len(sink.events) == 1
    cache[key("a")] = pod("a", HEALTHY)  # its event came: nothing left to do
    clock.advance(ECHO_S)
    reporter.write_queued()
    assert written(sink, "a") == [HEALTHY] and reporter.pending() == 0
    # someone puts it back while our write is on its way: put right after ECHO_S
    reporter.set_desired(key("a"), want("a", REGISTERING))
    reporter.write_queued()
    cache[key("a")] = pod("a", HEALTHY)  # another writer's, after ours
    reporter.mark_dirty(key("a"))
    reporter.write_queued()
    assert written(sink, "a") == [HEALTHY, REGISTERING]
    clock.advance(ECHO_S)
    reporter.write_queued()
    assert written(sink, "a") == [HEALTHY, REGISTERING, REGISTERING]


def test_a_pod_forgotten_while_it_is_written_leaves_nothing_behind() -> None:
    """(From a review: what was written was noted after the pod had been forgotten, and stayed.)"""
    sink = FakeStatusSink({key("a"): pod("a")})
    reporter = ConditionReporter(LB_READY, sink, sink.lookup, FakeClock())
    sink.on_patch = lambda k, c: reporter.forget(k)  # deleted while its write is in flight
    reporter.set_desired(key("a"), want("a", HEALTHY))
    reporter.write_queued()
    assert written(sink, "a") == [HEALTHY] and reporter._wrote == {}


def test_a_deferred_write_is_counted_apart() -> None:
    outcomes: list[str] = []
    cache = {key("a"): pod("a", REGISTERING)}
    reporter = ConditionReporter(
        LB_READY, FakeStatusSink(), cache.get, FakeClock(), on_write=lambda o, r: outcomes.append(o)
    )
    reporter.set_desired(key("a"), want("a", HEALTHY))
    reporter.write_queued()
    reporter.mark_dirty(key("a"))
    reporter.write_queued()
    assert outcomes == ["written", "deferred"]
