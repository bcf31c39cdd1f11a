"""CLB answers (pure): DescribeTargets and DescribeTargetHealth joined into a :class:`PoolState`.

:func:`build_pool_state` names each target (:func:`target_name`) and judges its health
(:func:`health_of`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agent.lb.base import Health, PoolState, canonical_ip, server_name
from agent.lb.cloud import observed_server
from agent.lb.tencent_clb.pools import JSON, Target


def as_printed(ip: str) -> str:
    """:func:`canonical_ip`, or the text as it came when the CLB sent no IP address."""
    try:
        return canonical_ip(ip)
    except ValueError:
        return ip


def target_name(backend: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(name, address)`` of a DescribeTargets ``Backend``; None when it has no address.

    IP targets (ENI and the other non-CVM types) are named like the leader names backends, so
    it manages them; CVM instance targets ``<InstanceId>_<port>``, a name the leader never
    plans, so it leaves them alone."""
    port = int(backend.get("Port") or 0)
    ips = [ip for ip in backend.get("PrivateIpAddresses") or () if ip]
    address = as_printed(ips[0]) if ips else ""
    if backend.get("Type") == "CVM" and backend.get("InstanceId"):
        return f"{backend['InstanceId']}_{port}", address or str(backend["InstanceId"])
    if not address:
        return None
    return server_name(address, port), address


def health_of(entry: Mapping[str, Any] | None, health_check: bool) -> Health:
    """The CLB's verdict on one target.

    * health checks off on the listener (or rule), or ``HealthStatusDetail`` ``Close``: UP.
      CLB then forwards to every target with a weight, so there is nothing to wait for;
    * no DescribeTargetHealth entry yet (just registered) or ``Unknown``: CHECKING;
    * ``Alive``: UP, ``Dead``: DOWN; without a detail, ``HealthStatus`` true/false.
    """
    if not health_check:
        return Health.UP
    if entry is None:
        return Health.CHECKING
    detail = entry.get("HealthStatusDetail") or entry.get("HealthStatusDetial")
    if detail == "Close":
        return Health.UP
    if detail == "Alive":
        return Health.UP
    if detail == "Dead":
        return Health.DOWN
    if detail == "Unknown":
        return Health.CHECKING
    status = entry.get("HealthStatus")
    if status is True:
        return Health.UP
    if status is False:
        return Health.DOWN
    return Health.UNKNOWN


def pool_backends(target: Target, describe_listeners: Iterable[JSON]) -> list[JSON] | None:
    """The ``Backend`` s of ``target`` in a DescribeTargets ``Listeners`` answer (None when the
    listener, or its rule, is not in the answer)."""
    for lb in describe_listeners:
        if lb.get("ListenerId") != target.listener_id:
            continue
        if target.location_id is None:
            return list(lb.get("Targets") or ())
        for rule in lb.get("Rules") or ():
            if rule.get("LocationId") == target.location_id:
                return list(rule.get("Targets") or ())
        return None
    return None


def health_index(
    load_balancers: Iterable[JSON],
) -> dict[tuple[str, str | None, str, int], JSON]:
    """DescribeTargetHealth ``LoadBalancers`` keyed by (listener, location, ip, port).

    Layer-4 listeners report their targets under one rule too: those are also keyed with
    location None."""
    out: dict[tuple[str, str | None, str, int], JSON] = {}
    for lb in load_balancers:
        for li in lb.get("Listeners") or ():
            lid = str(li.get("ListenerId"))
            for rule in li.get("Rules") or ():
                loc = rule.get("LocationId") or None
                for t in rule.get("Targets") or ():
                    ip, port = as_printed(str(t.get("IP") or "")), int(t.get("Port") or 0)
                    out[(lid, loc, ip, port)] = t
                    out.setdefault((lid, None, ip, port), t)
    return out


def build_pool_state(
    pool: str,
    target: Target,
    backends: Iterable[JSON],
    health: Mapping[tuple[str, str | None, str, int], JSON],
) -> PoolState:
    """One :class:`PoolState`: weight 0 is DRAIN (CLB sends no new connections), else READY;
    sessions unknown (CLB does not report them per target)."""
    servers = {}
    for b in backends:
        named = target_name(b)
        if named is None:
            continue
        name, address = named
        port, weight = int(b.get("Port") or 0), int(b.get("Weight") or 0)
        entry = health.get((target.listener_id, target.location_id, address, port))
        health_ = health_of(entry, target.health_check)
        servers[name] = observed_server(name, address, port, weight, health_)
    return PoolState(pool, servers)
