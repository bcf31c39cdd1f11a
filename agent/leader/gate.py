"""The readiness gate's bound, per Service (pure): how long a pod may wait for the LB's
confirmation, and what then.

``podlb.io/gate-timeout`` (a duration: ``90s``, ``2m``; default 10 minutes) and
``podlb.io/gate-on-timeout``: ``hold`` (default) keeps the pod out of rotation and says so
(``podlb.io/lb-ready`` False, reason ``GateTimeout``); ``admit`` lets it in without the LB's
confirmation (``lb-ready`` True, reason ``GateTimeoutAdmitted``). The time counts from when
the leader first saw the pod ready to serve (a backend) and not admitted, on the leader's
monotonic clock; a new leader counts afresh, except that a pod whose condition already carries
one of those reasons stays timed out. A malformed value is reported and the default used.

``podlb.io/gate-admit``: when ``lb-ready`` turns True. ``rotation`` (default): once every LB
instance has the pod's server in rotation and its health checks pass, so a pod is Ready only
when the LB sends it traffic. ``checked``: on an LB that stages (HAProxy), already once the
health checks pass on the pod's staged server, before the pod is ready; the pod is put in
rotation as soon as it is ready (one LB call). The kubelet applies a gate at its next sync of
the pod, which after ``ContainersReady`` comes 1-2 s later (kubelet 1.28): a gate that is True
before ``ContainersReady`` makes the pod Ready in the same sync. The price: the pod is Ready
(and the rollout moves on) one LB call before it is in rotation.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TypeVar

from agent.model import Service
from agent.node.drain import parse_duration

GATE_TIMEOUT = "podlb.io/gate-timeout"
GATE_ON_TIMEOUT = "podlb.io/gate-on-timeout"
GATE_ADMIT = "podlb.io/gate-admit"
DEFAULT_TIMEOUT_S = 600.0  # as long as GKE's NEG readiness gate waits before it admits


class OnTimeout(enum.StrEnum):
    HOLD = "hold"
    ADMIT = "admit"


class Admit(enum.StrEnum):
    ROTATION = "rotation"
    CHECKED = "checked"


@dataclass(frozen=True, slots=True)
class GatePolicy:
    timeout_s: float = DEFAULT_TIMEOUT_S
    on_timeout: OnTimeout = OnTimeout.HOLD
    admit: Admit = Admit.ROTATION


def gate_policy(svc: Service) -> tuple[GatePolicy, list[str]]:
    """The Service's gate policy and a message per malformed annotation (its default used)."""
    policy, problems = GatePolicy(), []
    raw = svc.annotation(GATE_TIMEOUT)
    if raw is not None:
        seconds = parse_duration(raw)
        if seconds is None or seconds <= 0:
            problems.append(
                f"{GATE_TIMEOUT}: {raw!r} is not a duration (like 90s or 2m); "
                f"using {DEFAULT_TIMEOUT_S:g}s"
            )
        else:
            policy = replace(policy, timeout_s=seconds)
    on_timeout = _choice(svc, GATE_ON_TIMEOUT, OnTimeout, OnTimeout.HOLD, problems)
    admit = _choice(svc, GATE_ADMIT, Admit, Admit.ROTATION, problems)
    policy = replace(policy, on_timeout=on_timeout, admit=admit)
    return policy, problems


E = TypeVar("E", bound=enum.StrEnum)


def _choice(svc: Service, key: str, kind: type[E], default: E, problems: list[str]) -> E:
    """The annotation ``key`` as one of ``kind``'s values; ``default`` when unset or not one
    (then said in ``problems``)."""
    raw = svc.annotation(key)
    if raw is None:
        return default
    try:
        return kind(raw.strip().lower())
    except ValueError:
        allowed = " or ".join(m.value for m in kind)
        problems.append(f"{key}: {raw!r} is not {allowed}; using {default}")
        return default


def combine(policies: Iterable[GatePolicy]) -> GatePolicy:
    """A pod behind several Services: the shortest bound, and hold if any Service says hold
    (a pod is admitted unconfirmed only when every Service agrees); admitted before it is in
    rotation only when every Service says ``checked``."""
    ps = list(policies)
    if not ps:
        return GatePolicy()
    hold = any(p.on_timeout is OnTimeout.HOLD for p in ps)
    checked = all(p.admit is Admit.CHECKED for p in ps)
    return GatePolicy(
        min(p.timeout_s for p in ps),
        OnTimeout.HOLD if hold else OnTimeout.ADMIT,
        Admit.CHECKED if checked else Admit.ROTATION,
    )
