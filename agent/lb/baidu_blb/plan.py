"""BLB writes (pure): :class:`Action` s planned against the listed members as create, update
and delete calls, with the quota check (``max_backends``) before any call."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from agent.lb.baidu_blb.answers import Member
from agent.lb.base import Action, Op, server_name

MAX_WEIGHT = 100  # member weight 0..100 (AppIpGroupMember, BLB API appendix)


@dataclass(slots=True)
class Create:
    ip: str
    port: int
    weight: int
    actions: list[Action]


@dataclass(slots=True)
class Update:
    member_id: str
    weight: int
    actions: list[Action]


@dataclass(slots=True)
class Delete:
    member_id: str
    actions: list[Action]


@dataclass(slots=True)
class Plan:
    creates: dict[str, Create] = dataclasses.field(default_factory=dict)  # by server name
    updates: dict[str, Update] = dataclasses.field(default_factory=dict)  # by member id
    deletes: dict[str, Delete] = dataclasses.field(default_factory=dict)  # by member id
    done: list[Action] = dataclasses.field(default_factory=list)
    failed: list[tuple[Action, str]] = dataclasses.field(default_factory=list)


def _check_weight(weight: int | None, max_weight: int) -> str | None:
    if weight is None:
        return "needs a weight"
    if not 0 <= weight <= max_weight:
        return f"weight {weight} out of 0..{max_weight}"
    return None


def plan_actions(
    actions: Sequence[Action],
    listed: Mapping[str, Member],
    pending: Collection[str],
    *,
    max_backends: int | None,
    max_weight: int = MAX_WEIGHT,
) -> Plan:
    """Turn actions into API calls against what the BLB lists (``listed``, by server name).

    ``pending``: servers this provider added that the BLB does not list yet. Writes of the
    same member in one batch are merged (ENABLE + SET_WEIGHT -> one update, last weight wins).
    ADDs beyond ``max_backends`` members (listed + pending - removed + added) are refused here,
    in order, before any call.
    """
    plan = Plan()
    removing: set[str] = set()
    for a in actions:
        if a.op is Op.REMOVE:
            m = listed.get(a.server)
            if m is not None and a.server not in plan.creates:
                removing.add(a.server)
    count = len(listed) + len([p for p in pending if p not in listed]) - len(removing)

    for a in actions:
        listed_m = listed.get(a.server)
        if a.op is Op.ADD:
            if a.address is None or a.port is None:
                plan.failed.append((a, "invalid: add needs an address and a port"))
                continue
            try:
                ip = ipaddress.ip_address(a.address).compressed
            except ValueError:
                plan.failed.append((a, f"invalid: {a.address!r} is not an IP address"))
                continue
            if not 0 < a.port < 65536:
                plan.failed.append((a, f"invalid: port {a.port} out of 1..65535"))
                continue
            if a.server != server_name(ip, a.port):
                plan.failed.append(
                    (a, f"invalid: a BLB member is named {server_name(ip, a.port)!r}")
                )
                continue
            weight = max_weight if a.weight is None else a.weight
            if (bad := _check_weight(weight, max_weight)) is not None:
                plan.failed.append((a, f"invalid: {bad}"))
                continue
            if listed_m is not None:
                if listed_m.weight == weight and listed_m.member_id not in plan.updates:
                    plan.done.append(a)  # already there (added by us or by the BLB's owner)
                else:
                    _update(plan, listed_m, weight, a)
            elif a.server in pending:
                plan.done.append(a)  # added a moment ago, not listed yet
            elif a.server in plan.creates:
                c = plan.creates[a.server]
                c.weight = weight
                c.actions.append(a)
            elif max_backends is not None and count >= max_backends:
                plan.failed.append(
                    (
                        a,
                        f"quota: the IP group would exceed max_backends={max_backends}"
                        f" members ({count} listed or pending); not sent to the BLB."
                        " Raise the BLB quota and podlb.io/max-backends together",
                    )
                )
            else:
                plan.creates[a.server] = Create(ip, a.port, weight, [a])
                count += 1
            continue

        if a.op is Op.REMOVE:
            if a.server in plan.creates:
                plan.failed.append((a, "invalid: removed in the apply that adds it"))
            elif listed_m is not None:
                d = plan.deletes.setdefault(listed_m.member_id, Delete(listed_m.member_id, []))
                d.actions.append(a)
            elif a.server in pending:
                plan.failed.append((a, "pending: added a moment ago, not listed by the BLB yet"))
            else:
                plan.done.append(a)  # already gone
            continue

        new_weight = 0 if a.op is Op.DRAIN else a.weight
        if (bad := _check_weight(new_weight, max_weight)) is not None:
            plan.failed.append((a, f"invalid: {a.op.value} {bad}"))
            continue
        assert new_weight is not None
        if a.server in plan.creates:
            c = plan.creates[a.server]
            c.weight = new_weight
            c.actions.append(a)
        elif listed_m is not None:
            if listed_m.weight == new_weight and listed_m.member_id not in plan.updates:
                plan.done.append(a)
            else:
                _update(plan, listed_m, new_weight, a)
        elif a.server in pending:
            plan.failed.append((a, "pending: added a moment ago, not listed by the BLB yet"))
        else:
            plan.failed.append((a, "no_server: the IP group has no such member"))
    return plan


def _update(plan: Plan, m: Member, weight: int, a: Action) -> None:
    u = plan.updates.setdefault(m.member_id, Update(m.member_id, weight, []))
    u.weight = weight
    u.actions.append(a)
