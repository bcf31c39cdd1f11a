"""The leader's reconcile loop: keep every LB pool equal to its desired backends.

Level-triggered: watch events only mark the loop dirty; each round reads the full state (the
informer caches and what every LB instance of every provider reports), computes the desired
pools, sets ``podlb.io/lb-ready`` on every pod behind a direct Service and hands the plan of
each managed pool to the apply workers (observed pools are only read). Rounds run soon after a
change, every ``fast_period_s`` while something is registering or draining, and every
``resync_s`` otherwise, and at once when an LB instance restarted: a restarted HAProxy has lost
the servers podlb added and answers 503 until they are back, so its process id is polled every
``lb_probe_s`` (every ``lb_probe_down_s`` while it cannot be reached) and a new one wakes a round.

A round is level-triggered but not all recomputed: a Service's desired pools are remembered
while its objects (Service, EndpointSlices, pods) are the very ones of last round
(agent.leader.desired.DesiredPools), and a pool's verdicts while its spec is and the LB shows
the same of it (agent.leader.verdicts); HAProxy's servers are re-read only where their lines
changed (agent.lb.haproxy_state.PoolReader). At 30,000 pods and 10,000 backends a round where
a few pods changed takes 0.15 s of CPU in one process, against 0.53 s recomputing everything
(before reading HAProxy: 0.1 s, against 0.25 s).

LB changes are applied asynchronously: a slow LB API (a cloud's takes seconds) must not hold the
next round, so one pod's drain never delays another's registration. A server with a change in
flight is left out of the plans until the change is done and the LB has been observed again.
On an LB read cheaply one pool at a time (QuickObserve: HAProxy), a round waits up to
``admit_wait_s`` for its ENABLEs to land, reads those pools back and decides lb-ready again, so
an admitted pod turns Healthy in its own round rather than the next.

Fail static (DESIGN.md): nothing is drained or removed while an informer is not synced, when an
LB instance cannot be observed (lb-ready is then left as it is), or when a Service's endpoints
come back empty while pods it selects still exist.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from concurrent import futures
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol, TypeVar, cast

from agent.clock import Clock
from agent.errors import PodlbError
from agent.lb.base import (
    Action,
    AdminState,
    IndependentWrites,
    LBProvider,
    Mode,
    Op,
    PoolState,
    QuickObserve,
    RestartAware,
    Staging,
    canonical_ip,
)
from agent.lb.fence import Term, TermEnded, bound
from agent.model import EndpointSlice, Pod, PodKey, Service, direct_mode
from agent.node.reporter import ConditionReporter

from .desired import DesiredPools, Finding, Limits, PoolSpec
from .election import LeaderScope
from .findings import Findings
from .plan import plan_pool
from .routing import HAPROXY, Problem
from .sinks import EventSink, LeaderMetrics
from .verdicts import REGISTERING_HOLD_S, VerdictWriter

log = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")
PoolKey = tuple[str, str]  # (provider, pool)
RETIRING = frozenset({Op.DRAIN, Op.REMOVE})  # actions that take servers out
Observed = dict[str, dict[str, dict[str, PoolState]]]  # provider -> instance -> pool -> state


def _freeze_gc() -> None:
    """Collect once, then move every object left to the collector's permanent generation: a
    full pass of a leader holding 30,000 pods took 0.2 s (one every few rounds), over objects
    that live for the term. Objects frozen are still freed when no longer referenced; only
    cycles among them are not collected."""
    t0 = time.monotonic()
    gc.collect()
    gc.freeze()
    log.info(
        "leader: %d objects exempted from full garbage collections (%.2fs)",
        gc.get_freeze_count(), time.monotonic() - t0,
    )  # fmt: skip


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


class Cache(Protocol[T]):  # what the loop needs of an informer
    synced: threading.Event

    def items(self) -> list[T]: ...

    def get(self, key: tuple[str, str]) -> T | None: ...

    def snapshot(self) -> dict[tuple[str, str], T]: ...  # a copy, by (namespace, name)

    def run(self, stop: threading.Event) -> None: ...

    def stop_watch(self) -> None: ...


@dataclass
class Leader:
    """Runs while this agent leads (``run(scope)``); built by the composition root."""

    services: Cache[Service]
    slices: Cache[EndpointSlice]
    pods: Cache[Pod]
    providers: Mapping[str, LBProvider]  # by name; none: the desired state is only logged
    reporter: ConditionReporter
    events: EventSink
    clock: Clock
    metrics: LeaderMetrics = field(default_factory=LeaderMetrics)
    resync_s: float = 10.0
    fast_period_s: float = 0.5
    drain_timeout_s: float = 60.0
    default_provider: str = HAPROXY  # for direct Services that name no provider
    # Where LB changes run; the composition root gives a thread pool, shut down with the term.
    apply_executor: Executor = field(default_factory=InlineExecutor)
    stop_apply_timeout_s: float = 5.0  # how long a term's end waits for changes in flight
    # How often each restart-aware LB instance's process id is read (one cheap request), and
    # how often while it cannot be reached (a restart in progress: wake as soon as it is back).
    lb_probe_s: float = 1.0
    lb_probe_down_s: float = 0.1
    # After the first full round, exempt what exists then (the informers' objects: 30,000
    # pods, say) from the garbage collector's full passes (gc.freeze); the process does so, not
    # tests sharing an interpreter.
    freeze_gc: bool = False
    # A pod's Registering is written once it has waited this long (VerdictWriter).
    registering_hold_s: float = REGISTERING_HOLD_S
    # How long a round waits for its ENABLEs on a QuickObserve LB to land, to read their pools
    # back and write the admitted pods' lb-ready in the same round (0: never).
    admit_wait_s: float = 0.25
    _full_rounds: int = 0  # rounds run on synced informers
    _term: Term | None = None  # fences every LB call of the term this leader runs in
    _futures: set[Future[None]] = field(default_factory=set)
    _wake: threading.Event = field(default_factory=threading.Event)
    # Pools this leader has managed, and the Service that asked for each.
    _owned: dict[PoolKey, tuple[str, str]] = field(default_factory=dict)
    # (provider, instance, pool) -> server -> when it was first seen not taking new traffic
    _drain_since: dict[tuple[str, str, str], dict[str, float]] = field(default_factory=dict)
    # (provider, instance, pool) -> the spec and state it last had nothing to do with
    _settled: dict[tuple[str, str, str], tuple[PoolSpec, PoolState]] = field(default_factory=dict)
    # (provider, instance, pool, server): a change in flight, or the round it finished in
    _in_flight: set[tuple[str, str, str, str]] = field(default_factory=set)
    _done_in: dict[tuple[str, str, str, str], int] = field(default_factory=dict)  # round no.
    _round_no: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _failed: list[BaseException] = field(default_factory=list)
    # this round's ENABLE batches on QuickObserve LBs: (future, provider, instance, pool)
    _admitting: list[tuple[Future[None], str, str, str]] = field(default_factory=list)
    _last_desired: dict[str, tuple[PoolSpec, frozenset[str]]] = field(default_factory=dict)
    _registered: dict[str, frozenset[str]] = field(default_factory=dict)
    # (provider, instance) -> its process id at the last probe; None: not reachable then
    _lb_ids: dict[tuple[str, str], str | None] = field(default_factory=dict)
    _desired: DesiredPools = field(init=False)  # the desired pools, remembered per Service
    _verdicts: VerdictWriter = field(init=False)  # every pod's lb-ready
    _findings: Findings = field(init=False)  # problems found, as Events

    def __post_init__(self) -> None:
        self._desired = DesiredPools(self.default_provider)
        self._verdicts = VerdictWriter(
            self.reporter,
            self.events,
            self.clock,
            self.metrics,
            registering_hold_s=self.registering_hold_s,
        )
        self._findings = Findings(self.events, self.metrics)

    def poke(self, key: object = None) -> None:
        del key
        self._wake.set()

    # -- lifetime ---------------------------------------------------------------------------
    def run(self, scope: LeaderScope) -> None:
        """Leader work: informers, the condition writer and rounds, until the scope stops."""
        self._term = scope.term
        caches: list[Cache[Any]] = [self.services, self.slices, self.pods]
        failed = self._failed

        def guarded(target: Callable[[threading.Event], None]) -> Callable[[], None]:
            def body() -> None:
                try:
                    target(scope.stopped)
                except BaseException as exc:  # a dead informer would freeze the leader's view
                    log.exception("leader: a worker failed")
                    failed.append(exc)
                    self._wake.set()

            return body

        threads = [
            threading.Thread(target=guarded(c.run), name=f"leader-informer-{i}")
            for i, c in enumerate(caches)
        ]
        threads.append(threading.Thread(target=guarded(self.reporter.run), name="lb-ready"))

        # Losing the lease must end the wait between rounds at once (a quiet round waits up to
        # resync_s), so the lease is released promptly on shutdown.
        def wake_on_stop() -> None:
            scope.stopped.wait()
            self._wake.set()

        threads.append(threading.Thread(target=wake_on_stop, name="leader-stop"))
        if any(isinstance(p, RestartAware) for p in self.providers.values()):

            def probe_lbs(stopped: threading.Event) -> None:
                while (down := self.probe_lbs()) is not None:
                    if self.clock.wait(stopped, self.lb_probe_down_s if down else self.lb_probe_s):
                        return

            threads.append(threading.Thread(target=guarded(probe_lbs), name="lb-probe"))
        for t in threads:
            t.daemon = True
            t.start()
        log.info(
            "leader: reconciling LB pools with %s",
            ", ".join(self.providers) or "no LB provider (desired state logged only)",
        )
        frozen = False
        try:
            period = self.fast_period_s
            while not scope.wait(0):
                if failed:
                    # Unexpected: end the process (STYLE.md principle 7) rather than lead blind.
                    raise RuntimeError("a leader worker failed") from failed[0]
                self._wake.clear()
                busy = self.round()
                if self.freeze_gc and not frozen and self._full_rounds:
                    _freeze_gc()
                    frozen = True
                period = self.fast_period_s if busy else self.resync_s
                self.clock.wait(self._wake, period)
                if scope.stopped.is_set():
                    break
        finally:
            for c in caches:
                c.stop_watch()
            # Changes queued are dropped; those running send no further request (the term
            # fences each one) and may finish the request they are in. The election releases
            # the Lease only once none of them can still land (agent.lb.fence).
            self.apply_executor.shutdown(wait=False, cancel_futures=True)
            with self._lock:
                pending = list(self._futures)
            futures.wait(pending, timeout=self.stop_apply_timeout_s)
            for t in threads:
                t.join(timeout=5)

    def probe_lbs(self) -> bool | None:
        """Read the process id of every restart-aware LB instance (fenced by the term); wake a
        round when one changed, or when an instance is back after it could not be reached. The
        first id seen is only noted (the round at the term's start covers it). True when an
        instance could not be reached (probe again soon); None once the term has ended."""
        down = False
        for name, provider in self.providers.items():
            if not isinstance(provider, RestartAware):
                continue
            for instance in provider.instances():
                key = (name, instance)
                try:
                    with bound(self._term):
                        now: str | None = provider.process_id(instance)
                except TermEnded:
                    return None
                except PodlbError as exc:
                    if self._lb_ids.get(key, "") is not None:
                        log.warning("leader: %s %s not reachable: %s", name, instance, exc)
                    now = None
                if key in self._lb_ids and now is not None and now != self._lb_ids[key]:
                    log.warning(
                        "leader: %s %s restarted or reloaded (process %s, was %s): reconciling it",
                        name, instance, now, self._lb_ids[key] or "unreachable",
                    )  # fmt: skip
                    self._wake.set()
                self._lb_ids[key] = now
                down |= now is None
        return down

    # -- one round --------------------------------------------------------------------------
    def round(self) -> bool:
        """One full reconcile. Returns True when something is in flight (poll again soon)."""
        t0 = self.clock.monotonic()
        with self._lock:
            self._round_no += 1
            round_no = self._round_no
        if not all(c.synced.is_set() for c in (self.services, self.slices, self.pods)):
            self.metrics.fail_static("informers_not_synced")
            log.debug("leader: informers not synced yet: nothing applied")
            return True
        self._full_rounds += 1
        # The informer's keys are (namespace, name) tuples, which PodKeys equal.
        pods = cast(Mapping[PodKey, Pod], self.pods.snapshot())
        services = self.services.items()
        self._findings.begin_round()
        by_key, kept, findings = self._desired_pools(services, pods)
        if not self.providers:
            self._findings.end_round()
            self.metrics.reconcile(self.clock.monotonic() - t0, "ok")
            return False
        observed, reachable = self._observe(set(by_key) | set(self._owned))
        registered: dict[str, frozenset[str]] = {}
        for per_instance in observed.values():
            for per_pool in per_instance.values():
                for pool, st in per_pool.items():
                    registered[pool] = registered.get(pool, frozenset()) | frozenset(st.servers)
        self._registered = registered
        # Verdicts first: they come from what the LB reported, and a drain waiting for
        # "Deregistered" should not also wait for this round's LB calls.
        complete = {name: observed[name] for name in reachable}
        busy = self._verdicts.write(by_key.values(), complete, pods, services)
        contested = {f.pool for f in findings if f.problem is Problem.POOL_CONFLICT}
        live = LiveAddresses(pods)
        for name, per_instance in observed.items():
            keys = sorted(k for k in (set(by_key) | set(self._owned)) - kept if k[0] == name)
            for instance, per_pool in per_instance.items():
                for key in keys:
                    want = by_key.get(key)
                    if key[1] in contested or not self._pool_found(
                        name, instance, key[1], want, per_pool, services
                    ):
                        continue
                    if want is None or want.mode is Mode.MANAGE:  # gone or ours
                        busy |= self._apply(
                            name, instance, key[1], want, per_pool[key[1]], pods, services,
                            round_no, live,
                        )  # fmt: skip
        if self._admitting:
            self._read_back_admissions(by_key.values(), complete, pods, services)
        self._findings.end_round()
        outcome = "ok" if len(reachable) == len(self.providers) else "lb_error"
        self.metrics.reconcile(self.clock.monotonic() - t0, outcome)
        with self._lock:
            busy |= bool(self._in_flight)
            self._done_in = {k: n for k, n in self._done_in.items() if n >= round_no}
        return busy

    def _read_back_admissions(
        self,
        pools: Iterable[PoolSpec],
        observed: Observed,
        pods: Mapping[PodKey, Pod],
        services: Sequence[Service],
    ) -> None:
        """The pools this round admitted servers to (ENABLE), read again once those changes
        landed (at most :attr:`admit_wait_s`), and every pod's lb-ready decided again with them:
        an admitted pod turns Healthy in this round, not in the next one, which at 10,000
        servers starts most of a second later. Only on QuickObserve LBs; what has not landed
        in time, or cannot be read, is left to the next round."""
        admitting, self._admitting = self._admitting, []
        done, _ = futures.wait([f for f, *_ in admitting], timeout=self.admit_wait_s)
        fresh = dict(observed)  # provider -> instance -> pool -> state, copied where read again
        read = False
        for future, provider, instance, pool in admitting:
            if future not in done or provider not in fresh or instance not in fresh[provider]:
                continue
            try:
                state = self.providers[provider].observe(instance, pool)
            except PodlbError as exc:
                log.debug("leader: %s %s/%s not read back: %s", provider, instance, pool, exc)
                continue
            if fresh[provider] is observed[provider]:
                fresh[provider] = dict(observed[provider])
            if fresh[provider][instance] is observed[provider][instance]:
                fresh[provider][instance] = dict(observed[provider][instance])
            fresh[provider][instance][pool] = state
            read = True
        if read:
            self._verdicts.write(pools, fresh, pods, services)

    def _desired_pools(
        self, services: Sequence[Service], pods: Mapping[PodKey, Pod]
    ) -> tuple[dict[PoolKey, PoolSpec], set[PoolKey], list[Finding]]:
        """This round's pools by (provider, pool), those owned but left as they are (their
        Service yields no pool this round), and the findings (reported)."""
        limits = {
            name: Limits(
                p.max_weight, p.default_max_backends, isinstance(p, Staging) and p.stages()
            )
            for name, p in self.providers.items()
        }
        # Who the LB had last round keeps its slot under podlb.io/max-backends.
        pools, findings = self._desired.compute(
            services, self.slices.items(), pods, self._registered, limits
        )
        for f in findings:
            self._findings.report(f, services, pods)
        self._log_desired(pools)
        by_key: dict[PoolKey, PoolSpec] = {}
        for spec in pools:
            if self.providers and spec.provider not in self.providers:
                self._findings.report(
                    Finding(
                        spec.service.namespace, spec.service.name, Problem.NO_PROVIDER,
                        f"pool {spec.pool}: this agent has no {spec.provider} provider "
                        "configured (--lb)",
                    ),
                    services,
                )  # fmt: skip
                continue
            key = (spec.provider, spec.pool)
            by_key[key] = spec
            if spec.mode is Mode.MANAGE:
                self._owned[key] = (spec.service.namespace, spec.service.name)
            else:  # observed from now on: never written again, not even emptied
                self._owned.pop(key, None)
        # A pool whose Service still exists but yields no pool this round (a routing
        # annotation mistyped, a cloud LB id missing for a while) is left as it is (fail static).
        direct = {(s.namespace, s.name) for s in services if direct_mode(s)[0]}
        kept = {k for k, owner in self._owned.items() if k not in by_key and owner in direct}
        if kept:
            self.metrics.fail_static("service_unrouted")
        return by_key, kept, findings

    def _observe(self, keys: set[PoolKey]) -> tuple[Observed, set[str]]:
        """provider -> instance -> pool -> state for the reachable instances; and the
        providers whose instances all were."""
        out: Observed = {}
        reachable: set[str] = set()
        for name, provider in self.providers.items():
            pools = {pool for prov, pool in keys if prov == name}
            out[name] = {}
            ok = True
            for instance in provider.instances():
                try:
                    out[name][instance] = provider.observe_pools(instance, pools) if pools else {}
                except PodlbError as exc:
                    ok = False
                    self.metrics.fail_static("lb_unreachable")
                    log.warning(
                        "leader: %s %s not observed: %s (its pools left as they are)",
                        name, instance, exc,
                    )  # fmt: skip
            if ok:
                reachable.add(name)
        return out, reachable

    def _pool_found(
        self,
        provider: str,
        instance: str,
        pool: str,
        spec: PoolSpec | None,
        per_pool: dict[str, PoolState],
        services: Sequence[Service],
    ) -> bool:
        if pool in per_pool:
            return True
        if spec is not None and (spec.backends or spec.others):
            hint = (
                " (an HAProxy backend must be in its configuration)" if provider == HAPROXY else ""
            )
            self._findings.report(
                Finding(
                    spec.service.namespace, spec.service.name, Problem.POOL_NOT_FOUND,
                    f"the {provider} LB {instance} has no pool {pool!r}{hint}",
                ),
                services,
            )  # fmt: skip
        return False

    def _apply(
        self,
        provider: str,
        instance: str,
        pool: str,
        spec: PoolSpec | None,
        state: PoolState,
        pods: Mapping[PodKey, Pod],
        services: Sequence[Service],
        round_no: int,
        live: LiveAddresses,
    ) -> bool:
        key = (provider, instance, pool)
        settled = self._settled.get(key)
        if settled is not None and settled[0] is spec and settled[1] == state:
            return False  # as last round, when there was nothing to do: nothing to do
        now = self.clock.monotonic()
        ages: dict[str, float] = {}
        since = self._drain_since.setdefault(key, {})
        for name in [n for n in since if n not in state.servers]:
            del since[name]  # gone: an address reused later starts afresh
        for name, srv in state.servers.items():
            if srv.admin is AdminState.READY:
                since.pop(name, None)
            else:
                ages[name] = now - since.setdefault(name, now)
        fail_static = self._fail_static(spec, state, pods, services)
        planned = plan_pool(
            spec, state, drain_age_s=ages, drain_timeout_s=self.drain_timeout_s,
            fail_static=fail_static, live_addresses=live,
        )  # fmt: skip
        # Nothing to do, every server in rotation (no drain clock runs), backends wanted (no
        # fail-static question): the same spec and state plan the same nothing next round.
        if not planned and spec is not None and (spec.backends or spec.others) and not ages:
            self._settled[key] = (spec, state)
        else:
            self._settled.pop(key, None)
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
                if (at := (provider, instance, pool, a.server)) not in self._in_flight
                and self._done_in.get(at, 0) < round_no
            ]
            self._in_flight |= {(provider, instance, pool, a.server) for a in actions}
        if not actions:
            return draining or bool(planned)
        # Where writes are independent, servers coming in and servers going out are separate
        # batches on separate workers: a slow drain or removal never holds a registration of
        # the same round, nor the reverse (each keeps the plan's order within it).
        batches = [actions]
        lb = self.providers[provider]
        if isinstance(lb, IndependentWrites) and lb.independent_writes():
            batches = [
                [a for a in actions if a.op not in RETIRING],
                [a for a in actions if a.op in RETIRING],
            ]
        for batch in batches:
            if not batch:
                continue
            future = self.apply_executor.submit(self._apply_now, provider, instance, pool, batch)
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
                self._admitting.append((future, provider, instance, pool))
        return True

    def _forget_future(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)

    def _apply_now(self, provider: str, instance: str, pool: str, actions: list[Action]) -> None:
        """One batch of LB changes, on an apply worker."""
        try:
            try:
                with bound(self._term):
                    result = self.providers[provider].apply(instance, pool, actions)
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
            self._failed.append(exc)
        finally:
            with self._lock:
                for a in actions:
                    key = (provider, instance, pool, a.server)
                    self._in_flight.discard(key)
                    # The round running now may have observed the LB before this change.
                    self._done_in[key] = self._round_no
            self._wake.set()

    def _fail_static(
        self,
        spec: PoolSpec | None,
        state: PoolState,
        pods: Mapping[PodKey, Pod],
        services: Sequence[Service],
    ) -> bool:
        """Endpoints gone while the Service's pods still exist: keep what the LB has."""
        if spec is None or spec.backends or spec.others or not state.servers:
            return False
        svc = next(
            (
                s
                for s in services
                if (s.namespace, s.name) == (spec.service.namespace, spec.service.name)
            ),
            None,
        )
        if svc is None:
            return False
        if any(svc.selects(p) and not p.terminating for p in pods.values()):
            self.metrics.fail_static("endpoints_empty")
            log.warning(
                "leader: %s has no endpoints but pods it selects exist: keeping its %d backends",
                spec.pool,
                len(state.servers),
            )
            return True
        return False

    def _log_desired(self, pools: list[PoolSpec]) -> None:
        """Each pool's change of backends, logged; a spec remembered from last round
        (DesiredPools) is not looked at again."""
        last = self._last_desired
        now = {
            p.pool: got if (got := last.get(p.pool)) is not None and got[0] is p else
            (p, frozenset(b.server for b in p.backends.values()))
            for p in pools
        }  # fmt: skip
        changed = {pool for pool, got in now.items() if last.get(pool) is not got}
        nothing: tuple[None, frozenset[str]] = (None, frozenset())
        for pool in sorted(changed | (last.keys() - now.keys())):
            before, after = last.get(pool, nothing)[1], now.get(pool, nothing)[1]
            if before != after:
                log.info(
                    "leader: desired %s: %d backends (+%s -%s)",
                    pool,
                    len(after),
                    ",".join(sorted(after - before)) or "none",
                    ",".join(sorted(before - after)) or "none",
                )
        self._last_desired = now
