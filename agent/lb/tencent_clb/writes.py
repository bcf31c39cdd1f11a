"""CLB writes (pure): :class:`Action` s as BatchRegisterTargets, BatchModifyTargetWeight and
BatchDeregisterTargets calls, chunked to the documented per-call limits (see the package
docstring)."""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from agent.lb.base import Action, Op, split_batches
from agent.lb.cloud import chunks
from agent.lb.tencent_clb.pools import JSON, Target

# Per-call limits, documented (see the package docstring).
MAX_BATCH_TARGETS = 500  # BatchRegisterTargets / BatchDeregisterTargets Targets.N
MAX_WEIGHT_RULES = 100  # BatchModifyTargetWeight ModifyList.N
MAX_WEIGHT_RULE_TARGETS = 50  # ModifyList[i].Targets.N
MAX_WEIGHT_TARGETS = 500  # all Targets of one BatchModifyTargetWeight
MAX_WEIGHT = 100
DEFAULT_WEIGHT = 10  # what CLB gives a target registered without a weight


@dataclass(frozen=True, slots=True)
class Member:
    """One target as the write APIs name it: an IP (``EniIp``) or a CVM (``InstanceId``)."""

    port: int
    ip: str | None = None
    instance_id: str | None = None

    def fields(self) -> JSON:
        if self.instance_id is not None:
            return {"InstanceId": self.instance_id, "Port": self.port}
        return {"EniIp": self.ip, "Port": self.port}


def member_of(action: Action) -> Member:
    """The target an action names: its address and port, else parsed from the server name
    (``<ip with ':' as '-'>_<port>`` or ``<InstanceId>_<port>``). ``ValueError`` otherwise."""
    if action.address is not None and action.port is not None:
        ip = ipaddress.ip_address(action.address).compressed
        port = action.port
    else:
        head, sep, port_s = action.server.rpartition("_")
        if not sep or not port_s.isdigit():
            raise ValueError(f"server {action.server!r} is not <address>_<port>")
        port = int(port_s)
        if head.startswith("ins-"):
            if not 0 < port < 65536:
                raise ValueError(f"port {port} out of range")
            return Member(port, instance_id=head)
        ip = ipaddress.ip_address(head.replace("-", ":")).compressed
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return Member(port, ip=ip)


def weight_of(action: Action) -> int:
    """The CLB weight an action sets: DRAIN 0, ADD its weight (else CLB's default 10),
    SET_WEIGHT and ENABLE their weight (required), in 0..100."""
    if action.op is Op.DRAIN:
        return 0
    if action.weight is None:
        if action.op is Op.ADD:
            return DEFAULT_WEIGHT
        raise ValueError(f"{action.op} needs a weight")
    if not 0 <= action.weight <= MAX_WEIGHT:
        raise ValueError(f"weight {action.weight} outside CLB's 0..{MAX_WEIGHT}")
    return int(action.weight)


class Call(enum.StrEnum):
    REGISTER = "BatchRegisterTargets"
    WEIGHT = "BatchModifyTargetWeight"
    DEREGISTER = "BatchDeregisterTargets"


_CALL_OF = {
    Op.ADD: Call.REGISTER,
    Op.SET_WEIGHT: Call.WEIGHT,
    Op.ENABLE: Call.WEIGHT,
    Op.DRAIN: Call.WEIGHT,
    Op.REMOVE: Call.DEREGISTER,
}
# Within a batch: deregister first (frees quota), re-weight, then register.
# Removals (of targets already at weight 0) free quota; then new capacity; re-weights (drains
# among them) last, so capacity is added before any is taken away.
CALL_ORDER = (Call.DEREGISTER, Call.REGISTER, Call.WEIGHT)


@dataclass(frozen=True, slots=True)
class Item:
    action: Action
    member: Member
    weight: int | None  # REGISTER / WEIGHT


def call_limit(call: Call) -> int:
    return MAX_WEIGHT_TARGETS if call is Call.WEIGHT else MAX_BATCH_TARGETS


def plan_calls(
    actions: Sequence[Action],
) -> tuple[list[tuple[Call, list[Item]]], list[tuple[Action, str]]]:
    """Write calls for ``actions`` (batches that name a server once, in order; within one:
    deregister, register, re-weight), each within the call's limit; and the actions that
    cannot be expressed, with the reason."""
    calls: list[tuple[Call, list[Item]]] = []
    invalid: list[tuple[Action, str]] = []
    for batch in split_batches(actions):
        groups: dict[Call, list[Item]] = {c: [] for c in CALL_ORDER}
        for a in batch:
            try:
                member = member_of(a)
                weight = None if a.op is Op.REMOVE else weight_of(a)
            except ValueError as e:
                invalid.append((a, f"invalid: {e}"))
                continue
            groups[_CALL_OF[a.op]].append(Item(a, member, weight))
        for call in CALL_ORDER:
            calls += [(call, list(c)) for c in chunks(groups[call], call_limit(call))]
    return calls, invalid


def request_params(call: Call, target: Target, items: Sequence[Item]) -> JSON:
    """The request of one write call on ``target``'s pool."""
    loc = {"LocationId": target.location_id} if target.location_id else {}
    if call is Call.WEIGHT:
        rules = [
            {
                "ListenerId": target.listener_id,
                **loc,
                "Targets": [{**i.member.fields(), "Weight": i.weight} for i in part],
            }
            for part in chunks(items, MAX_WEIGHT_RULE_TARGETS)
        ]
        if len(rules) > MAX_WEIGHT_RULES:
            raise ValueError("too many weight rules for one call")
        return {"LoadBalancerId": target.lb_id, "ModifyList": rules}
    targets = []
    for i in items:
        t: JSON = {"ListenerId": target.listener_id, **i.member.fields(), **loc}
        if call is Call.REGISTER:
            t["Weight"] = i.weight
        targets.append(t)
    return {"LoadBalancerId": target.lb_id, "Targets": targets}


def idempotent_success(call: Call, message: str) -> bool:
    """A lone target's rejection that means the wanted state already holds: registering a
    target that is bound, deregistering one that is not."""
    text = message.lower()
    if call is Call.REGISTER:
        return "already" in text or (
            "exist" in text and not any(n in text for n in ("not exist", "n't exist", "no exist"))
        )
    if call is Call.DEREGISTER:
        return any(s in text for s in ("not bound", "not exist", "not found", "unbound"))
    return False
