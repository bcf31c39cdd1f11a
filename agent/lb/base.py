"""The LB provider interface: observe a pool, apply a plan, report health and sessions.

A *pool* is the LB's group of backends for one Service port (an HAProxy backend, a CLB
listener/rule, a BLB IP group). A provider may drive several LB *instances* that must all
converge (two HAProxy processes behind a VIP): the leader plans and applies per instance and a
backend is healthy only when every instance reports it UP.

Each pool has a *mode*: ``manage`` (podlb registers, re-weights and removes the backends) or
``observe`` (someone else does, a cloud's own service controller: podlb only reads the pool
for ``podlb.io/lb-ready`` and the drain, and never calls ``apply``).
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from agent.errors import PermanentError


class Mode(enum.StrEnum):
    MANAGE = "manage"  # podlb owns the pool's backends
    OBSERVE = "observe"  # read only: another controller registers the backends


@functools.lru_cache(maxsize=65536)
def canonical_ip(address: str) -> str:
    """The address as the LB prints it (IPv6 compressed); cached: it runs per endpoint.
    ``ValueError`` for what is not an IP address."""
    return str(ipaddress.ip_address(address))


def server_name(address: str, port: int) -> str:
    """podlb's name of a backend in every pool: ``<ip>_<port>`` (``:`` as ``-``). The leader
    removes only servers named so: servers of the LB's own configuration keep other names."""
    return f"{address.replace(':', '-')}_{port}"


class AdminState(enum.StrEnum):
    READY = "ready"  # takes new traffic
    DRAIN = "drain"  # no new traffic, existing sessions continue, health checks continue
    MAINT = "maint"  # out of service


class Health(enum.StrEnum):
    UP = "up"  # the LB's health check passes
    DOWN = "down"  # it fails
    CHECKING = "checking"  # no verdict yet (just added, or checks disabled)
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ObservedServer:
    name: str
    address: str
    port: int
    weight: int
    admin: AdminState
    health: Health
    # Current sessions (connections) on this server; None when the LB does not report them
    # (cloud LBs): a drained server is then taken as deregistered once its weight is 0. HAProxy
    # reads them only of servers out of rotation or down (PoolReader): None for the others.
    sessions: int | None
    # The server has a health check but it is switched off (an add cut short before its
    # ``enable health``): the plan enables it again. False where the LB has no such state.
    checks_off: bool = False


@dataclass(frozen=True, slots=True)
class PoolState:
    pool: str
    servers: dict[str, ObservedServer] = field(default_factory=dict)


class Op(enum.StrEnum):
    ADD = "add"  # create the server (health checks on), then make it ready
    # create the server out of rotation with its health checks on (drain): see Staging
    STAGE = "stage"
    SET_WEIGHT = "set_weight"
    ENABLE = "enable"  # drain/maint -> ready, health checks on
    DRAIN = "drain"  # ready -> drain: no new connections
    REMOVE = "remove"  # maint + delete; only once drained (no sessions)


@dataclass(frozen=True, slots=True)
class Action:
    op: Op
    server: str
    address: str | None = None
    port: int | None = None
    weight: int | None = None  # ADD, SET_WEIGHT, ENABLE (a cloud LB enables by re-weighting)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    done: int = 0
    failed: tuple[tuple[Action, str], ...] = ()  # the action and the LB's answer


def split_batches(actions: Sequence[Action]) -> list[list[Action]]:
    """Consecutive batches, each naming a server at most once (order kept)."""
    batches: list[list[Action]] = [[]]
    seen: set[str] = set()
    for a in actions:
        if a.server in seen:
            batches.append([])
            seen = set()
        seen.add(a.server)
        batches[-1].append(a)
    return [b for b in batches if b]


@runtime_checkable
class Staging(Protocol):
    """A provider whose LB can health-check a server it sends no new traffic to (HAProxy's
    ``drain`` state). The leader then adds a pod's server as soon as the pod has an IP
    (:attr:`Op.STAGE`), so the LB's health checks (``rise`` of them) run while the app starts
    and passes its readiness probe; admitting the pod is then one ENABLE, not an ADD followed by
    health checks. Servers staged this way count against the pool's cap of backends."""

    def stages(self) -> bool:
        """True when staging helps on this LB (its servers have health checks)."""
        ...


@runtime_checkable
class IndependentWrites(Protocol):
    """A provider whose changes to different servers of one pool neither wait for each other
    nor depend on their order (HAProxy: each server's commands stand alone). The leader then
    applies a round's registrations and its drains and removals as separate batches, side by
    side, so that a slow removal never holds a registration. Other providers get one batch in
    the plan's order (a cloud LB serializes its writes per LB anyway, and counts its quota of
    members within one batch: removals must free slots before the adds that need them)."""

    def independent_writes(self) -> bool: ...


@runtime_checkable
class QuickObserve(Protocol):
    """A provider whose pools can be read one by one at once and cheaply (HAProxy's runtime
    API: two short commands). The leader then reads back, in the same round, the pools it just
    admitted servers to, and writes their pods' ``lb-ready`` then rather than a round later (a
    round at 10,000 servers takes most of a second)."""

    def observes_quickly(self) -> bool: ...


class PoolNotFound(PermanentError):
    """The LB has no such pool (an HAProxy backend must exist in its configuration)."""


class LBAuthError(PermanentError):
    """The LB API refused the credentials or their permissions. Providers do not retry it, and
    refuse further calls for a while (no retry storm against a cloud API)."""


class LBQuotaError(PermanentError):
    """The LB refused a change for a quota or limit (too many backends, say)."""


class LBProvider(Protocol):
    """What the leader needs of a load balancer. I/O only: no decisions here.

    ``observe`` and ``apply`` raise ``TransientError`` when the instance cannot be reached
    (after bounded retries, throttling included), ``PoolNotFound`` for an unknown pool,
    ``LBAuthError`` for refused credentials. ``apply`` runs every action it can and reports
    each rejected one in the result instead of stopping. ``apply`` may be called from several
    threads at once (for different servers).
    """

    name: str
    max_weight: int  # weights are capped to it (HAProxy 256, cloud LBs 100)
    # Backends a pool accepts when the Service sets no podlb.io/max-backends (None: no limit).
    default_max_backends: int | None

    def instances(self) -> Sequence[str]: ...

    def observe(self, instance: str, pool: str) -> PoolState: ...

    def observe_pools(self, instance: str, pools: Collection[str]) -> dict[str, PoolState]:
        """The named pools in as few calls as the LB allows; pools it lacks are left out."""
        ...

    def apply(self, instance: str, pool: str, actions: Sequence[Action]) -> ApplyResult: ...


@runtime_checkable
class RestartAware(Protocol):
    """A provider whose instances can lose the servers podlb added (an HAProxy restart or
    reload drops its runtime servers) and that can tell, cheaply, that this happened."""

    def process_id(self, instance: str) -> str:
        """An id of the instance's running process that changes when it restarts or reloads:
        one cheap request, no retry, meant to be polled every second or so.
        ``TransientError`` when the instance cannot be reached."""
        ...
