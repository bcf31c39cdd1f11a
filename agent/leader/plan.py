"""From desired pools and what the LB reports to LB actions and lb-ready verdicts (pure).

A plan lists what adds capacity first (adds, enables, weights, staged servers), then what takes
it away (drains, removals); on an LB whose writes are independent (HAProxy) the leader applies
the two groups side by side, so that a slow removal never holds a registration, elsewhere in
this order (agent.lb.base.IndependentWrites). A server is removed only once
drained: no sessions left, or drained for longer than the drain timeout, or (on an LB that
does not count sessions) its pod is gone.
"""

from __future__ import annotations

import enum
from collections.abc import Container, Iterable, Mapping, Sequence

from agent.lb.base import Action, AdminState, Health, ObservedServer, Op, PoolState, server_name
from agent.model import PodKey, Verdict

from .desired import PoolSpec
from .gate import GATE_ADMIT, GATE_ON_TIMEOUT, Admit, GatePolicy, OnTimeout

_ORDER = {Op.ADD: 0, Op.ENABLE: 1, Op.SET_WEIGHT: 2, Op.STAGE: 3, Op.DRAIN: 4, Op.REMOVE: 5}


def plan_pool(
    spec: PoolSpec | None,
    observed: PoolState,
    *,
    drain_age_s: Mapping[str, float] | None = None,
    drain_timeout_s: float = 30.0,
    fail_static: bool = False,
    live_addresses: Container[str] = frozenset(),
) -> list[Action]:
    """Actions that move one LB instance's pool towards ``spec``.

    ``spec`` None means no Service wants this pool any more (it is emptied). ``drain_age_s``
    tells how long each draining server has been draining. With ``fail_static`` nothing is
    drained or removed (the inputs cannot be trusted), only added or enabled.
    ``live_addresses``: IPs of pods that exist (an LB that counts no sessions keeps a drained
    server of a live pod until the drain timeout).
    """
    drain_age_s = drain_age_s or {}
    wanted = dict(spec.backends) if spec is not None else {}
    actions: list[Action] = []

    others = set(spec.others.values()) if spec is not None else set()
    staged = dict(spec.staged) if spec is not None else {}

    def drain_or_remove(name: str) -> None:
        obs = observed.servers[name]
        if obs.admin is AdminState.READY:
            actions.append(Action(Op.DRAIN, name))
        elif obs.sessions == 0 or drain_age_s.get(name, 0.0) >= drain_timeout_s:
            actions.append(Action(Op.REMOVE, name))
        elif (
            obs.sessions is None
            and name not in wanted
            and name not in others
            and obs.address not in live_addresses
        ):
            # The LB does not count sessions: the pod is gone (not merely terminating or not
            # ready), so nothing can be left to finish on it.
            actions.append(Action(Op.REMOVE, name))

    for name, backend in wanted.items():
        obs = observed.servers.get(name)
        if backend.draining:
            if obs is not None and not fail_static:
                drain_or_remove(name)
            continue
        if obs is None:
            actions.append(Action(Op.ADD, name, backend.address, backend.port, backend.weight))
            continue
        if obs.checks_off or (
            obs.admin is not AdminState.READY
            and not (obs.sessions is None and backend.weight == 0 == obs.weight)
        ):  # an LB without sessions has no drain state but weight 0: nothing more to enable
            actions.append(Action(Op.ENABLE, name, weight=backend.weight))
        if obs.weight != backend.weight:
            actions.append(Action(Op.SET_WEIGHT, name, weight=backend.weight))
    for name, backend in staged.items():
        # Held out of rotation, health-checked, until its pod is a backend (never removed for
        # that); one taking new traffic (its pod left rotation) is drained below.
        if name not in observed.servers:
            actions.append(Action(Op.STAGE, name, backend.address, backend.port, backend.weight))
    if not fail_static:
        for name, obs in observed.servers.items():
            # Only servers podlb added (named <ip>_<port>) are ever taken out: servers from the
            # LB's own configuration are not ours to remove.
            if name not in wanted and name == server_name(obs.address, obs.port):
                if name not in staged:
                    drain_or_remove(name)
                elif obs.admin is AdminState.READY:
                    actions.append(Action(Op.DRAIN, name))
    actions.sort(key=lambda a: (_ORDER[a.op], a.server))
    return actions


class LBReason(enum.StrEnum):
    HEALTHY = "Healthy"
    NOT_REGISTERED = "NotRegistered"  # not a backend (not ready), and never in the LB
    REGISTERING = "Registering"
    UNHEALTHY = "Unhealthy"
    DRAINING = "Draining"
    DEREGISTERED = "Deregistered"
    # The gate's bound passed (agent/leader/gate.py): held out, or admitted unconfirmed.
    GATE_TIMEOUT = "GateTimeout"
    GATE_TIMEOUT_ADMITTED = "GateTimeoutAdmitted"


LBVerdict = Verdict[LBReason]  # for annotations; instances are plain Verdicts


Observed = Mapping[str, Mapping[str, Mapping[str, PoolState]]]  # provider -> instance -> pool


_IN_ROTATION = "in rotation, LB health checks pass"


def lb_verdicts(
    pools: Iterable[PoolSpec], observed: Observed, admitted: Container[PodKey] = frozenset()
) -> dict[PodKey, LBVerdict]:
    """``podlb.io/lb-ready`` for every pod behind a direct Service.

    ``observed`` is provider -> instance -> pool -> state, for every instance of each provider
    (pools of a provider not in it get no verdict). True only when every instance reports
    every one of the pod's servers UP.

    The gate is for admission into rotation: a pod in ``admitted`` (lb-ready is True now)
    stays True while an LB instance lacks its server or has not checked it yet (a restart or
    reload lost it; the plan adds it again, :func:`lost_servers` reports it), and leaves only
    when a health check fails or it is drained. Its verdict is then the healthy one, word for
    word, so nothing is written.
    """
    per_pod: dict[PodKey, list[LBVerdict]] = {}
    for spec in pools:
        by_instance = observed.get(spec.provider)
        if by_instance is None:
            continue
        states = [by_instance[i].get(spec.pool) for i in by_instance]
        for pod, v in pool_verdicts(spec, states, admitted):
            per_pod.setdefault(pod, []).append(v)
    return combine_verdicts(per_pod)


def combine_verdicts(per_pod: Mapping[PodKey, list[LBVerdict]]) -> dict[PodKey, LBVerdict]:
    return {pod: vs[0] if len(vs) == 1 else _combine(vs) for pod, vs in per_pod.items()}


def pool_verdicts(
    spec: PoolSpec, states: Sequence[PoolState | None], admitted: Container[PodKey]
) -> list[tuple[PodKey, LBVerdict]]:
    """:func:`lb_verdicts` of one pool: ``states`` holds what each instance of its provider
    reported of it (None: that instance lacks the pool)."""
    out: list[tuple[PodKey, LBVerdict]] = []
    instances = len(states)
    for backend in spec.backends.values():
        name = backend.server
        present = [s.servers[name] for s in states if s is not None and name in s.servers]
        where = f"{spec.pool}/{name}"
        if backend.draining:
            v = _leaving(where, present, instances, None in states)
        elif (
            instances
            and len(present) == instances
            and all(s.health is Health.UP and s.admin is AdminState.READY for s in present)
        ) or (
            # (asked only here: whether a pod is admitted costs a lookup)
            instances
            and not any(s.health is Health.DOWN for s in present)
            and backend.pod in admitted
        ):
            v = Verdict(True, LBReason.HEALTHY, f"{where}: {_IN_ROTATION}")
        elif len(present) < instances or not instances:
            v = Verdict(
                False,
                LBReason.REGISTERING,
                f"{where}: registered on {len(present)} of {instances} LB instances",
            )
        elif any(s.health is Health.DOWN for s in present):
            v = Verdict(False, LBReason.UNHEALTHY, f"{where}: the LB health check fails")
        else:
            v = Verdict(False, LBReason.REGISTERING, f"{where}: waiting for health checks")
        out.append((backend.pod, v))
    for pod, server in spec.others.items():
        present = [s.servers[server] for s in states if s is not None and server in s.servers]
        where = f"{spec.pool}/{server} (not a backend: not ready)"
        if (
            pod in spec.early
            and instances
            and len(present) == instances
            and all(s.health is Health.UP for s in present)
        ):
            v = Verdict(
                True,
                LBReason.HEALTHY,
                f"{spec.pool}/{server}: LB health checks pass; in rotation once the pod "
                f"is ready ({GATE_ADMIT}: {Admit.CHECKED})",
            )
        elif (pod in spec.unregistered or pod in spec.early) and all(
            s.admin is not AdminState.READY for s in present
        ):
            # Never in rotation: one message, staged, unstaged or not (yet) on the LB, so
            # the pod's condition is written once.
            v = Verdict(False, LBReason.NOT_REGISTERED, f"{where}: not in rotation yet")
        else:
            v = _leaving(where, present, instances, None in states)
        out.append((pod, v))
    return out


def lost_servers(
    pools: Iterable[PoolSpec], observed: Observed, admitted: Container[PodKey]
) -> dict[tuple[str, str, str], frozenset[str]]:
    """(provider, instance, pool) -> servers of pods in rotation (``admitted``, not draining)
    that the instance's pool lacks: lost on the LB side (a restart or reload drops HAProxy's
    runtime servers). The plan adds them again; the caller reports each loss once."""
    out: dict[tuple[str, str, str], frozenset[str]] = {}
    for spec in pools:
        for instance, per_pool in observed.get(spec.provider, {}).items():
            state = per_pool.get(spec.pool)
            if state is None:
                continue
            missing = frozenset(
                b.server
                for b in spec.backends.values()
                if b.server not in state.servers and not b.draining and b.pod in admitted
            )
            if missing:
                out[(spec.provider, instance, spec.pool)] = missing
    return out


def _leaving(
    where: str, present: list[ObservedServer], instances: int, pool_unseen: bool = False
) -> LBVerdict:
    """A server on its way out: Deregistered only once the LB itself confirms it (a pool some
    instance did not show cannot confirm anything)."""
    if pool_unseen:
        return Verdict(False, LBReason.DRAINING, f"{where}: the pool was not observed")
    if not present:
        # Said so also of a pod deleted before it was ever added: Deregistered is what its
        # drain waits for, "removed" would not be true.
        return Verdict(False, LBReason.DEREGISTERED, f"{where}: not in the LB")
    if len(present) == instances and all(
        s.admin is not AdminState.READY and not s.sessions for s in present
    ):
        # Every LB instance: no new traffic, and no session left (removal follows) or none
        # the LB could tell of (a cloud LB at weight 0: the node then waits for quiet).
        return Verdict(False, LBReason.DEREGISTERED, f"{where}: drained on every LB instance")
    return Verdict(False, LBReason.DRAINING, f"{where}: draining")


_BADNESS = {
    LBReason.DRAINING: 0,
    LBReason.UNHEALTHY: 1,
    LBReason.REGISTERING: 2,
    LBReason.DEREGISTERED: 3,
    LBReason.NOT_REGISTERED: 3,
    LBReason.HEALTHY: 4,
}


def _combine(verdicts: list[LBVerdict]) -> LBVerdict:
    """A pod behind several pools is ready only when ready in all; else the first problem."""
    if all(v.ready for v in verdicts):
        return verdicts[0]
    return min((v for v in verdicts if not v.ready), key=lambda v: _BADNESS[v.reason])


WAITING = (LBReason.REGISTERING, LBReason.UNHEALTHY)  # verdicts of a pod waiting at the gate


def gate_verdict(
    verdict: LBVerdict, policy: GatePolicy, waited_s: float, *, timed_out_before: bool = False
) -> LBVerdict:
    """The verdict once the gate's bound applies (pure). A pod waiting at the gate (a backend
    the LB has not confirmed: Registering or Unhealthy) for ``policy.timeout_s`` or more, or
    one already timed out (``timed_out_before``: its condition says so, e.g. written by an
    earlier leader), is held out with reason GateTimeout or admitted with GateTimeoutAdmitted;
    what the LB says stays in the message."""
    if verdict.reason not in WAITING or (waited_s < policy.timeout_s and not timed_out_before):
        return verdict
    said = f"{verdict.reason}: {verdict.message}"
    bound = f"not confirmed by the LB within the gate timeout ({policy.timeout_s:g}s)"
    if policy.on_timeout is OnTimeout.ADMIT:
        return Verdict(
            True,
            LBReason.GATE_TIMEOUT_ADMITTED,
            f"{said}; {bound}: admitted without the LB's confirmation "
            f"({GATE_ON_TIMEOUT}: {policy.on_timeout})",
        )
    return Verdict(
        False,
        LBReason.GATE_TIMEOUT,
        f"{said}; {bound}: held out of rotation until it is ({GATE_ON_TIMEOUT}: "
        f"{policy.on_timeout})",
    )
