"""Drain time is measured on the node's monotonic clock (issue 17, defect 13).

The pod's ``deletionTimestamp`` is the API server's clock; comparing it with the node's wall
clock made a node whose clock runs ahead time drains out early (a clock 25 s ahead left a 27 s
drain 2 s).
"""

from __future__ import annotations

import datetime as dt
import threading

from agent.clock import FakeClock
from agent.model import LB_READY, Condition, Pod
from agent.node.drain import Activity, DeletionsSeen, DrainManager, Outcome

PORTS = frozenset({8080})


class TickingClock(FakeClock):
    """Fake time that moves by the whole timeout whenever someone waits; its wall clock runs
    ``ahead_s`` ahead of the API server's."""

    def __init__(self, ahead_s: float) -> None:
        super().__init__()
        self.ahead_s = ahead_s

    def now(self) -> dt.datetime:
        return super().now() + dt.timedelta(seconds=self.ahead_s)

    def server_now(self) -> dt.datetime:
        return super().now()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        if not event.is_set():
            self.advance(timeout)
        return event.is_set()


def deleted_pod(clock: TickingClock, grace: int = 30) -> Pod:
    """Deleted just now by the API server's clock: deletionTimestamp = now + grace."""
    stamp = (clock.server_now() + dt.timedelta(seconds=grace)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Pod(
        "shop", "web", "u1", "n1", ("10.0.0.1",), "Running", terminating=True,
        grace_period_s=grace, deletion_grace_s=grace, deletion_timestamp=stamp,
        readiness_gates=(LB_READY,), conditions=(Condition(LB_READY, "False", "Draining"),),
    )  # fmt: skip


def drain_held_s(ahead_s: float) -> tuple[float, Outcome | None]:
    """How long (node monotonic time) a drain that never gets quiet is held."""
    clock = TickingClock(ahead_s)
    pod = deleted_pod(clock)
    m = DrainManager(
        "n1", lambda ns, n: pod, lambda key: pod, lambda: [],
        lambda p: (("/run/netns/x",), 1, PORTS), lambda paths, inode: [Activity(8080, 10)],
        lambda *a: None, clock, poll_s=0.5,
    )  # fmt: skip
    t0 = clock.monotonic()
    result = m.drain("shop", "web")
    return clock.monotonic() - t0, result.outcome


def test_a_node_clock_ahead_does_not_cut_the_drain_short() -> None:
    for ahead in (0.0, 25.0, -40.0):
        held, outcome = drain_held_s(ahead)
        assert outcome is Outcome.TIMEOUT
        assert 27.0 <= held <= 27.5, f"clock {ahead:+} s: held {held:.1f} s, want 27 s"


def test_the_drain_counts_from_when_the_node_first_saw_the_deletion() -> None:
    """The hook may come later than the deletion (or the agent restarted): the time since the
    node's informer first saw the deletion counts, on the monotonic clock."""
    clock = TickingClock(0.0)
    pod = deleted_pod(clock)
    seen_at = clock.monotonic()
    clock.advance(20.0)  # the node saw the deletion 20 s ago
    m = DrainManager(
        "n1", lambda ns, n: pod, lambda key: pod, lambda: [],
        lambda p: (("/run/netns/x",), 1, PORTS), lambda paths, inode: [Activity(8080, 10)],
        lambda *a: None, clock, poll_s=0.5, first_seen=lambda p: seen_at,
    )  # fmt: skip
    t0 = clock.monotonic()
    result = m.drain("shop", "web")
    assert result.outcome is Outcome.TIMEOUT
    assert 7.0 <= clock.monotonic() - t0 <= 7.5  # 27 s from the deletion, 20 s of it gone
    assert 27.0 <= result.seconds <= 27.5


def test_deletions_seen_keeps_the_first_sighting_per_pod_uid() -> None:
    clock = FakeClock()
    seen = DeletionsSeen(clock)
    live = deleted_pod(TickingClock(0.0))
    running = Pod("shop", "web", "u1", "n1", (), "Running")
    seen.observe(live.key, running)
    assert seen.first_seen(live) is None  # not terminating yet
    seen.observe(live.key, live)
    at = clock.monotonic()
    clock.advance(5)
    seen.observe(live.key, live)  # later updates keep the first sighting
    assert seen.first_seen(live) == at
    namesake = Pod("shop", "web", "u2", "n1", (), "Running", terminating=True)
    assert seen.first_seen(namesake) is None  # another pod of the same name
    seen.observe(live.key, None)  # gone
    assert seen.first_seen(live) is None
