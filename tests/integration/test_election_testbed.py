"""Leader election through the real ``kubernetes`` client against the API testbed, real time.

Short timings (lease 2 s, renew deadline 1 s, retry 0.2 s). Every leader's work records when it
acts; the tests assert that no two identities ever act at overlapping times.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client

from agent.clock import Clock
from agent.errors import Conflict, TransientError
from agent.kube.calls import Calls
from agent.kube.lease import LeaseStore
from agent.leader.election import ElectionConfig, LeaderElector, LeaderScope
from agent.leader.lease_record import LeaseRecord
from tests.testbed.kubeapi import KubeAPIServer

NS = "podlb"
LEASE = "podlb-leader"
CONFIG = ElectionConfig(lease_duration_s=2.0, renew_deadline_s=1.0, retry_period_s=0.2)
SAMPLE_S = 0.05
MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@dataclass
class Term:
    identity: str
    start: float
    end: float | None = None  # when the leader work returned
    samples: list[float] = field(default_factory=list)


class Recorder:
    """Who acted when (monotonic)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.terms: list[Term] = []

    def work(self, identity: str) -> Callable[[LeaderScope], None]:
        def lead(scope: LeaderScope) -> None:
            term = Term(identity, time.monotonic())
            with self.lock:
                self.terms.append(term)
            while not scope.wait(SAMPLE_S):
                term.samples.append(time.monotonic())  # "acting as the leader"
            term.end = time.monotonic()

        return lead

    def assert_no_overlap(self) -> None:
        with self.lock:
            terms = list(self.terms)
        now = time.monotonic()
        for i, a in enumerate(terms):
            for b in terms[i + 1 :]:
                if a.identity == b.identity:
                    continue
                a_end, b_end = a.end or now, b.end or now
                assert a_end < b.start or b_end < a.start, f"overlap: {a} and {b}"

    def leaders(self) -> list[str]:
        with self.lock:
            return [t.identity for t in self.terms]


class CutStore:
    """One agent's view of the Lease; ``cut`` makes it unreachable (a network partition that
    also loses the answer of a request in flight)."""

    def __init__(self, inner: LeaseStore) -> None:
        self.inner = inner
        self.cut = False

    def _check(self) -> None:
        if self.cut:
            raise TransientError("leases: cut off from the API server (test)")

    def get(self) -> LeaseRecord | None:
        self._check()
        record = self.inner.get()
        self._check()
        return record

    def create(self, record: LeaseRecord) -> LeaseRecord:
        self._check()
        out = self.inner.create(record)
        self._check()
        return out

    def update(self, record: LeaseRecord) -> LeaseRecord:
        self._check()
        out = self.inner.update(record)
        self._check()
        return out


class Agent:
    def __init__(self, api: KubeAPIServer, identity: str, recorder: Recorder, release: bool):
        self.identity = identity
        self.client = api.api_client()
        self.store = CutStore(LeaseStore(self.client, Calls(), NS, LEASE, timeout_s=0.5))
        self.changes: list[tuple[float, bool, str | None]] = []
        self.elector = LeaderElector(self.store, identity, Clock(), CONFIG, on_change=self._changed)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._lead = recorder.work(identity)
        self._release = release
        self.thread = threading.Thread(target=self._run, name=f"agent-{identity}", daemon=True)

    def _changed(self, leading: bool, holder: str | None) -> None:
        self.changes.append((time.monotonic(), leading, holder))

    def _run(self) -> None:
        try:
            self.elector.run(self.stop, self._lead, release_on_stop=self._release)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive()
        assert self.error is None


@pytest.fixture
def api() -> Iterator[KubeAPIServer]:
    with KubeAPIServer(port=0) as server:
        admin = server.api_client()
        client.CoreV1Api(admin).create_namespace({"metadata": {"name": NS}})
        admin.close()
        yield server


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    rec.assert_no_overlap()


AgentFactory = Callable[..., list[Agent]]


@pytest.fixture
def agents(api: KubeAPIServer, recorder: Recorder) -> Iterator[AgentFactory]:
    made: list[Agent] = []

    def make(*names: str, release: bool = True) -> list[Agent]:
        new = [Agent(api, n, recorder, release) for n in names]
        made.extend(new)
        for a in new:
            a.thread.start()
        return new

    yield make
    for a in made:
        a.stop.set()
    for a in made:
        a.thread.join(5)
        a.client.close()
    for a in made:
        assert a.error is None, a.error


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> float:
    """Poll ``pred`` every 5 ms; returns the seconds it took."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)
    return time.monotonic() - t0


def leaders(agents: list[Agent]) -> list[Agent]:
    return [a for a in agents if a.elector.is_leader()]


def hold_steady(agents: list[Agent], seconds: float) -> Agent:
    """Exactly one leader, the same one, for ``seconds``."""
    first = leaders(agents)
    assert len(first) == 1, [a.identity for a in first]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert leaders(agents) == first
        time.sleep(0.01)
    return first[0]


def steady_leader(agents: list[Agent], hold_s: float, within_s: float) -> Agent:
    """Wait (up to ``within_s``) for one leader that stays the same for ``hold_s``.

    An attempt that straddled the end of an outage starts no term when it took more than half
    the renew deadline (the elector renews at once and leads on that); one a little faster
    starts a term that still ends at once if its first renewal, on a loaded machine, takes
    longer than the time left. Such a term never overlaps another one (the ``recorder``
    fixture checks that)."""
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        first = leaders(agents)
        steady_until = time.monotonic() + hold_s
        while len(first) == 1 and leaders(agents) == first:
            if time.monotonic() >= steady_until:
                return first[0]
            time.sleep(0.01)
        time.sleep(0.005)
    raise AssertionError(f"no leader held for {hold_s}s within {within_s}s")


def raw_lease(api: KubeAPIServer) -> dict[str, Any]:
    admin = api.api_client()
    try:
        resp = client.CoordinationV1Api(admin).read_namespaced_lease(
            LEASE, NS, _preload_content=False
        )
        return dict(json.loads(resp.data))
    finally:
        admin.close()


def test_three_agents_one_leader_and_a_clean_handover(
    api: KubeAPIServer, recorder: Recorder, agents: AgentFactory
) -> None:
    group = agents("a", "b", "c")
    wait_for(lambda: len(leaders(group)) == 1, 2.0, "a leader")
    leader = hold_steady(group, 1.0)  # ~5 renewals; nobody else leads meanwhile
    lease = raw_lease(api)
    spec = lease["spec"]
    assert spec["holderIdentity"] == leader.identity
    assert spec["leaseDurationSeconds"] == 2
    assert spec["leaseTransitions"] == 0
    assert MICRO_TIME.match(spec["acquireTime"]) and MICRO_TIME.match(spec["renewTime"])
    assert spec["renewTime"] > spec["acquireTime"]
    # whoever raced to create it and lost got a 409 (and did not lead)
    creates = [r.code for r in api.requests if r.resource == "leases" and r.verb == "create"]
    assert creates.count(201) == 1 and set(creates) <= {201, 409}, creates
    wait_for(
        lambda: all(a.elector.observed_holder() == leader.identity for a in group), 2.0, "observers"
    )

    t0 = time.monotonic()
    leader.finish()  # clean: leader work stopped, then the lease released
    assert raw_lease(api)["spec"]["holderIdentity"] in ("", *[a.identity for a in group])
    rest = [a for a in group if a is not leader]
    took = wait_for(lambda: len(leaders(rest)) == 1, 2.0, "a successor")
    # the successor did not wait for expiry: at most one jittered retry period (0.2 * 2.2)
    assert time.monotonic() - t0 < 0.8, took
    successor = hold_steady(rest, 0.5)
    spec = raw_lease(api)["spec"]
    assert spec["holderIdentity"] == successor.identity
    assert spec["leaseTransitions"] == 1
    assert leader.changes[-1][1:] == (False, None)
    assert recorder.leaders() == [leader.identity, successor.identity]

    for a in rest:
        a.finish()
    spec = raw_lease(api)["spec"]
    assert spec["holderIdentity"] == "" and spec["leaseDurationSeconds"] == 1


def test_a_killed_leader_is_replaced_after_its_lease_expires(
    api: KubeAPIServer, recorder: Recorder, agents: AgentFactory
) -> None:
    group = agents("a", "b", "c", release=False)
    wait_for(lambda: len(leaders(group)) == 1, 2.0, "a leader")
    leader = hold_steady(group, 0.5)
    t_kill = time.monotonic()
    leader.finish()  # crash: no release
    assert raw_lease(api)["spec"]["holderIdentity"] == leader.identity
    rest = [a for a in group if a is not leader]
    wait_for(lambda: len(leaders(rest)) == 1, 4.0, "a successor")
    took = time.monotonic() - t_kill
    # not before the lease expired (2 s after its last renewal, <= 0.2 s before the kill),
    # and not much later: one observation delay + one jittered retry (<= 0.44 s each)
    assert 1.7 <= took <= 3.3, took
    hold_steady(rest, 0.5)
    assert raw_lease(api)["spec"]["leaseTransitions"] == 1


def test_a_leader_cut_off_from_the_api_stops_before_its_lease_expires(
    api: KubeAPIServer, recorder: Recorder, agents: AgentFactory
) -> None:
    group = agents("a", "b", "c")
    wait_for(lambda: len(leaders(group)) == 1, 2.0, "a leader")
    leader = hold_steady(group, 0.5)
    scope_terms = len(recorder.terms)
    t_cut = time.monotonic()
    leader.store.cut = True
    stopped = wait_for(lambda: not leader.elector.is_leader(), 2.0, "the cut-off leader stops")
    # it renewed at most one retry period before the cut; it stops within the renew deadline
    assert stopped <= CONFIG.renew_deadline_s + 0.05, stopped
    wait_for(lambda: leader.changes[-1][1] is False, 0.5, "on_change(False)")
    rest = [a for a in group if a is not leader]
    wait_for(lambda: len(leaders(rest)) == 1, 4.0, "a successor")
    took = time.monotonic() - t_cut
    assert took >= 1.7, took  # the others waited for the lease to expire
    successor = hold_steady(rest, 0.5)
    assert len(recorder.terms) == scope_terms + 1
    # the partition heals: the old leader sees the new one and stays a follower
    leader.store.cut = False
    wait_for(lambda: leader.elector.observed_holder() == successor.identity, 2.0, "it sees")
    assert hold_steady(group, 0.5) is successor


@pytest.mark.parametrize("fault", ["freeze", "error-500", "refuse"])
def test_api_outage_stops_the_leader_and_one_leads_after(
    api: KubeAPIServer, recorder: Recorder, agents: AgentFactory, fault: str
) -> None:
    """The whole API goes away for 3 s (longer than the lease): nobody may lead meanwhile."""
    group = agents("a", "b", "c")
    wait_for(lambda: len(leaders(group)) == 1, 2.0, "a leader")
    hold_steady(group, 0.4)
    t0 = time.monotonic()
    if fault == "freeze":
        api.faults.freeze(3.0)
    elif fault == "error-500":
        api.faults.set_error(code=500)
    else:
        api.faults.refuse()
    t_fault = time.monotonic()  # every renewal that succeeds began before this
    # The leader's last renewal began before t_fault, so it may not lead past
    # t_fault + renew deadline. Time is read *before* each look: a look delayed by a loaded
    # machine sees the state of a later moment, which only makes the bound stricter.
    while True:
        looked_at = time.monotonic()
        if not leaders(group):
            break
        assert looked_at < t_fault + CONFIG.renew_deadline_s, looked_at - t_fault
        time.sleep(0.005)
    # Nobody leads while the API is away (3 s from t0 at least). Time is read *after* each
    # look here: the look saw a moment before it.
    while True:
        seen = leaders(group)
        if time.monotonic() - t0 >= 3.0:
            break
        assert not seen
        time.sleep(0.01)
    api.faults.clear()
    # One leader after the outage, renewing every retry period for 0.5 s (the same 5 s bound
    # as before; a first term that ends at once, see steady_leader, is allowed within it).
    steady_leader(group, hold_s=0.5, within_s=5.0)


def test_lease_store_round_trip_conflicts_and_foreign_metadata(api: KubeAPIServer) -> None:
    admin = api.api_client()
    store = LeaseStore(admin, Calls(), NS, LEASE, timeout_s=2.0)
    try:
        assert store.get() is None  # 404
        t = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)  # microsecond 0: still 6 digits
        made = store.create(LeaseRecord("a", 15, t, t, 0))
        assert made == LeaseRecord("a", 15, t, t, 0, made.resource_version)
        assert raw_lease(api)["spec"]["renewTime"] == "2026-03-04T05:06:07.000000Z"
        with pytest.raises(Conflict):
            store.create(LeaseRecord("b", 15, t, t, 0))
        # someone labels the Lease; our next PUT must neither lose the label nor skip a version
        client.CoordinationV1Api(admin).patch_namespaced_lease(
            LEASE, NS, {"metadata": {"labels": {"team": "net"}}}
        )
        with pytest.raises(Conflict):
            store.update(dataclasses.replace(made, renew_time=t + dt.timedelta(seconds=1)))
        current = store.get()
        assert current is not None and current.holder == "a"
        later = t + dt.timedelta(seconds=2, microseconds=5)
        updated = store.update(dataclasses.replace(current, renew_time=later, transitions=1))
        assert updated.renew_time == later and updated.transitions == 1
        lease = raw_lease(api)
        assert lease["metadata"]["labels"] == {"team": "net"}
        assert lease["spec"]["renewTime"] == "2026-03-04T05:06:09.000005Z"
        released = store.update(LeaseRecord("", 1, later, later, 1, updated.resource_version))
        assert released.holder == "" and not released.held
        with pytest.raises(ValueError, match="resourceVersion"):
            store.update(LeaseRecord("a", 15, t, t, 0))
        with pytest.raises(ValueError, match="timezone"):
            store.update(LeaseRecord("a", 15, None, dt.datetime(2026, 1, 1), 0, "1"))
    finally:
        admin.close()
