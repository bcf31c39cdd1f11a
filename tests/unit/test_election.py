"""Leader election against an in-memory Lease with resourceVersion / 409 semantics, on fake time.

The electors run in their own threads as in production; the tests move a FakeClock and wait
(a few real milliseconds) for the threads to react. A test whose verdict depends on *when* an
elector makes its attempts steps the clock only once the elector is idle again
(:func:`after_attempt`): a thread the machine's load delays then cannot slip off its schedule.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.errors import Conflict, NotFound, PodlbError, TransientError, Unauthorized
from agent.leader.election import ElectionConfig, LeaderElector, LeaderScope
from agent.leader.lease_record import LeaseRecord

CONFIG = ElectionConfig(
    lease_duration_s=15.0, renew_deadline_s=10.0, retry_period_s=2.0, acquire_jitter=0.0
)


# -- an in-memory Lease: one server, one client view per elector (for failure injection)


class LeaseServer:
    """The Lease as the API server keeps it: resourceVersion bumps on writes, 409 when stale."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.record: LeaseRecord | None = None
        self.rv = 0
        self.log: list[tuple[float, str, str, bool]] = []  # (fake time, client, op, ok)
        self.get_barrier: threading.Barrier | None = None  # make candidates read together

    def store(self, name: str) -> FakeLeaseStore:
        return FakeLeaseStore(self, name)

    def write(self, record: LeaseRecord) -> LeaseRecord:
        """Another agent (not an elector under test) writes the Lease."""
        with self.lock:
            self.rv += 1
            self.record = dataclasses.replace(record, resource_version=str(self.rv))
            return self.record

    def last_ok(self, client: str, op: str = "update") -> float:
        with self.lock:
            return max(t for t, c, o, ok in self.log if c == client and o == op and ok)


class FakeLeaseStore:
    """What one elector sees; ``fail`` makes every call raise (or hang with ``hang``)."""

    def __init__(self, server: LeaseServer, name: str) -> None:
        self.server = server
        self.name = name
        self.fail: PodlbError | None = None
        self.hang: threading.Event | None = None  # calls block until it is set, then fail
        # op -> fake seconds the next such call takes before the server acts on it and answers
        # (an API server that froze, then recovered); used once
        self.lag: dict[str, float] = {}
        self.calls = 0

    def _enter(self, op: str) -> None:
        self.calls += 1
        lag = self.lag.pop(op, 0.0)
        if lag:
            self.server.clock.advance(lag)
        if self.hang is not None:
            self.hang.wait(5)
            self._log(op, False)
            raise TransientError(f"{op} leases: timed out")
        if self.fail is not None:
            self._log(op, False)
            raise self.fail

    def _log(self, op: str, ok: bool) -> None:
        with self.server.lock:
            self.server.log.append((self.server.clock.monotonic(), self.name, op, ok))

    def get(self) -> LeaseRecord | None:
        self._enter("get")
        with self.server.lock:
            record = self.server.record
        barrier = self.server.get_barrier
        if barrier is not None:
            barrier.wait(2)
        self._log("get", True)
        return record

    def create(self, record: LeaseRecord) -> LeaseRecord:
        self._enter("create")
        s = self.server
        with s.lock:
            if s.record is not None:
                s.log.append((s.clock.monotonic(), self.name, "create", False))
                raise Conflict("create leases: HTTP 409 AlreadyExists")
            s.rv += 1
            s.record = dataclasses.replace(record, resource_version=str(s.rv))
            s.log.append((s.clock.monotonic(), self.name, "create", True))
            return s.record

    def update(self, record: LeaseRecord) -> LeaseRecord:
        self._enter("update")
        s = self.server
        with s.lock:
            if s.record is None:
                s.log.append((s.clock.monotonic(), self.name, "update", False))
                raise NotFound("update leases: HTTP 404")
            if record.resource_version != s.record.resource_version:
                s.log.append((s.clock.monotonic(), self.name, "update", False))
                raise Conflict("update leases: HTTP 409 Conflict")
            s.rv += 1
            s.record = dataclasses.replace(record, resource_version=str(s.rv))
            s.log.append((s.clock.monotonic(), self.name, "update", True))
            return s.record


# -- running electors


def eventually(pred: Callable[[], bool], timeout: float = 3.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        time.sleep(0.001)


class TrackingClock(FakeClock):
    """A FakeClock that knows which threads wait on it, so a test can tell an idle elector."""

    def __init__(self) -> None:
        super().__init__()
        self._waiting: dict[threading.Thread, int] = {}
        self._waiting_lock = threading.Lock()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        me = threading.current_thread()
        with self._waiting_lock:
            self._waiting[me] = self._waiting.get(me, 0) + 1
        try:
            return super().wait(event, timeout)
        finally:
            with self._waiting_lock:
                self._waiting[me] -= 1

    def is_waiting(self, thread: threading.Thread) -> bool:
        with self._waiting_lock:
            return self._waiting.get(thread, 0) > 0


def settle() -> None:
    """Let the elector threads react to a clock step (they wake at once on advance)."""
    time.sleep(0.015)


class Candidate:
    """An elector running in a thread, with a leader work that records its scope."""

    def __init__(
        self,
        server: LeaseServer,
        identity: str,
        config: ElectionConfig = CONFIG,
        lead: Callable[[LeaderScope], None] | None = None,
        release: bool = True,
    ) -> None:
        self.clock = server.clock
        self.store = server.store(identity)
        self.changes: list[tuple[bool, str | None]] = []
        self.scopes: list[LeaderScope] = []
        self.stopped_at: list[float] = []  # fake time the leader work saw scope.stopped
        self.entered_leading: list[bool] = []  # scope.is_leading() as each leader work began
        self.elector = LeaderElector(
            self.store, identity, self.clock, config, on_change=self._changed
        )
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._lead = lead or self._work
        self.release = release
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _changed(self, leading: bool, holder: str | None) -> None:
        self.changes.append((leading, holder))

    def _work(self, scope: LeaderScope) -> None:
        self.entered_leading.append(scope.is_leading())
        self.scopes.append(scope)
        while not scope.wait(0.05):
            pass
        self.stopped_at.append(self.clock.monotonic())

    def _run(self) -> None:
        try:
            self.elector.run(self.stop, self._lead, release_on_stop=self.release)
        except BaseException as exc:
            self.error = exc

    def start(self) -> Candidate:
        self.thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def clock() -> TrackingClock:
    return TrackingClock()


@pytest.fixture
def server(clock: FakeClock) -> LeaseServer:
    return LeaseServer(clock)


@pytest.fixture
def candidates() -> Iterator[list[Candidate]]:
    started: list[Candidate] = []
    yield started
    for c in started:
        c.stop.set()
        if c.store.hang is not None:
            c.store.hang.set()
    for c in started:
        c.thread.join(5)


def start(candidates: list[Candidate], server: LeaseServer, identity: str, **kw: Any) -> Candidate:
    c = Candidate(server, identity, **kw)
    candidates.append(c)
    return c.start()


def advance(clock: FakeClock, seconds: float, step: float = 0.5) -> None:
    end = clock.monotonic() + seconds
    while clock.monotonic() < end - 1e-9:
        clock.advance(min(step, end - clock.monotonic()))
        settle()


def attempts(server: LeaseServer, client: str) -> list[float]:
    """Fake times of ``client``'s attempts (each begins with a read, unless a leader renews)."""
    with server.lock:
        return [t for t, c, op, _ in server.log if c == client and op == "get"]


def idle(c: Candidate) -> bool:
    """``c``'s elector waits on the clock for its next attempt (none is due)."""
    assert isinstance(c.clock, TrackingClock)
    return c.clock.is_waiting(c.thread)


def after_attempt(server: LeaseServer, c: Candidate, count: int) -> float:
    """Wait until ``c`` has made ``count`` attempts and is idle again (so the clock does not
    move under an attempt); the fake time of the last one."""
    eventually(
        lambda: len(attempts(server, c.elector.identity)) >= count and idle(c),
        what=f"attempt {count} of {c.elector.identity}",
    )
    return attempts(server, c.elector.identity)[-1]


def next_look(server: LeaseServer, c: Candidate) -> float:
    """Move the clock to ``c``'s next look, one retry period after its last (the clock stands
    there), and wait until it is done; its fake time."""
    name = c.elector.identity
    last = attempts(server, name)
    c.clock.advance(CONFIG.retry_period_s)
    t = after_attempt(server, c, len(last) + 1)
    assert t == last[-1] + CONFIG.retry_period_s
    return t


def looks_while_held(server: LeaseServer, c: Candidate, since: float) -> float:
    """``c`` looks every retry period, and at every look within a lease duration of ``since``
    (when it saw the record change) the lease is still held: ``c`` does not lead. The fake time
    of its first look after that."""
    t = attempts(server, c.elector.identity)[-1]
    while t < since + CONFIG.lease_duration_s:
        assert not c.elector.is_leader() and not c.scopes, f"{c.elector.identity} leads at {t}"
        t = next_look(server, c)
    return t


def other_holds(server: LeaseServer, holder: str = "other", skew_s: float = 0.0) -> LeaseRecord:
    """Another agent (re)writes the lease; its wall clock is ``skew_s`` off ours."""
    old = server.record
    renew = server.clock.now() + dt.timedelta(seconds=skew_s)
    return server.write(
        LeaseRecord(
            holder,
            15,
            old.acquire_time if old and old.holder == holder else renew,
            renew,
            old.transitions if old else 0,
        )
    )


# -- configuration


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"renew_deadline_s": 15.0}, "renew_deadline_s .* shorter than lease_duration_s"),
        ({"renew_deadline_s": 20.0}, "renew_deadline_s .* shorter than lease_duration_s"),
        ({"retry_period_s": 10.0}, "retry_period_s .* shorter than renew_deadline_s"),
        ({"lease_duration_s": 0.0}, "lease_duration_s must be > 0"),
        ({"renew_deadline_s": -1.0}, "renew_deadline_s must be > 0"),
        ({"retry_period_s": 0.0}, "retry_period_s must be > 0"),
        ({"acquire_jitter": -0.1}, "acquire_jitter must be >= 0"),
        ({"leader_stop_timeout_s": 0.0}, "leader_stop_timeout_s must be > 0"),
    ],
)
def test_config_is_validated(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ElectionConfig(**kwargs)


def test_config_defaults_are_client_go() -> None:
    c = ElectionConfig()
    assert (c.lease_duration_s, c.renew_deadline_s, c.retry_period_s) == (15.0, 10.0, 2.0)
    assert c.advertised_duration_s == 15
    assert ElectionConfig(1.5, 1.0, 0.2).advertised_duration_s == 2  # rounded up, never down


def test_empty_identity_is_refused(server: LeaseServer, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="identity"):
        LeaderElector(server.store("x"), "", clock)


# -- acquiring


def test_acquires_a_missing_lease(
    server: LeaseServer, clock: FakeClock, candidates: list[Candidate]
) -> None:
    a = start(candidates, server, "a")
    eventually(a.elector.is_leader, what="a leads")
    rec = server.record
    assert rec is not None
    assert (rec.holder, rec.lease_duration_s, rec.transitions) == ("a", 15, 0)
    assert rec.acquire_time == rec.renew_time == clock.now()
    eventually(lambda: a.changes == [(True, "a")], what="on_change")
    assert a.elector.observed_holder() == "a"
    eventually(lambda: len(a.scopes) == 1)
    assert a.scopes[0].is_leading()


def test_renews_every_retry_period(
    server: LeaseServer, clock: FakeClock, candidates: list[Candidate]
) -> None:
    a = start(candidates, server, "a")
    eventually(a.elector.is_leader)
    first = server.record
    assert first is not None
    advance(clock, 2.0)
    eventually(lambda: server.record is not None and server.record.renew_time == clock.now())
    rec = server.record
    assert rec is not None
    assert rec.acquire_time == first.acquire_time and rec.transitions == 0
    assert a.changes == [(True, "a")]  # renewals are no change of leadership


@pytest.mark.parametrize("holder", ["", None])
def test_acquires_a_released_lease_at_once(
    server: LeaseServer, clock: FakeClock, candidates: list[Candidate], holder: str | None
) -> None:
    now = clock.now()
    server.write(LeaseRecord(holder, 1, now, now, 3))
    a = start(candidates, server, "a")
    eventually(a.elector.is_leader, what="a takes the released lease")
    rec = server.record
    assert rec is not None and rec.holder == "a" and rec.transitions == 4
    assert server.clock.monotonic() == 1000.0  # no time had to pass


def test_does_not_acquire_while_the_holder_renews(
    server: LeaseServer, clock: FakeClock, candidates: list[Candidate]
) -> None:
    other_holds(server)
    a = start(candidates, server, "a")
    eventually(lambda: a.store.calls >= 1)
    for _ in range(30):  # 60 s: four lease durations
        advance(clock, 2.0, step=2.0)
        other_holds(server)
        assert not a.elector.is_leader()
    assert a.elector.observed_holder() == "other"
    assert a.changes == [(False, "other")]
    assert server.record is not None and server.record.holder == "other"


@pytest.mark.parametrize(
    "skew_s",
    [
        pytest.param(3600.0, id="holder-clock-1h-ahead"),
        pytest.param(0.0, id="no-skew"),
        pytest.param(-3600.0, id="holder-clock-1h-behind"),
    ],
)
def test_expiry_is_judged_on_our_monotonic_clock(
    server: LeaseServer, clock: FakeClock, candidates: list[Candidate], skew_s: float
) -> None:
    other_holds(server, skew_s=skew_s)  # written once, then the holder dies
    a = start(candidates, server, "a")
    seen_at = after_attempt(server, a, 1)  # a's first observation of the record
    # looks at +0 .. +14: not expired yet, whatever the wall clocks say
    assert looks_while_held(server, a, seen_at) == seen_at + 16.0  # > 15 since we saw it change
    eventually(a.elector.is_leader, what="takeover after expiry")
    rec = server.record
    assert rec is not None and rec.holder == "a" and rec.transitions == 1
    assert rec.acquire_time == clock.now()
    eventually(lambda: a.changes == [(False, "other"), (True, "a")], what="on_change")


def test_a_changed_record_restarts_the_expiry_countdown(
    server: LeaseServer, clock: FakeClock, candidates: list[Candidate]
) -> None:
    other_holds(server)
    a = start(candidates, server, "a")
    first = after_attempt(server, a, 1)
    for _ in range(5):  # +2 .. +10
        next_look(server, a)
    other_holds(server, skew_s=-60.0)  # renewed with a wall time in the past: still a change
    changed = next_look(server, a)  # +12: a sees the change
    assert changed == first + 12.0
    # looks up to +26: 26 s since the first sight, but 14 s since a saw the change
    assert looks_while_held(server, a, changed) == first + 28.0
    eventually(a.elector.is_leader)


# -- losing and giving up leadership


def cut(store: FakeLeaseStore, mode: str) -> None:
    if mode == "hang":
        store.hang = threading.Event()
    elif mode == "unauthorized":
        store.fail = Unauthorized("update leases: HTTP 403 Forbidden")
    else:
        store.fail = TransientError("update leases: connection refused")


@pytest.mark.parametrize("mode", ["transient", "unauthorized", "hang"])
def test_stops_leading_before_the_lease_can_expire(
    server: LeaseServer, clock: FakeClock, candidates: list[Candidate], mode: str
) -> None:
    a = start(candidates, server, "a")
    eventually(lambda: len(a.scopes) == 1 and idle(a))
    for _ in range(2):  # two renewals, each done before the clock moves on
        calls = a.store.calls
        clock.advance(CONFIG.retry_period_s)
        eventually(lambda: a.store.calls > calls and idle(a), what="a renewal")  # noqa: B023
    clock.advance(0.5)
    cut(a.store, mode)
    last_ok = server.last_ok("a")
    assert last_ok == clock.monotonic() - 0.5
    scope = a.scopes[0]
    # the leader until the renew deadline of its last good renewal (its start: no fake time
    # passes in a call), long before others may take over
    deadline = last_ok + CONFIG.renew_deadline_s
    assert deadline < last_ok + CONFIG.lease_duration_s
    while clock.monotonic() < deadline:
        assert a.elector.is_leader() and not scope.stopped.is_set(), clock.monotonic()
        clock.advance(0.25)
        settle()
    assert clock.monotonic() == deadline
    assert not a.elector.is_leader()
    eventually(scope.stopped.is_set, what="the watchdog stops the leader work")
    eventually(lambda: a.changes[-1] == (False, None), what="on_change(False)")
    eventually(lambda: len(a.stopped_at) == 1, what="the leader work returned")
    assert a.stopped_at == [deadline]
    if mode == "hang":
        assert a.store.hang is not None
        a.store.hang.set()
    a.store.fail = None
    a.store.hang = None
    eventually(lambda: idle(a), what="the failed attempt ends")
    clock.advance(CONFIG.retry_period_s)  # an attempt is due: the next is at most this far
    # reachable again: our own lease is still valid, so we lead again
    eventually(lambda: len(a.scopes) == 2, what="leading again")
    assert a.changes[-1] == (True, "a")
    assert server.record is not None and server.record.transitions == 0


def test_steps_down_at_once_when_someone_else_holds_the_lease(
    server: LeaseServer, clock: FakeClock, candidates: list[Candidate]
) -> None:
    a = start(candidates, server, "a")
    eventually(lambda: len(a.scopes) == 1)
    other_holds(server, "b")  # e.g. an operator edited it
    advance(clock, 2.0)
    eventually(lambda: a.scopes[0].stopped.is_set(), what="step down")
    eventually(lambda: a.changes == [(True, "a"), (False, "b")], what="on_change")
    assert server.record is not None and server.record.holder == "b"


def test_releases_the_lease_on_stop(
    server: LeaseServer, clock: FakeClock, candidates: list[Candidate]
) -> None:
    a = start(candidates, server, "a")
    eventually(lambda: len(a.scopes) == 1)
    advance(clock, 2.0)
    a.finish()
    rec = server.record
    assert rec is not None
    assert (rec.holder, rec.lease_duration_s, rec.transitions) == ("", 1, 0)
    assert rec.renew_time == rec.acquire_time == clock.now()
    assert a.scopes[0].stopped.is_set() and a.stopped_at  # leader work ended before release
    assert a.changes == [(True, "a"), (False, None)]
    assert a.error is None
    # a successor takes it on its first attempt, without waiting for any expiry
    b = start(candidates, server, "b")
    eventually(b.elector.is_leader, what="b takes over at once")
    assert server.record is not None and server.record.transitions == 1


def test_without_release_the_lease_must_expire(
    server: LeaseServer, clock: FakeClock, candidates: list[Candidate]
) -> None:
    a = start(candidates, server, "a", release=False)
    eventually(lambda: len(a.scopes) == 1)
    a.finish()
    assert server.record is not None and server.record.holder == "a"
    b = start(candidates, server, "b")
    seen = after_attempt(server, b, 1)  # b's first sight of a's record
    # Every look within the lease duration finds a's lease still valid. (Stepped one look at a
    # time: b, delayed by a loaded machine, used to look 0.5 s late, then a retry period after
    # the last step of the test, and never took over.)
    took_over = looks_while_held(server, b, seen)
    retry, duration = CONFIG.retry_period_s, CONFIG.lease_duration_s
    assert took_over == seen + math.ceil(duration / retry) * retry  # +16: the first look past +15
    eventually(b.elector.is_leader, what="b takes over the expired lease")
    rec = server.record
    assert rec is not None and (rec.holder, rec.transitions) == ("b", 1)


DEADLINE = CONFIG.renew_deadline_s


@pytest.mark.parametrize(
    "lags",
    [
        pytest.param({"get": DEADLINE + 0.5}, id="read-answered-past-the-deadline"),
        pytest.param({"create": DEADLINE + 0.5}, id="write-answered-past-the-deadline"),
        # 4 s left for the first renewal, made at once, which takes 4.5 s
        pytest.param({"get": 0.6 * DEADLINE, "update": 0.45 * DEADLINE}, id="near-the-deadline"),
    ],
)
def test_a_slow_acquire_starts_no_term_and_renews_at_once(
    server: LeaseServer,
    clock: FakeClock,
    candidates: list[Candidate],
    lags: dict[str, float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The API server froze, then answered the first attempt after its renew deadline (counted
    from the attempt's start), or so near it that the first renewal had too little time. Leading
    on that answer made a pointless term: the leader work started and was torn down at once.
    The elector renews at once instead and leads on the renewal."""
    a = Candidate(server, "a")
    a.store.lag.update(lags)
    began, began_wall = clock.monotonic(), clock.now()  # a's calls move the clock from here
    candidates.append(a.start())
    eventually(lambda: len(a.scopes) == 1 and idle(a), what="a leads")
    answered = began + sum(lags.values())
    assert a.entered_leading == [True], "the leader work began on an expired term"
    assert a.scopes[0].started_at == answered  # on the renewal made at once
    assert a.changes[-1] == (True, "a") and a.changes.count((True, "a")) == 1
    assert not [r for r in caplog.records if "stopped leading" in r.getMessage()]
    ops = [(op, ok) for _, c, op, ok in server.log if c == "a"]
    assert ops[:3] == [("get", True), ("create", True), ("update", True)]  # renewed in one call
    assert set(ops[3:]) <= {("update", True)}  # near the deadline the next renewal is due at once
    assert server.last_ok("a") == answered
    rec = server.record
    assert rec is not None and (rec.holder, rec.transitions) == ("a", 0)
    assert rec.acquire_time == began_wall  # the first write's
    advance(clock, CONFIG.retry_period_s)  # an ordinary renewal keeps the same term
    eventually(lambda: server.last_ok("a") == clock.monotonic(), what="a renews")
    assert a.scopes[0].is_leading() and len(a.scopes) == 1


class LateWorkClock(TrackingClock):
    """The leader work's thread starts ``late_s`` (fake) seconds late: time jumps at its first
    look at the clock (a loaded machine)."""

    def __init__(self, late_s: float) -> None:
        super().__init__()
        self.late_s = late_s
        self.late_thread: threading.Thread | None = None

    def monotonic(self) -> float:
        if self.late_thread is None and threading.current_thread().name == "podlb-leader-work":
            self.late_thread = threading.current_thread()
            self.advance(self.late_s)
        return super().monotonic()


def test_leader_work_that_starts_after_the_deadline_is_not_run(
    candidates: list[Candidate],
) -> None:
    clock = LateWorkClock(CONFIG.renew_deadline_s + 0.5)
    server = LeaseServer(clock)
    a = start(candidates, server, "a")
    eventually(lambda: a.changes[:2] == [(True, "a"), (False, None)], what="the term ends")
    late = clock.late_thread
    assert late is not None
    eventually(lambda: not late.is_alive() and idle(a), what="the late thread ends")
    clock.advance(CONFIG.retry_period_s)  # an attempt is due: the next is at most this far
    eventually(lambda: len(a.scopes) == 1, what="a new term")
    assert a.entered_leading == [True], "the leader work ran on an expired term"
    assert a.scopes[0].started_at >= 1000.0 + clock.late_s  # the new term's
    rec = server.record
    assert rec is not None and (rec.holder, rec.transitions) == ("a", 0)


def test_a_renewal_answered_after_the_renew_deadline_ends_the_term(
    server: LeaseServer, clock: FakeClock, candidates: list[Candidate]
) -> None:
    a = start(candidates, server, "a")
    eventually(lambda: len(a.scopes) == 1)
    a.store.lag["update"] = CONFIG.renew_deadline_s + 0.5  # the next renewal, answered late
    advance(clock, CONFIG.retry_period_s)
    eventually(lambda: len(a.stopped_at) == 1 and idle(a), what="the term ends")
    eventually(lambda: a.changes[:2] == [(True, "a"), (False, None)], what="on_change")
    advance(clock, CONFIG.retry_period_s)  # the lease was ours all along: a new term, no wait
    eventually(lambda: len(a.scopes) == 2, what="a new term")
    assert a.entered_leading == [True, True]
    rec = server.record
    assert rec is not None and (rec.holder, rec.transitions) == ("a", 0)


def test_an_exception_in_the_leader_work_ends_the_run_after_release(
    server: LeaseServer, clock: FakeClock, candidates: list[Candidate]
) -> None:
    def boom(scope: LeaderScope) -> None:
        raise KeyError("bug")

    a = start(candidates, server, "a", lead=boom)
    eventually(lambda: not a.thread.is_alive(), what="run ends")
    assert isinstance(a.error, KeyError)
    assert server.record is not None and server.record.holder == ""
    assert a.changes[-1] == (False, None)


def test_leader_work_returning_early_is_an_error(
    server: LeaseServer, clock: FakeClock, candidates: list[Candidate]
) -> None:
    a = start(candidates, server, "a", lead=lambda scope: None)
    eventually(lambda: not a.thread.is_alive(), what="run ends")
    assert isinstance(a.error, RuntimeError)
    assert "scope.stopped" in str(a.error)


def test_does_not_lead_again_while_the_old_leader_work_runs(
    server: LeaseServer, clock: FakeClock, candidates: list[Candidate]
) -> None:
    release = threading.Event()
    runs: list[threading.Thread] = []

    def stubborn(scope: LeaderScope) -> None:
        runs.append(threading.current_thread())
        scope.stopped.wait(5)
        release.wait(5)  # ignores the stop for a while

    a = start(candidates, server, "a", lead=stubborn)
    eventually(lambda: len(runs) == 1)
    other_holds(server, "b")
    advance(clock, 2.0)
    eventually(lambda: not a.elector.is_leader())
    server.write(LeaseRecord("", 1, clock.now(), clock.now(), 1))  # b released it
    advance(clock, 10.0)
    assert len(runs) == 1 and not a.elector.is_leader()
    release.set()
    eventually(lambda: not runs[0].is_alive() and idle(a), what="the old work returned")
    clock.advance(CONFIG.retry_period_s)  # an attempt is due: the next is at most this far
    eventually(a.elector.is_leader, what="leads once the old work returned")
    eventually(lambda: len(runs) == 2, what="the new leader work runs")


# -- races


@pytest.mark.parametrize("lease", ["missing", "released", "expired"])
def test_two_candidates_racing_never_both_lead(
    server: LeaseServer, clock: FakeClock, candidates: list[Candidate], lease: str
) -> None:
    now = clock.now()
    if lease == "released":
        server.write(LeaseRecord("", 1, now, now, 0))
    elif lease == "expired":
        server.write(LeaseRecord("dead", 15, now, now, 0))
    server.get_barrier = threading.Barrier(2)  # both read the same version, then both write
    a = start(candidates, server, "a")
    b = start(candidates, server, "b")
    if lease == "expired":  # both saw it at once, then it expires for both at once
        eventually(lambda: len(server.log) == 2, what="both read the lease")
        settle()
        clock.advance(16.0)
    eventually(lambda: a.elector.is_leader() or b.elector.is_leader())
    eventually(lambda: any(not ok for *_, ok in server.log), what="the loser's write")
    server.get_barrier = None
    losers = [op for _, _, op, ok in server.log if not ok]
    assert losers in (["create"], ["update"])  # the loser got a 409
    for _ in range(20):
        assert a.elector.is_leader() != b.elector.is_leader()
        advance(clock, 1.0, step=1.0)
    winner, loser = (a, b) if a.elector.is_leader() else (b, a)
    assert loser.elector.observed_holder() == winner.elector.identity
    assert not loser.scopes


def test_leadership_moves_without_overlap(
    server: LeaseServer, clock: FakeClock, candidates: list[Candidate]
) -> None:
    """Three candidates; the leader is cut off; every moment has at most one leader."""
    cs = [start(candidates, server, n) for n in ("a", "b", "c")]
    eventually(lambda: sum(c.elector.is_leader() for c in cs) == 1)
    first = next(c for c in cs if c.elector.is_leader())
    cut(first.store, "transient")
    leaders: set[str] = set()
    for _ in range(60):  # 30 s
        leading = [c.elector.identity for c in cs if c.elector.is_leader()]
        assert len(leading) <= 1, leading
        leaders.update(leading)
        clock.advance(0.5)
        settle()
    assert len(leaders) == 2 and first.elector.identity in leaders
    assert server.record is not None and server.record.transitions == 1
