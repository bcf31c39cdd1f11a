"""The readiness gate's bound, per Service (pure): how long a pod may wait for the LB's
confirmation, and what then.

``podlb.io/gate-timeout`` (a duration: ``90s``, ``2m``; default 10 minutes) and
``podlb.io/gate-on-timeout``: ``hold`` (default) keeps the pod out of rotation and says so
(``podlb.io/lb-ready`` False, reason ``GateTimeout``); ``admit`` lets it in without the LB's
confirmation (``lb-ready`` True, reason ``GateTimeoutAdmitted``). The time counts from when
the leader first saw the pod ready to serve (a backend) and not admitted, on the leader's
monotonic clock; a new leader counts afresh, except that a pod whose condition already carries
one of those reasons stays timed out. A malformed value is reported and the default used.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from agent.model import Service
from agent.node.drain import parse_duration

GATE_TIMEOUT = "podlb.io/gate-timeout"
GATE_ON_TIMEOUT = "podlb.io/gate-on-timeout"
DEFAULT_TIMEOUT_S = 600.0  # as long as GKE's NEG readiness gate waits before it admits


class OnTimeout(enum.StrEnum):
    HOLD = "hold"
    ADMIT = "admit"


@dataclass(frozen=True, slots=True)
class GatePolicy:
    timeout_s: float = DEFAULT_TIMEOUT_S
    on_timeout: OnTimeout = OnTimeout.HOLD


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
            policy = GatePolicy(seconds, policy.on_timeout)
    raw = svc.annotation(GATE_ON_TIMEOUT)
    if raw is not None:
        try:
            policy = GatePolicy(policy.timeout_s, OnTimeout(raw.strip().lower()))
        except ValueError:
            problems.append(
                f"{GATE_ON_TIMEOUT}: {raw!r} is not hold or admit; using {OnTimeout.HOLD}"
            )
    return policy, problems


def combine(policies: Iterable[GatePolicy]) -> GatePolicy:
    """A pod behind several Services: the shortest bound, and hold if any Service says hold
    (a pod is admitted unconfirmed only when every Service agrees)."""
    ps = list(policies)
    if not ps:
        return GatePolicy()
    hold = any(p.on_timeout is OnTimeout.HOLD for p in ps)
    return GatePolicy(min(p.timeout_s for p in ps), OnTimeout.HOLD if hold else OnTimeout.ADMIT)
