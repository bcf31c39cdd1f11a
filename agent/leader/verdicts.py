"""``podlb.io/lb-ready`` for every pod behind a direct Service, once a leader round: verdicts
from what the LB instances reported (agent/leader/plan.py), the gate's bound
(agent/leader/gate.py), an Event for servers an LB instance lost, and the conditions handed to
the writer pool (agent/node/reporter.py), which writes only what changed.

A round at cluster scale looks at 10,000 backends; the work per pod is kept to what the verdict
needs: whether a pod is admitted (lb-ready True) is looked up only for the pods whose verdict
depends on it, and the gate's clock only for pods waiting at the gate.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from agent.clock import Clock
from agent.errors import PodlbError
from agent.lb.base import AdminState, Health, PoolState
from agent.model import LB_READY, Pod, PodKey, Service
from agent.node.reporter import ConditionReporter, Desired

from .desired import PoolSpec
from .gate import GatePolicy, combine
from .plan import (
    WAITING,
    LBReason,
    LBVerdict,
    Observed,
    combine_verdicts,
    gate_verdict,
    lost_servers,
    pool_verdicts,
)
from .sinks import EventSink, LeaderMetrics

log = logging.getLogger(__name__)
_POLL = (LBReason.REGISTERING, LBReason.DRAINING)  # verdicts that change without an event
# a pool with one of these verdicts may change on the LB without an event (checks, sessions)
_WAITS = frozenset({LBReason.REGISTERING, LBReason.UNHEALTHY, LBReason.DRAINING})
REGISTERING_HOLD_S = 2.0  # VerdictWriter.registering_hold_s
_FIRST_HELD = (LBReason.NOT_REGISTERED, LBReason.REGISTERING)  # while a pod has none written


class Admitted:
    """Pods the LB admitted into rotation, looked up on demand (``pod in admitted``) and
    remembered for the round: lb-ready True as the API shows it, or as written since; not
    those the gate's timeout let in (the LB has not confirmed them)."""

    def __init__(self, pods: Mapping[PodKey, Pod], reporter: ConditionReporter) -> None:
        self.pods = pods
        self.reporter = reporter
        self._known: dict[object, bool] = {}

    def __contains__(self, key: object) -> bool:
        known = self._known.get(key)
        if known is None:
            known = self._known[key] = self._admitted(key)
        return known

    def _admitted(self, key: object) -> bool:
        if not isinstance(key, PodKey) or (pod := self.pods.get(key)) is None:
            return False
        unconfirmed = LBReason.GATE_TIMEOUT_ADMITTED.value
        cond = pod.condition(LB_READY)
        if cond is not None and cond.status == "True" and cond.reason != unconfirmed:
            return True
        mine = self.reporter.desired(key)
        return (
            mine is not None
            and mine.uid == pod.uid
            and mine.status == "True"
            and mine.reason != unconfirmed
        )


class _Asking:
    """``admitted``, noting each pod asked about and the answer (what a verdict relied on)."""

    def __init__(self, admitted: Admitted) -> None:
        self.admitted = admitted
        self.asked: dict[PodKey, bool] = {}

    def __contains__(self, key: object) -> bool:
        got = key in self.admitted
        if isinstance(key, PodKey):
            self.asked[key] = got
        return got


View = tuple[tuple[str, AdminState, Health, bool], ...] | None


def _view(state: PoolState | None) -> View:
    """What a pool's verdicts read of one instance's state: per server its admin state, its
    health and whether it has sessions (not how many: those change all the time)."""
    if state is None:
        return None
    return tuple((n, s.admin, s.health, not s.sessions) for n, s in state.servers.items())


def _same_view(was: Sequence[PoolState | None], now: Sequence[PoolState | None]) -> bool:
    """Whether each instance shows the same of a pool (:func:`_view`): at once when the states
    or their servers are the very objects (HAProxy's readers keep a server that did not change,
    and a round hands the states of the pools it did not read again), else compared."""
    if len(was) != len(now):
        return False
    for a, b in zip(was, now, strict=True):
        if a is b:
            continue
        if a is None or b is None:
            return False
        if len(a.servers) != len(b.servers) or not all(
            x is y for x, y in zip(a.servers.values(), b.servers.values(), strict=True)
        ):
            return all(_view(x) == _view(y) for x, y in zip(was, now, strict=True))
    return True


@dataclass(frozen=True, slots=True)
class _PoolMemo:
    spec: PoolSpec
    states: tuple[PoolState | None, ...]  # per instance, as its verdicts read them
    asked: Mapping[PodKey, bool]  # admitted or not, of the pods the verdicts asked about
    verdicts: list[tuple[PodKey, LBVerdict]]
    waits: bool  # a verdict in _WAITS: VerdictWriter.waits
    by_pod: dict[PodKey, LBVerdict]  # the verdicts by pod (fewer: a pod twice in the pool)


@dataclass
class VerdictWriter:
    """Decides and hands over every pod's lb-ready, round after round (the leader's half that
    faces the pods); keeps the gate's clocks and the servers each LB instance lacked."""

    reporter: ConditionReporter
    events: EventSink
    clock: Clock
    metrics: LeaderMetrics = field(default_factory=LeaderMetrics)
    # A pod's Registering is handed over only once it has waited this long at the gate: most
    # admissions land within a round or two, and the write in between (with its Event) was
    # half the lb-ready writes under churn, queued before the Healthy that unblocks the pod.
    # So is the first NotRegistered of a pod that carries no lb-ready yet: a new pod of a
    # rollout is ready a moment later, and its first write is then Healthy (a pod that stays
    # unready gets its NotRegistered this long after podlb first saw it).
    registering_hold_s: float = REGISTERING_HOLD_S
    # (provider, instance, pool) -> servers of pods in rotation it lacked last round
    _lost: dict[tuple[str, str, str], frozenset[str]] = field(default_factory=dict)
    # pods waiting at the gate: pod -> (uid, since when, monotonic); timeouts counted already
    _gate_since: dict[PodKey, tuple[str, float]] = field(default_factory=dict)
    _gate_counted: set[tuple[PodKey, str]] = field(default_factory=set)
    _memo: dict[tuple[str, str], _PoolMemo] = field(default_factory=dict)  # (provider, pool)
    _handed: dict[PodKey, tuple[str, LBVerdict]] = field(default_factory=dict)  # uid, verdict
    _alone: set[PodKey] = field(default_factory=set)  # pods behind one pool, at the last write
    # pods with nothing written yet, at NotRegistered or Registering: since when (monotonic),
    # by pod and uid; their first NotRegistered is held until registering_hold_s from then
    _unready_since: dict[PodKey, tuple[str, float]] = field(default_factory=dict)

    def write(
        self,
        pools: Iterable[PoolSpec],
        observed: Observed,
        pods: Mapping[PodKey, Pod],
        services: Sequence[Service],
    ) -> bool:
        """Set every pod's lb-ready from this round's pools and what the LB reported
        (providers missing from ``observed`` could not be observed: their pods keep theirs).
        True when a pod waits for the LB (registering, draining, early admission): look again
        soon."""
        pools = list(pools)
        admitted = Admitted(pods, self.reporter)
        verdicts = self._verdicts(pools, observed, admitted)
        self._report_lost(pools, observed, admitted, services)
        # Pods behind a provider that could not be observed keep their condition as it is.
        held = held_pods(pools, observed)
        for gone in self.reporter.keys() - verdicts.keys() - held:
            self.reporter.forget(gone)  # no longer behind a direct Service, or deleted
        if held:
            verdicts = {k: v for k, v in verdicts.items() if k not in held}
            self._alone -= held  # (also behind a pool not observed: write_again leaves them)
        gated = self._gate(pools, verdicts, pods)
        # A pod admitted on its staged server's checks (gate-admit: checked) waits for no event
        # of its own: HAProxy turning the server UP is seen only by looking again, soon.
        # (What the LB said: a pod held at the gate may yet register.)
        busy = any(v.reason in _POLL for v in verdicts.values()) or any(
            not gated[pod].ready for spec in pools for pod in spec.early if pod in gated
        )
        self._handed = self._hand_over(gated, pods, {}, every_pod=True)
        self.metrics.backends(Counter[str](v.reason for v in gated.values()))  # StrEnums
        return busy or bool(self._unready_since)  # a held NotRegistered: look again soon

    def write_again(
        self,
        keys: Iterable[tuple[str, str]],
        specs: Mapping[tuple[str, str], PoolSpec],
        observed: Observed,
        pods: Mapping[PodKey, Pod],
    ) -> bool:
        """After :meth:`write`, the verdicts of the pods of pools ``keys`` ((provider, pool),
        read back since) decided again from ``observed`` and handed over where they changed:
        a pass over those pools alone (a whole pass costs a pass over every pod). False, and
        nothing done, when one of their pods is also behind another pool: :meth:`write`
        then. What the pass leaves (gone pods, lost servers, the busy flag, the per-reason
        count) is :meth:`write`'s next round."""
        admitted = Admitted(pods, self.reporter)
        changed: dict[PodKey, LBVerdict] = {}
        again: list[tuple[tuple[str, str], _PoolMemo]] = []
        for key in keys:
            spec, by_instance = specs.get(key), observed.get(key[0])
            if spec is None or by_instance is None or (was := self._memo.get(key)) is None:
                continue
            memo = self._pool(spec, tuple(x.get(spec.pool) for x in by_instance.values()), admitted)
            if memo.verdicts is was.verdicts:
                continue
            if not self._alone.issuperset(memo.by_pod) or len(memo.by_pod) != len(memo.verdicts):
                return False
            again.append((key, memo))
            changed.update(memo.by_pod)
        for key, memo in again:
            self._memo[key] = memo
        if changed:
            gated = self._gate([specs[k] for k, _ in again], changed, pods, every_pod=False)
            self._handed = self._hand_over(gated, pods, self._handed, every_pod=False)
        return True

    def _hand_over(
        self,
        gated: Mapping[PodKey, LBVerdict],
        pods: Mapping[PodKey, Pod],
        kept: dict[PodKey, tuple[str, LBVerdict]],
        *,
        every_pod: bool,
    ) -> dict[PodKey, tuple[str, LBVerdict]]:
        """Hand each verdict that changed to the writer; what was handed over, by pod, added
        to ``kept`` (``every_pod``: these are all of them, the others are forgotten)."""
        handed = kept
        last_handed = self._handed
        now = self.clock.monotonic()
        unready = self._unready_since
        self._unready_since = (
            {} if every_pod else {k: since for k, since in unready.items() if k not in gated}
        )
        for key, v in gated.items():
            last = last_handed.get(key)
            if last is not None and last[1] is v:  # a remembered verdict: handed over already
                handed[key] = last
                continue
            pod = pods.get(key)
            if pod is None:
                continue
            # Nothing written yet (none handed over to this pod, none on it): its first
            # NotRegistered waits out the hold, timed from when it was first seen so, while it
            # stays unwritten (a readiness that flaps does not start the clock again).
            fresh = (last is None or last[0] != pod.uid) and not pod.condition(LB_READY)
            if fresh and v.reason in _FIRST_HELD:
                uid, since = unready.get(key, (pod.uid, now))
                since = since if uid == pod.uid else now
                self._unready_since[key] = (pod.uid, since)
                if v.reason is LBReason.NOT_REGISTERED and now - since < self.registering_hold_s:
                    continue
            if v.reason is LBReason.REGISTERING and self._held(key, pod, now):
                if last is not None:  # what it has stays, and is compared again next round
                    handed[key] = last
                continue
            handed[key] = (pod.uid, v)
            self.reporter.set_desired(key, Desired(pod.uid, v.status, v.reason.value, v.message))
        return handed

    def waits(self, pool: tuple[str, str]) -> bool:
        """Whether a pod of ``(provider, pool)`` waited for the LB at the last verdicts
        (Registering, Unhealthy, Draining): its state may change without an event."""
        memo = self._memo.get(pool)
        return memo is not None and memo.waits

    def _held(self, key: PodKey, pod: Pod, now: float) -> bool:
        """Whether a pod's Registering is held back: it has waited at the gate for less than
        :attr:`registering_hold_s` (the round's busy flag looks again soon)."""
        uid, since = self._gate_since.get(key, ("", now))
        return uid == pod.uid and now - since < self.registering_hold_s

    def _verdicts(
        self, pools: list[PoolSpec], observed: Observed, admitted: Admitted
    ) -> dict[PodKey, LBVerdict]:
        """:func:`agent.leader.plan.lb_verdicts`, each pool's remembered from the last round
        while its spec is the same object (agent.leader.desired.DesiredPools), every instance
        shows the same of it (:func:`_view`) and the pods asked about are admitted as then."""
        combined: dict[PodKey, LBVerdict] = {}
        shared: dict[PodKey, list[LBVerdict]] = {}  # pods with verdicts of several pools
        memo: dict[tuple[str, str], _PoolMemo] = {}
        for spec in pools:
            by_instance = observed.get(spec.provider)
            if by_instance is None:
                continue
            states = tuple(x.get(spec.pool) for x in by_instance.values())
            memo[(spec.provider, spec.pool)] = last = self._pool(spec, states, admitted)
            # Most pods are behind one pool: their verdicts are taken as they are, ten
            # thousand of them in a few dict updates (plan.combine_verdicts for the others).
            if len(last.by_pod) == len(last.verdicts) and combined.keys().isdisjoint(last.by_pod):
                combined.update(last.by_pod)
                continue
            for pod, v in last.verdicts:
                if pod in shared:
                    shared[pod].append(v)
                elif pod in combined:
                    shared[pod] = [combined[pod], v]
                else:
                    combined[pod] = v
        self._memo = memo
        self._alone = combined.keys() - shared.keys()
        combined.update(combine_verdicts(shared))
        return combined

    def _pool(
        self, spec: PoolSpec, states: tuple[PoolState | None, ...], admitted: Admitted
    ) -> _PoolMemo:
        """One pool's verdicts: remembered while its spec is the same object, every instance
        shows the same of it and the pods asked about are admitted as then; else decided."""
        last = self._memo.get((spec.provider, spec.pool))
        if (
            last is None
            or last.spec is not spec
            or not _same_view(last.states, states)
            or any((pod in admitted) != was for pod, was in last.asked.items())
        ):
            asking = _Asking(admitted)
            got = pool_verdicts(spec, states, asking)
            waits = any(v.reason in _WAITS for _, v in got)
            return _PoolMemo(spec, states, asking.asked, got, waits, dict(got))
        if any(a is not b for a, b in zip(last.states, states, strict=True)):
            return replace(last, states=states)  # the same view: keep the newest states
        return last

    def _gate(
        self,
        pools: list[PoolSpec],
        verdicts: dict[PodKey, LBVerdict],
        pods: Mapping[PodKey, Pod],
        *,
        every_pod: bool = True,
    ) -> dict[PodKey, LBVerdict]:
        """The gate's bound over this round's verdicts (agent/leader/gate.py): waits are timed
        on the monotonic clock from the first round that saw the pod waiting; each timeout is
        counted and logged once (the condition's change is the pod's Event)."""
        now = self.clock.monotonic()
        waiting = {k for k, v in verdicts.items() if v.reason in WAITING and k in pods}
        policies: dict[PodKey, list[tuple[GatePolicy, str]]] = {}
        if waiting:
            for spec in pools:
                for b in spec.backends.values():
                    if b.pod in waiting and not b.draining:
                        policies.setdefault(b.pod, []).append((spec.gate, spec.service.name))
        waiting &= policies.keys()
        out = verdicts
        timed_out = (LBReason.GATE_TIMEOUT.value, LBReason.GATE_TIMEOUT_ADMITTED.value)
        for key in waiting:
            pod, v = pods[key], verdicts[key]
            uid, since = self._gate_since.get(key, ("", now))
            if uid != pod.uid:
                since = now
                self._gate_since[key] = (pod.uid, now)
            cond = pod.condition(LB_READY)
            before = cond is not None and cond.reason in timed_out
            policy = combine(p for p, _ in policies[key])
            gated = gate_verdict(v, policy, now - since, timed_out_before=before)
            if gated is not v:
                if out is verdicts:
                    out = dict(verdicts)
                out[key] = gated
            if gated is v or before or (key, pod.uid) in self._gate_counted:
                continue
            self._gate_counted.add((key, pod.uid))
            service = min(policies[key], key=lambda ps: (ps[0].timeout_s, ps[1]))[1]
            self.metrics.gate_timeout(key.namespace, service, policy.on_timeout.value)
            log.warning("leader: pod %s: %s", key, gated.message)
        # Pods not waiting (any more) are forgotten: all others, or of some pods' verdicts,
        # those of them.
        done = (self._gate_since.keys() if every_pod else verdicts.keys()) - waiting
        for key in done & self._gate_since.keys():
            del self._gate_since[key]
        if every_pod:
            self._gate_counted = {(k, u) for k, u in self._gate_counted if k in waiting}
        else:
            self._gate_counted = {(k, u) for k, u in self._gate_counted if k not in done}
        return out

    def _report_lost(
        self,
        pools: list[PoolSpec],
        observed: Observed,
        admitted: Admitted,
        services: Sequence[Service],
    ) -> None:
        """An Event on the Service and a metric for each server an LB instance newly lacks."""
        lost = lost_servers(pools, observed, admitted)
        by_pool = {(s.provider, s.pool): s for s in pools}
        for (provider, instance, pool), servers in sorted(lost.items()):
            new = servers - self._lost.get((provider, instance, pool), frozenset())
            if not new:
                continue
            self.metrics.servers_lost(provider, len(new))
            svc = by_pool[(provider, pool)].service
            message = (
                f"the {provider} LB {instance} lost {len(new)} servers of pool {pool} "
                f"({', '.join(sorted(new)[:3])}{' ...' if len(new) > 3 else ''}): an LB "
                "restart or reload? Re-adding them; their pods stay in rotation"
            )
            log.warning("leader: %s/%s: %s", svc.namespace, svc.name, message)
            uid = next((x.uid for x in services if (x.namespace, x.name) == svc), "")
            try:
                self.events.emit_object_event(
                    "Service", svc.namespace, svc.name, uid, "Warning", "LBServersLost", message
                )
            except PodlbError as exc:
                log.warning("leader: event not recorded: %s", exc)
        self._lost = lost


def held_pods(pools: Iterable[PoolSpec], observed: Observed) -> set[PodKey]:
    """Pods behind a provider that could not be observed (their lb-ready is left as it is)."""
    return {
        pod
        for spec in pools
        if spec.provider not in observed
        for pod in [*(b.pod for b in spec.backends.values()), *spec.others]
    }
