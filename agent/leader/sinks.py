"""What the leader reports into: Events and metrics, kept as a protocol and callables so that
the leader's modules stay pure of agent/metrics.py and of the Kubernetes client."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class EventSink(Protocol):
    def emit_object_event(
        self, kind: str, namespace: str, name: str, uid: str, event_type: str, reason: str,
        message: str,
    ) -> None: ...  # fmt: skip


@dataclass
class LeaderMetrics:
    """Hooks into agent/metrics.py."""

    reconcile: Callable[[float, str], None] = lambda seconds, outcome: None
    lb_action: Callable[[str, str], None] = lambda op, outcome: None
    backends: Callable[[dict[str, int]], None] = lambda by_state: None
    finding: Callable[[str], None] = lambda reason: None
    fail_static: Callable[[str], None] = lambda why: None
    # servers of pods in rotation an LB instance lost (restart, reload), by provider
    servers_lost: Callable[[str, int], None] = lambda provider, count: None
    # a pod passed its gate timeout: (namespace, Service, hold | admit)
    gate_timeout: Callable[[str, str, str], None] = lambda namespace, service, policy: None
