"""BLB answers (pure): IP group member pages, member health, the IP groups of a listener."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.lb.base import Health, ObservedServer, server_name
from agent.lb.cloud import observed_server


@dataclass(frozen=True, slots=True)
class Member:
    """One IP group member as the BLB lists it."""

    member_id: str
    ip: str
    port: int
    weight: int
    statuses: tuple[str, ...] = ()  # portList[].status: "Alive" / "Dead" / "Unknown"

    @property
    def name(self) -> str:
        return server_name(self.ip, self.port)


def parse_member_page(body: Mapping[str, Any]) -> tuple[list[Member], str | None]:
    """Members of one ``describe_app_ip_group_member`` page and the next marker (None: last).

    ``ValueError`` on an answer of another shape."""
    raw = body.get("memberList")
    if not isinstance(raw, list):
        raise ValueError(f"no memberList in {str(body)[:120]!r}")
    members = []
    for m in raw:
        try:
            ports = m.get("portList") or []
            members.append(
                Member(
                    member_id=str(m["memberId"]),
                    ip=str(m["ip"]),
                    port=int(m["port"]),
                    weight=int(m["weight"]),
                    statuses=tuple(str(p.get("status") or "Unknown") for p in ports),
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"bad member {m!r}: {e!r}") from None
    truncated = bool(body.get("isTruncated"))
    marker = body.get("nextMarker")
    if truncated and not marker:
        raise ValueError("isTruncated without nextMarker")
    return members, (str(marker) if truncated else None)


def health_of(statuses: Sequence[str]) -> Health:
    """The BLB's verdict on a member from its port health statuses.

    * no status (the IP group has no backend policy, so no health check): UP. The BLB forwards
      to every member then, and podlb.io/lb-ready must not wait for a check that never comes;
    * any ``Dead``: DOWN (one failing protocol is enough to stop traffic on that listener);
    * all ``Alive``: UP; otherwise (``Unknown``, just added) CHECKING.
    """
    if not statuses:
        return Health.UP
    if any(s == "Dead" for s in statuses):
        return Health.DOWN
    if all(s == "Alive" for s in statuses):
        return Health.UP
    return Health.CHECKING


def to_observed(m: Member) -> ObservedServer:
    """A member as podlb sees it: weight 0 is the BLB's drain (no new connections)."""
    return observed_server(m.name, m.ip, m.port, m.weight, health_of(m.statuses))


def ip_groups_of_policies(body: Mapping[str, Any]) -> list[str]:
    """The distinct IP groups a listener's policies forward to, in policy order."""
    raw = body.get("policyList")
    if not isinstance(raw, list):
        raise ValueError(f"no policyList in {str(body)[:120]!r}")
    groups: list[str] = []
    for p in raw:
        gid = p.get("appIpGroupId") if isinstance(p, Mapping) else None
        if gid and gid not in groups:
            groups.append(str(gid))
    return groups
