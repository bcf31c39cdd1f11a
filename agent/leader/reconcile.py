"""The leader's reconcile loop: keep every LB pool equal to its desired backends.

Level-triggered: watch events only mark the loop dirty; each round reads the full state (the
informer caches and what every LB instance reports), computes the desired pools, applies the
plan per instance and sets ``podlb.io/lb-ready`` on every pod behind a direct Service. Rounds
run soon after a change, every ``fast_period_s`` while something is registering or draining,
and every ``resync_s`` otherwise.

Fail static (DESIGN.md): nothing is drained or removed while an informer is not synced, when an
LB instance cannot be observed (lb-ready is then left as it is), or when a Service's endpoints
come back empty while pods it selects still exist.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from agent.clock import Clock
from agent.errors import PodlbError
from agent.lb.base import AdminState, LBProvider, PoolNotFound, PoolState
from agent.model import EndpointSlice, Pod, PodKey, Service
from agent.node.reporter import ConditionReporter, Desired

from .desired import Finding, PoolSpec, Problem, desired_pools
from .election import LeaderScope
from .plan import LBReason, lb_verdicts, plan_pool

log = logging.getLogger(__name__)
T = TypeVar("T")


class Cache(Protocol[T]):  # what the loop needs of an informer
    synced: threading.Event

    def items(self) -> list[T]: ...

    def get(self, key: tuple[str, str]) -> T | None: ...

    def run(self, stop: threading.Event) -> None: ...

    def stop_watch(self) -> None: ...


class EventSink(Protocol):
    def emit_object_event(
        self, kind: str, namespace: str, name: str, uid: str, event_type: str, reason: str,
        message: str,
    ) -> None: ...  # fmt: skip


@dataclass
class LeaderMetrics:
    """Hooks into agent/metrics.py (kept as callables so this module stays pure of it)."""

    reconcile: Callable[[float, str], None] = lambda seconds, outcome: None
    lb_action: Callable[[str, str], None] = lambda op, outcome: None
    backends: Callable[[dict[str, int]], None] = lambda by_state: None
    finding: Callable[[str], None] = lambda reason: None
    fail_static: Callable[[str], None] = lambda why: None


@dataclass
class Leader:
    """Runs while this agent leads (``run(scope)``); built by the composition root."""

    services: Cache[Service]
    slices: Cache[EndpointSlice]
    pods: Cache[Pod]
    provider: LBProvider | None
    reporter: ConditionReporter
    events: EventSink
    clock: Clock
    metrics: LeaderMetrics = field(default_factory=LeaderMetrics)
    resync_s: float = 10.0
    fast_period_s: float = 0.5
    drain_timeout_s: float = 60.0
    _wake: threading.Event = field(default_factory=threading.Event)
    _owned: set[str] = field(default_factory=set)  # pools this leader has managed
    _drain_since: dict[tuple[str, str, str], float] = field(default_factory=dict)
    _findings: set[Finding] = field(default_factory=set)  # reported last round
    _round_findings: set[Finding] = field(default_factory=set)
    _last_desired: dict[str, frozenset[str]] = field(default_factory=dict)
    _registered: dict[str, frozenset[str]] = field(default_factory=dict)

    def poke(self, key: object = None) -> None:
        del key
        self._wake.set()

    # -- lifetime ---------------------------------------------------------------------------
    def run(self, scope: LeaderScope) -> None:
        """Leader work: informers, the condition writer and rounds, until the scope stops."""
        caches: list[Cache[Any]] = [self.services, self.slices, self.pods]
        failed: list[BaseException] = []

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
        for t in threads:
            t.daemon = True
            t.start()
        log.info(
            "leader: reconciling LB pools with %s",
            self.provider.name if self.provider else "no LB provider (desired state logged only)",
        )
        try:
            period = self.fast_period_s
            while not scope.wait(0):
                if failed:
                    # Unexpected: end the process (STYLE.md principle 7) rather than lead blind.
                    raise RuntimeError("a leader worker failed") from failed[0]
                self._wake.clear()
                busy = self.round()
                period = self.fast_period_s if busy else self.resync_s
                self.clock.wait(self._wake, period)
                if scope.stopped.is_set():
                    break
        finally:
            for c in caches:
                c.stop_watch()
            for t in threads:
                t.join(timeout=5)

    # -- one round --------------------------------------------------------------------------
    def round(self) -> bool:
        """One full reconcile. Returns True when something is in flight (poll again soon)."""
        t0 = self.clock.monotonic()
        if not all(c.synced.is_set() for c in (self.services, self.slices, self.pods)):
            self.metrics.fail_static("informers_not_synced")
            log.debug("leader: informers not synced yet: nothing applied")
            return True
        pods = {p.key: p for p in self.pods.items()}
        services = self.services.items()
        # Who the LB had last round keeps its slot under podlb.io/max-backends.
        pools, findings = desired_pools(services, self.slices.items(), pods, self._registered)
        self._round_findings = set()
        self._report_findings(findings, services, pods)
        self._log_desired(pools)
        busy = False
        reachable = self.provider is None
        if self.provider is not None:
            by_pool = {p.pool: p for p in pools}
            self._owned |= set(by_pool)
            observed, reachable = self._observe()
            registered: dict[str, frozenset[str]] = {}
            for per_pool in observed.values():
                for pool, st in per_pool.items():
                    registered[pool] = registered.get(pool, frozenset()) | frozenset(st.servers)
            self._registered = registered
            # Verdicts first: they come from what the LB reported, and a drain waiting for
            # "Deregistered" should not also wait for this round's LB calls.
            if reachable:
                busy |= self._write_verdicts(pools, observed)
            contested = {f.pool for f in findings if f.problem is Problem.POOL_CONFLICT}
            for instance, per_pool in observed.items():
                for pool in sorted(self._owned - contested):
                    busy |= self._apply(instance, pool, by_pool.get(pool), per_pool, pods, services)
        # An Event per problem when it appears; one that goes away and comes back is new again.
        self._findings = self._round_findings
        outcome = "ok" if reachable else "lb_error"
        self.metrics.reconcile(self.clock.monotonic() - t0, outcome)
        return busy

    def _observe(self) -> tuple[dict[str, dict[str, PoolState]], bool]:
        """instance -> pool -> state for the reachable instances; and whether all were."""
        out: dict[str, dict[str, PoolState]] = {}
        if self.provider is None:
            return out, False
        ok = True
        for instance in self.provider.instances():
            try:
                out[instance] = self._observe_instance(instance)
            except PodlbError as exc:
                ok = False
                self.metrics.fail_static("lb_unreachable")
                log.warning(
                    "leader: LB %s not observed: %s (its pools left as they are)", instance, exc
                )
        return out, ok

    def _observe_instance(self, instance: str) -> dict[str, PoolState]:
        assert self.provider is not None
        observe_all = getattr(self.provider, "observe_all", None)
        if observe_all is not None:
            states: dict[str, PoolState] = observe_all(instance)
            return states
        out: dict[str, PoolState] = {}
        for pool in self._owned:
            try:
                out[pool] = self.provider.observe(instance, pool)
            except PoolNotFound:
                continue
        return out

    def _apply(
        self,
        instance: str,
        pool: str,
        spec: PoolSpec | None,
        per_pool: dict[str, PoolState],
        pods: dict[PodKey, Pod],
        services: Sequence[Service],
    ) -> bool:
        assert self.provider is not None
        state = per_pool.get(pool)
        if state is None:
            if spec is not None and spec.backends:
                self._finding(
                    Finding(
                        spec.service.namespace,
                        spec.service.name,
                        Problem.POOL_NOT_FOUND,
                        f"the LB {instance} has no pool {pool!r} (an HAProxy backend must be "
                        "in its configuration)",
                    ),
                    services,
                )
            return False
        now = self.clock.monotonic()
        ages: dict[str, float] = {}
        for name, srv in state.servers.items():
            key = (instance, pool, name)
            if srv.admin is AdminState.READY:
                self._drain_since.pop(key, None)
            else:
                ages[name] = now - self._drain_since.setdefault(key, now)
        fail_static = self._fail_static(spec, state, pods, services)
        actions = plan_pool(
            spec, state, drain_age_s=ages, drain_timeout_s=self.drain_timeout_s,
            fail_static=fail_static,
        )  # fmt: skip
        if not actions:
            return any(s.admin is not AdminState.READY for s in state.servers.values())
        try:
            result = self.provider.apply(instance, pool, actions)
        except PodlbError as exc:
            log.warning(
                "leader: applying %d actions to %s/%s failed: %s", len(actions), instance, pool, exc
            )
            for a in actions:
                self.metrics.lb_action(a.op.value, "error")
            return True
        failed = {id(a) for a, _ in result.failed}
        for a in actions:
            self.metrics.lb_action(a.op.value, "error" if id(a) in failed else "ok")
        for a, answer in result.failed:
            log.warning(
                "leader: %s %s/%s on %s refused: %s", a.op.value, pool, a.server, instance, answer
            )
        log.info(
            "leader: %s %s: %s",
            instance,
            pool,
            ", ".join(f"{a.op.value} {a.server}" for a in actions),
        )
        return True

    def _fail_static(
        self,
        spec: PoolSpec | None,
        state: PoolState,
        pods: dict[PodKey, Pod],
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

    def _write_verdicts(
        self, pools: Iterable[PoolSpec], observed: dict[str, dict[str, PoolState]]
    ) -> bool:
        verdicts = lb_verdicts(pools, observed)
        for gone in self.reporter.keys() - set(verdicts):
            self.reporter.forget(gone)  # no longer behind a direct Service, or deleted
        counts: dict[str, int] = {}
        busy = False
        for key, v in verdicts.items():
            counts[v.reason.value] = counts.get(v.reason.value, 0) + 1
            pod = self.pods.get((key.namespace, key.name))
            if pod is None:
                continue
            busy |= v.reason in (LBReason.REGISTERING, LBReason.DRAINING)
            self.reporter.set_desired(key, Desired(pod.uid, v.status, v.reason.value, v.message))
        self.metrics.backends(counts)
        return busy

    def _report_findings(
        self, findings: list[Finding], services: Sequence[Service], pods: dict[PodKey, Pod]
    ) -> None:
        for f in findings:
            self._finding(f, services, pods)

    def _finding(
        self, f: Finding, services: Sequence[Service], pods: dict[PodKey, Pod] | None = None
    ) -> None:
        self._round_findings.add(f)
        if f in self._findings:
            return  # reported last round already
        self.metrics.finding(f.problem.value)
        log.warning("leader: %s %s/%s: %s", f.kind, f.namespace, f.name, f.message)
        uid = ""
        if f.kind == "Service":
            svc = next(
                (s for s in services if (s.namespace, s.name) == (f.namespace, f.name)), None
            )
            uid = svc.uid if svc else ""
        elif pods is not None:
            pod = pods.get(PodKey(f.namespace, f.name))
            uid = pod.uid if pod else ""
        try:
            self.events.emit_object_event(
                f.kind, f.namespace, f.name, uid, "Warning", f.problem.value, f.message
            )
        except PodlbError as exc:
            log.warning("leader: event not recorded: %s", exc)

    def _log_desired(self, pools: list[PoolSpec]) -> None:
        now = {p.pool: frozenset(b.server for b in p.backends.values()) for p in pools}
        for pool in sorted(set(now) | set(self._last_desired)):
            before, after = self._last_desired.get(pool, frozenset()), now.get(pool, frozenset())
            if before != after:
                log.info(
                    "leader: desired %s: %d backends (+%s -%s)",
                    pool,
                    len(after),
                    ",".join(sorted(after - before)) or "none",
                    ",".join(sorted(before - after)) or "none",
                )
        self._last_desired = now
