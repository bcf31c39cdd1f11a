"""What each drain saw, for ``/v1/drains``, the metrics and the pod's Event.

A drain is looked at every poll (``DrainManager``); :func:`tally` folds each look into a
:class:`Tally` (pure). Its reference moment is the LB's confirmation (``lb-ready`` reason
``Deregistered``), or the drain's first look for a pod no LB manages; from then on a connection
on a serving port that was not there before is a new connection, and the bytes its peers sent
are counted. Connections are sampled, once per poll: one opened and closed between two looks is
not seen, nor are the bytes a connection received after the last look before it closed.

:class:`DrainLog` keeps the last records in bounded rings: refusals in a ring of their own, so
a flood of drain requests for live or made-up pods cannot push real drains out of view.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.model import Pod, Service, direct_mode

DRAIN_RECORDS = 100  # drains kept for /v1/drains
REFUSED_RECORDS = 20  # refusals kept beside them
NO_SERVICE = "none"  # the Service label of a pod no Service selects


class Connection(Protocol):
    """One established connection on a serving port (``agent.node.drain.Activity``)."""

    @property
    def key(self) -> tuple[int, str]: ...

    @property
    def bytes_received(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Tally:
    """What one drain has seen so far. ``since_s``: when the reference moment came, in seconds
    from the deletion; the counts after it are None before it."""

    since_s: float | None = None
    at_reference: int | None = None  # connections on serving ports at the reference moment
    last: int | None = None  # ... at the latest look
    new: int | None = None  # connections first seen after the reference moment
    bytes: int | None = None  # bytes received on serving ports after the reference moment
    seen: Mapping[tuple[int, str], int] = field(default_factory=dict)  # key -> bytes received


def tally(
    t: Tally, *, elapsed_s: float, reference: bool, connections: Sequence[Connection] | None
) -> Tally:
    """Fold one look into ``t`` (pure). ``reference``: the LB confirms the pod is out (or no LB
    manages it); ``connections`` on serving ports, None when they could not be read."""
    if connections is None:
        return t
    now = {c.key: c.bytes_received or 0 for c in connections}
    if t.since_s is None:
        if not reference:
            return dataclasses.replace(t, last=len(now))
        return Tally(elapsed_s, len(now), len(now), 0, 0, now)
    new = [k for k in now if k not in t.seen]
    grown = sum(max(0, b - t.seen[k]) for k, b in now.items() if k in t.seen)
    return dataclasses.replace(
        t,
        last=len(now),
        new=(t.new or 0) + len(new),
        bytes=(t.bytes or 0) + grown + sum(now[k] for k in new),
        seen=now,
    )


def service_label(pod: Pod, services: Iterable[Service]) -> str:
    """The Service a drain is counted under: a direct-mode Service selecting the pod (the
    first by name), else any selecting it, else ``none``. From the node's own informer, so it
    needs no leader."""
    selecting = sorted(
        (s for s in services if s.selects(pod)), key=lambda s: (not direct_mode(s)[0], s.name)
    )
    return selecting[0].name if selecting else NO_SERVICE


@dataclass(frozen=True, slots=True)
class DrainRecord:
    """One drain as ``/v1/drains`` shows it (README, "Drain records")."""

    namespace: str
    pod: str
    uid: str  # "" when no such pod was found (a refusal)
    service: str  # see service_label
    outcome: str  # deregistered+quiet, timeout, agent-shutdown, refused
    ended_at: str  # RFC 3339, this node's clock: when the hook was answered
    seconds: float  # from the deletion (as this node first saw it) to the answer
    deregistered_s: float | None  # from the deletion to the LB's Deregistered
    connections_at_deregistered: int | None  # on serving ports, at the LB's Deregistered
    connections_at_end: int | None  # ... when the hook was answered
    new_connections: int | None  # accepted after the LB's Deregistered (should be 0)
    quiet_bytes: int | None  # received on serving ports after the LB's Deregistered
    message: str


def record_json(record: DrainRecord) -> dict[str, Any]:
    out = dataclasses.asdict(record)
    for key in ("seconds", "deregistered_s"):
        if out[key] is not None:
            out[key] = round(out[key], 3)
    return out


def summary(record: DrainRecord) -> str:
    """The record in one sentence (the pod's Event)."""

    def n(value: int | None) -> str:
        return "-" if value is None else str(value)

    parts = [f"{record.outcome} after {record.seconds:.1f}s"]
    if record.deregistered_s is None:
        parts.append("the LB never confirmed it deregistered the pod")
    else:
        parts.append(f"deregistered at {record.deregistered_s:.1f}s")
    parts.append(
        f"connections on serving ports {n(record.connections_at_deregistered)} then, "
        f"{n(record.connections_at_end)} at the end"
    )
    if record.new_connections is not None:
        parts.append(
            f"{record.new_connections} new connection(s) and {record.quiet_bytes or 0} B "
            "received after it"
        )
    return f"{'; '.join(parts)} (Service {record.service}): {record.message}"


class DrainLog:
    """The last ``size`` drains and ``refused_size`` refusals, oldest first (thread-safe)."""

    def __init__(self, size: int = DRAIN_RECORDS, refused_size: int = REFUSED_RECORDS) -> None:
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._held: deque[tuple[int, DrainRecord]] = deque(maxlen=size)
        self._refused: deque[tuple[int, DrainRecord]] = deque(maxlen=refused_size)

    def add(self, record: DrainRecord) -> None:
        with self._lock:
            ring = self._refused if record.outcome == "refused" else self._held
            ring.append((next(self._seq), record))

    def records(self) -> list[DrainRecord]:
        with self._lock:
            both = sorted([*self._held, *self._refused], key=lambda e: e[0])
        return [r for _, r in both]
