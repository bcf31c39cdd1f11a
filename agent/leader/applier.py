"""The leader's half that faces the LBs: each round's plan of a pool (agent/leader/plan.py),
applied on worker threads so a slow LB API (a cloud's takes seconds) never holds the next round.

It keeps what the plans need between rounds: the servers with a change in flight (left out of
the plans until the change is done and the LB has been observed again), when each server was
first seen out of rotation (its drain clock), the pools that had nothing to do (not planned
again while their spec and state are the very same), and this round's admissions (ENABLEs) on
LBs read cheaply one pool at a time, for the leader to read back within the round.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Container, Mapping, Sequence
from concurrent import futures
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from agent.clock import Clock
from agent.errors import PodlbError
from agent.lb.base import (
    Action,
    AdminState,
    IndependentWrites,
    LBProvider,
    Op,
    PoolState,
    QuickObserve,
    canonical_ip,
)
from agent.lb.fence import Term, TermEnded, bound
from agent.model import Pod, PodKey

from .desired import PoolSpec
from .plan import plan_pool
from .sinks import LeaderMetrics

log = logging.getLogger(__name__)
RETIRING = frozenset({Op.DRAIN, Op.REMOVE})  # actions that take servers out
PoolAt = tuple[str, str, str]  # (provider, instance, pool)
T = TypeVar("T")
P = ParamSpec("P")


class LiveAddresses(Container[str]):
    """IPs of the pods that exist, gathered on the first question (few rounds ask one: only
    a drained server on an LB that counts no sessions needs it)."""

    def __init__(self, pods: Mapping[PodKey, Pod]) -> None:
        self.pods = pods
        self._ips: frozenset[str] | None = None

    def __contains__(self, address: object) -> bool:
        if self._ips is None:
            self._ips = frozenset(canonical_ip(ip) for p in self.pods.values() for ip in p.ips)
        return address in self._ips


class InlineExecutor(Executor):
    """Runs each job at once in the caller (the default: rounds driven by hand in tests)."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


@dataclass
class PoolApplier:
    """Plans and applies the changes of each managed pool, round after round."""

    executor: Executor  # where changes run (the leader's thread pool, or inline in tests)
    clock: Clock
    wake: Callable[[], None]  # called when a change has landed: the next round sees it
    metrics: LeaderMetrics = field(default_factory=LeaderMetrics)
    drain_timeout_s: float = 60.0
    admit_wait_s: float = 0.25  # see :meth:`admissions`
    term: Term | None = None  # fences every LB call of the term
    failed: list[BaseException] = field(default_factory=list)  # unexpected, in a worker
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _round_no: int = 0
    _futures: set[Future[None]] = field(default_factory=set)
    # (provider, instance, pool, server): a change in flight, or the round it finished in
    _in_flight: set[tuple[str, str, str, str]] = field(default_factory=set)
    _done_in: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    # pool -> server -> when it was first seen not taking new traffic
    _drain_since: dict[PoolAt, dict[str, float]] = field(default_factory=dict)
    # pool -> the spec and state it last had nothing to do with
    _settled: dict[PoolAt, tuple[PoolSpec, PoolState]] = field(default_factory=dict)
    # this round's ENABLE batches on QuickObserve LBs
    _admitting: list[tuple[Future[None], PoolAt]] = field(default_factory=list)
    _seen: set[PoolAt] = field(default_factory=set)  # pools planned (or skipped) this round
    _landed: set[PoolAt] = field(default_factory=set)  # a change landed in, since changing()

    def begin_round(self) -> int:
        self._seen = set()
        with self._lock:
            self._round_no += 1
            return self._round_no

    def end_round(self, round_no: int) -> bool:
        """True while a change is in flight (the next round should come soon). What is kept
        of pools this round did not look at (gone, or their instance not observed) is dropped."""
        for gone in self._settled.keys() - self._seen:
            del self._settled[gone]
        for gone in self._drain_since.keys() - self._seen:
            del self._drain_since[gone]
        with self._lock:
            self._done_in = {k: n for k, n in self._done_in.items() if n >= round_no}
            return bool(self._in_flight)

    def changing(self) -> set[PoolAt]:
        """The pools with a change in flight, or one landed since the last call: what the LB
        has of them is not what was read before (the leader reads them again)."""
        with self._lock:
            out = self._landed | {(p, i, pool) for p, i, pool, _server in self._in_flight}
            self._landed = set()
        return out

    def settled(self, at: PoolAt, spec: PoolSpec) -> bool:
        """Whether pool ``at``, last planned with this very spec, had nothing to do (and
        every server in rotation): :meth:`apply` with the same state does nothing."""
        got = self._settled.get(at)
        return got is not None and got[0] is spec

    def apply(
        self,
        at: PoolAt,
        lb: LBProvider,
        spec: PoolSpec | None,
        state: PoolState,
        round_no: int,
        *,
        fail_static: Callable[[], bool],
        live: Container[str],
    ) -> bool:
        """Plan pool ``at`` (on ``lb``, its provider) from what its LB instance showed this
        round and hand the changes to the workers. True while the pool is busy (changes, or a
        drain under way)."""
        self._seen.add(at)
        settled = self._settled.get(at)
        if settled is not None and settled[0] is spec and settled[1] == state:
            return False  # as last round, when there was nothing to do: nothing to do
        now = self.clock.monotonic()
        ages: dict[str, float] = {}
        since = self._drain_since.setdefault(at, {})
        for name in [n for n in since if n not in state.servers]:
            del since[name]  # gone: an address reused later starts afresh
        for name, srv in state.servers.items():
            if srv.admin is AdminState.READY:
                since.pop(name, None)
            else:
                ages[name] = now - since.setdefault(name, now)
        planned = plan_pool(
            spec, state, drain_age_s=ages, drain_timeout_s=self.drain_timeout_s,
            fail_static=fail_static(), live_addresses=live,
        )  # fmt: skip
        # Nothing to do, every server in rotation (no drain clock runs), backends wanted (no
        # fail-static question): the same spec and state plan the same nothing next round.
        if not planned and spec is not None and (spec.backends or spec.others) and not ages:
            self._settled[at] = (spec, state)
        else:
            self._settled.pop(at, None)
        # Staged servers stay out of rotation until their pod is ready: not a drain to watch.
        staged = spec.staged if spec is not None else {}
        draining = any(
            s.admin is not AdminState.READY and n not in staged for n, s in state.servers.items()
        )
        with self._lock:
            # What this round saw of a server changed since (or is changing): plan it later.
            actions = [
                a
                for a in planned
                if (key := (*at, a.server)) not in self._in_flight
                and self._done_in.get(key, 0) < round_no
            ]
            self._in_flight |= {(*at, a.server) for a in actions}
        if not actions:
            return draining or bool(planned)
        self._submit(at, lb, actions)
        return True

    def _submit(self, at: PoolAt, lb: LBProvider, actions: list[Action]) -> None:
        # Where writes are independent, servers coming in and servers going out are separate
        # batches on separate workers: a slow drain or removal never holds a registration of
        # the same round, nor the reverse (each keeps the plan's order within it).
        batches = [actions]
        if isinstance(lb, IndependentWrites) and lb.independent_writes():
            batches = [
                [a for a in actions if a.op not in RETIRING],
                [a for a in actions if a.op in RETIRING],
            ]
        for batch in batches:
            if not batch:
                continue
            future = self.executor.submit(self._apply_now, at, lb, batch)
            with self._lock:
                if not future.done():
                    self._futures.add(future)
            future.add_done_callback(self._forget_future)
            if (
                self.admit_wait_s > 0
                and isinstance(lb, QuickObserve)
                and lb.observes_quickly()
                and any(a.op is Op.ENABLE for a in batch)
            ):
                self._admitting.append((future, at))

    def admissions(self) -> list[PoolAt]:
        """The pools this round ENABLEd servers in on a QuickObserve LB whose changes have
        landed, waiting up to :attr:`admit_wait_s` for them: read back within the round, their
        admitted pods turn Healthy in it rather than in the next round (which at 10,000 servers
        starts most of a second later). What has not landed in time is the next round's."""
        admitting, self._admitting = self._admitting, []
        if not admitting:
            return []
        done, _ = futures.wait([f for f, _ in admitting], timeout=self.admit_wait_s)
        return list(dict.fromkeys(at for f, at in admitting if f in done))

    def _forget_future(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)

    def _apply_now(self, at: PoolAt, lb: LBProvider, actions: Sequence[Action]) -> None:
        """One batch of LB changes, on a worker."""
        provider, instance, pool = at
        try:
            try:
                with bound(self.term):
                    result = lb.apply(instance, pool, actions)
            except TermEnded as exc:
                log.info(
                    "leader: %d actions on %s %s/%s left to the next leader: %s",
                    len(actions), provider, instance, pool, exc,
                )  # fmt: skip
                return
            except PodlbError as exc:
                log.warning(
                    "leader: applying %d actions to %s %s/%s failed: %s",
                    len(actions), provider, instance, pool, exc,
                )  # fmt: skip
                for a in actions:
                    self.metrics.lb_action(a.op.value, "error")
                return
            failed = {id(a) for a, _ in result.failed}
            for a in actions:
                self.metrics.lb_action(a.op.value, "error" if id(a) in failed else "ok")
            for a, answer in result.failed:
                log.warning(
                    "leader: %s %s/%s on %s %s refused: %s",
                    a.op.value, pool, a.server, provider, instance, answer,
                )  # fmt: skip
            log.info(
                "leader: %s %s %s: %s",
                provider, instance, pool, ", ".join(f"{a.op.value} {a.server}" for a in actions),
            )  # fmt: skip
        except BaseException as exc:  # unexpected: end the term (STYLE.md principle 7)
            log.exception("leader: an apply worker failed")
            self.failed.append(exc)
        finally:
            with self._lock:
                for a in actions:
                    key = (*at, a.server)
                    self._in_flight.discard(key)
                    # The round running now may have observed the LB before this change.
                    self._done_in[key] = self._round_no
                self._landed.add(at)
            self.wake()

    def stop(self, timeout_s: float) -> None:
        """At the term's end: changes queued are dropped; those running send no further
        request (the term fences each one) and may finish the request they are in, for up to
        ``timeout_s``. The election releases the Lease only once none of them can still land
        (agent.lb.fence)."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            pending = list(self._futures)
        futures.wait(pending, timeout=timeout_s)
