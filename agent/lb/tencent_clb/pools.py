"""CLB pool names (pure): ``<lb-id>/<listener>[/<location-id>]`` and the listener they name.

:func:`parse_pool` reads a name, the listener an ID (``lbl-...``) or ``PROTO:PORT``
(``TCP:80``); :func:`resolve_pool` finds it in a DescribeListeners answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.lb.base import PoolNotFound

JSON = dict[str, Any]

LAYER7 = frozenset({"HTTP", "HTTPS"})
PROTOCOLS = frozenset({"TCP", "UDP", "HTTP", "HTTPS", "TCP_SSL", "QUIC"})

_LB_ID = re.compile(r"lb-[a-z0-9]+")
_LISTENER_ID = re.compile(r"lbl-[a-z0-9]+")
_LOCATION_ID = re.compile(r"loc-[a-z0-9]+")
_PROTO_PORT = re.compile(r"([A-Z_]+):(\d{1,5})")


@dataclass(frozen=True, slots=True)
class PoolRef:
    """A parsed pool name; ``listener_id`` or ``protocol`` + ``port`` names the listener."""

    lb_id: str
    listener_id: str | None = None
    protocol: str | None = None
    port: int | None = None
    location_id: str | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """The pool a resolved :class:`PoolRef` names: a listener, and a rule on layer 7."""

    lb_id: str
    listener_id: str
    protocol: str
    location_id: str | None
    health_check: bool  # the listener (layer 4) or rule (layer 7) checks its targets


def parse_pool(pool: str) -> PoolRef:
    """``<lb-id>/<lbl-id | PROTO:PORT>[/<loc-id>]``; :class:`PoolNotFound` when malformed."""
    expected = "expected <lb-id>/<listener-id or PROTO:PORT>[/<location-id>], e.g. lb-abc/TCP:80"
    parts = pool.split("/")
    if len(parts) not in (2, 3) or not _LB_ID.fullmatch(parts[0]):
        raise PoolNotFound(f"CLB pool {pool!r} is malformed: {expected}")
    lb_id, listener = parts[0], parts[1]
    location = parts[2] if len(parts) == 3 else None
    if location is not None and not _LOCATION_ID.fullmatch(location):
        raise PoolNotFound(f"CLB pool {pool!r}: {location!r} is not a location ID (loc-...)")
    if _LISTENER_ID.fullmatch(listener):
        return PoolRef(lb_id, listener_id=listener, location_id=location)
    m = _PROTO_PORT.fullmatch(listener)
    if m and m[1] in PROTOCOLS and 0 < int(m[2]) < 65536:
        return PoolRef(lb_id, protocol=m[1], port=int(m[2]), location_id=location)
    raise PoolNotFound(
        f"CLB pool {pool!r}: {listener!r} is neither a listener ID (lbl-...) nor PROTO:PORT"
        f" with PROTO one of {', '.join(sorted(PROTOCOLS))}"
    )


def _switch_on(health_check: Any) -> bool:
    """HealthCheck.HealthSwitch: 1 on, 0 off; a missing block counts as on (the default)."""
    if not isinstance(health_check, Mapping):
        return True
    return health_check.get("HealthSwitch") != 0


def resolve_pool(pool: str, ref: PoolRef, listeners: Sequence[JSON]) -> Target:
    """The listener (and rule) ``ref`` names among a DescribeListeners answer's ``Listeners``;
    :class:`PoolNotFound` when there is none, or when a layer-7 pool names no rule."""
    for li in listeners:
        if ref.listener_id is not None:
            if li.get("ListenerId") != ref.listener_id:
                continue
        elif (li.get("Protocol"), li.get("Port")) != (ref.protocol, ref.port):
            continue
        protocol = str(li.get("Protocol") or "")
        lid = str(li["ListenerId"])
        if protocol in LAYER7:
            if ref.location_id is None:
                raise PoolNotFound(
                    f"CLB pool {pool!r}: {protocol} listener {lid} needs a location ID"
                    " (<lb-id>/<listener>/<loc-id>): its targets sit on forwarding rules"
                )
            for rule in li.get("Rules") or ():
                if rule.get("LocationId") == ref.location_id:
                    return Target(
                        ref.lb_id,
                        lid,
                        protocol,
                        ref.location_id,
                        _switch_on(rule.get("HealthCheck")),
                    )
            raise PoolNotFound(f"CLB pool {pool!r}: listener {lid} has no rule {ref.location_id}")
        if ref.location_id is not None:
            raise PoolNotFound(
                f"CLB pool {pool!r}: {protocol} listener {lid} has no forwarding rules;"
                " drop the location ID"
            )
        return Target(ref.lb_id, lid, protocol, None, _switch_on(li.get("HealthCheck")))
    raise PoolNotFound(f"CLB pool {pool!r}: load balancer {ref.lb_id} has no such listener")
