"""Which condition transitions are problems: the type of each Event podlb emits on a pod.

Every reason of ``podlb.io/datapath-ready`` and ``podlb.io/lb-ready`` is classified here, and
nowhere else; README.md ("Conditions and Events") shows the same table and
tests/unit/test_docs.py holds the two equal. Expected life -- a pod created, starting,
registering, in rotation, draining, taken out -- is a Normal Event; a Warning means something
is wrong. On a pod being stopped every transition is Normal: its app and its sandbox are meant
to go away.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from agent.leader.plan import LBReason
from agent.model import DATAPATH_READY, LB_READY
from agent.node.readiness import Reason


class EventType(enum.StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


class Kind(enum.Enum):
    EXPECTED = "expected"  # normal life: a Normal Event
    PROBLEM = "problem"  # something is wrong: a Warning
    # A Warning when it takes a ready pod out; a starting pod passes through it (Normal).
    LOSS = "loss"


KINDS: Mapping[tuple[str, str], Kind] = {
    (DATAPATH_READY, Reason.READY): Kind.EXPECTED,
    (DATAPATH_READY, Reason.NO_POD_IP): Kind.EXPECTED,  # the pod is being created
    (DATAPATH_READY, Reason.NAMESPACE_NOT_FOUND): Kind.LOSS,  # not scanned yet, or gone
    (DATAPATH_READY, Reason.NO_INTERFACE): Kind.PROBLEM,
    (DATAPATH_READY, Reason.NO_ADDRESS): Kind.PROBLEM,
    (DATAPATH_READY, Reason.LINK_DOWN): Kind.PROBLEM,
    (DATAPATH_READY, Reason.NOT_LISTENING): Kind.LOSS,  # the app starting, or it stopped
    (LB_READY, LBReason.HEALTHY): Kind.EXPECTED,
    (LB_READY, LBReason.NOT_REGISTERED): Kind.EXPECTED,
    (LB_READY, LBReason.REGISTERING): Kind.EXPECTED,
    (LB_READY, LBReason.UNHEALTHY): Kind.PROBLEM,
    (LB_READY, LBReason.DRAINING): Kind.EXPECTED,
    (LB_READY, LBReason.DEREGISTERED): Kind.EXPECTED,
    # The gate's bound passed (podlb.io/gate-timeout): held out, or admitted unconfirmed.
    (LB_READY, LBReason.GATE_TIMEOUT): Kind.PROBLEM,
    (LB_READY, LBReason.GATE_TIMEOUT_ADMITTED): Kind.PROBLEM,
}

# Events that are no condition's transition, by reason (README, "Other Events"). The leader's
# findings on Services and pods (agent.leader.routing.Problem) are all Warnings besides.
OTHER_EVENTS: Mapping[str, EventType] = {
    "Drained": EventType.NORMAL,  # a drain ended on the signals: its record's summary
    "DrainTimeout": EventType.WARNING,
    "DrainAgentShutdown": EventType.WARNING,
    "BadDrainTimeout": EventType.WARNING,
    "DrainPortInUse": EventType.WARNING,
}


def event_type(condition_type: str, reason: str, *, was_ready: bool, stopping: bool) -> EventType:
    """The type of the Event for a transition of ``condition_type`` to ``reason``.
    ``was_ready``: the condition was True before; ``stopping``: the pod is being stopped. A
    reason missing from :data:`KINDS` is a Warning (never hidden)."""
    kind = KINDS.get((condition_type, reason), Kind.PROBLEM)
    if stopping or kind is Kind.EXPECTED or (kind is Kind.LOSS and not was_ready):
        return EventType.NORMAL
    return EventType.WARNING
