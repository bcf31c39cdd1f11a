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
(before reading HAProxy: 0.1 s, against 0.25 s). Nor is all of an LB read every round: a
QuickObserve LB (HAProxy) is read whole at a term's start; then a round reads the pools that may
have changed and its share of a sweep that reads each within ``full_read_s`` (agent.leader.reads).

LB changes are applied asynchronously (agent.leader.applier.PoolApplier): a slow LB API (a
cloud's takes seconds) must not hold the next round, so one pod's drain never delays another's
registration. A server with a change in flight is left out of the plans until the change is
done and the LB has been observed again. On an LB read cheaply one pool at a time
(QuickObserve: HAProxy), a round waits up to ``admit_wait_s`` for its ENABLEs to land, reads
those pools back and decides lb-ready again, so an admitted pod turns Healthy in its own round
rather than the next.

Fail static (DESIGN.md): nothing is drained or removed while an informer is not synced, when an
LB instance cannot be observed (lb-ready is then left as it is), or when a Service's endpoints
come back empty while pods it selects still exist.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar, cast

from agent.clock import Clock
from agent.errors import PodlbError
from agent.lb.base import (
    LBProvider,
    Mode,
    PoolState,
    RestartAware,
    Staging,
)
from agent.lb.fence import Term, TermEnded, bound
from agent.model import EndpointSlice, Pod, PodKey, Service, direct_mode
from agent.node.reporter import ConditionReporter

from .applier import InlineExecutor, LiveAddresses, PoolApplier
from .desired import DesiredPools, Finding, Limits, PoolSpec
from .election import LeaderScope
from .findings import Findings
from .reads import FULL_READ_S, LeaderReads, Observed, PoolKey
from .routing import HAPROXY, Problem
from .sinks import EventSink, LeaderMetrics
from .verdicts import REGISTERING_HOLD_S, VerdictWriter

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    # Each pool of a QuickObserve LB (HAProxy) is read at least this often, a share of them
    # each round, besides those that may have changed since the last (agent.leader.reads).
    full_read_s: float = FULL_READ_S
    _full_rounds: int = 0  # rounds run on synced informers
    _term: Term | None = None  # fences every LB call of the term this leader runs in
    _wake: threading.Event = field(default_factory=threading.Event)
    # Pools this leader has managed, and the Service that asked for each.
    _owned: dict[PoolKey, tuple[str, str]] = field(default_factory=dict)
    _failed: list[BaseException] = field(default_factory=list)  # in a worker, unexpected
    _last_desired: dict[str, tuple[PoolSpec, frozenset[str]]] = field(default_factory=dict)
    _registered: dict[str, frozenset[str]] = field(default_factory=dict)
    # (provider, instance) -> its process id at the last probe; None: not reachable then
    _lb_ids: dict[tuple[str, str], str | None] = field(default_factory=dict)
    _desired: DesiredPools = field(init=False)  # the desired pools, remembered per Service
    _verdicts: VerdictWriter = field(init=False)  # every pod's lb-ready
    _findings: Findings = field(init=False)  # problems found, as Events
    _applier: PoolApplier = field(init=False)  # each pool's plan, applied
    _reads: LeaderReads = field(init=False)  # what each round reads of the LBs

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
        self._applier = PoolApplier(
            self.apply_executor, self.clock, self._wake.set, self.metrics,
            drain_timeout_s=self.drain_timeout_s, admit_wait_s=self.admit_wait_s,
            failed=self._failed,
        )  # fmt: skip
        self._reads = LeaderReads(
            self.clock, self._applier, self._verdicts, self.metrics, full_read_s=self.full_read_s
        )

    def poke(self, key: object = None) -> None:
        del key
        self._wake.set()

    # -- lifetime ---------------------------------------------------------------------------
    def run(self, scope: LeaderScope) -> None:
        """Leader work: informers, the condition writer and rounds, until the scope stops."""
        self._term = self._applier.term = scope.term
        self._reads.forget()  # another leader may have changed the LBs since: read all
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
            self._applier.stop(self.stop_apply_timeout_s)
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
                    self._reads.restarted()
                    self._wake.set()
                self._lb_ids[key] = now
                down |= now is None
        return down

    # -- one round --------------------------------------------------------------------------
    def round(self) -> bool:
        """One full reconcile. Returns True when something is in flight (poll again soon)."""
        t0 = self.clock.monotonic()
        round_no = self._applier.begin_round()
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
        observed, reachable = self._reads.observe(
            self.providers, set(by_key) | set(self._owned), by_key
        )
        registered: dict[str, frozenset[str]] = {}
        for per_instance in observed.values():
            for per_pool in per_instance.values():
                for pool, st in per_pool.items():
                    registered[pool] = registered.get(pool, frozenset()) | frozenset(st.servers)
        self._registered = registered
        # The plans first: their changes go to the workers, and land while the verdicts are
        # decided (from what the LB showed before them; a drain's Deregistered waits for no LB
        # call of this round), so the ENABLEs read back below have landed sooner.
        busy = self._apply_all(by_key, kept, findings, observed, round_no, pods, services)
        complete = {name: observed[name] for name in reachable}
        busy |= self._verdicts.write(by_key.values(), complete, pods, services)
        if admitted := self._applier.admissions():
            self._read_back(admitted, by_key, complete, pods, services)
        self._findings.end_round()
        outcome = "ok" if len(reachable) == len(self.providers) else "lb_error"
        self.metrics.reconcile(self.clock.monotonic() - t0, outcome)
        return self._applier.end_round(round_no) or busy

    def _apply_all(
        self,
        specs: Mapping[PoolKey, PoolSpec],
        kept: set[PoolKey],
        findings: list[Finding],
        observed: Observed,
        round_no: int,
        pods: Mapping[PodKey, Pod],
        services: Sequence[Service],
    ) -> bool:
        """Each managed pool's plan (a pool gone from ``specs`` is emptied, one ``kept`` left
        as it is, one contested by two Services left alone) handed to the applier, on every
        instance that showed it; True while one is busy."""
        busy = False
        contested = {f.pool for f in findings if f.problem is Problem.POOL_CONFLICT}
        live = LiveAddresses(pods)
        for name, per_instance in observed.items():
            keys = sorted(k for k in (set(specs) | set(self._owned)) - kept if k[0] == name)
            for instance, per_pool in per_instance.items():
                for key in keys:
                    want = specs.get(key)
                    if key[1] in contested or not self._pool_found(
                        name, instance, key[1], want, per_pool, services
                    ):
                        continue
                    if want is None or want.mode is Mode.MANAGE:  # gone or ours
                        state = per_pool[key[1]]
                        busy |= self._applier.apply(
                            (name, instance, key[1]), self.providers[name], want, state,
                            round_no, live=live,
                            fail_static=partial(self._fail_static, want, state, pods, services),
                        )  # fmt: skip
        return busy

    def _read_back(
        self,
        admitted: list[tuple[str, str, str]],
        specs: Mapping[PoolKey, PoolSpec],
        observed: Observed,
        pods: Mapping[PodKey, Pod],
        services: Sequence[Service],
    ) -> None:
        """The pools this round admitted servers in, read again (LeaderReads.read_back), and
        their pods' lb-ready decided again with them: an admitted pod turns Healthy in this
        round, not in the next. A pool that cannot be read is left to the next round."""
        fresh, again = self._reads.read_back(self.providers, admitted, observed)
        if again and not self._verdicts.write_again(again, specs, fresh, pods):
            self._verdicts.write(specs.values(), fresh, pods, services)  # a pod of two pools

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
