"""A pod's status as the kubelet writes it: conditions and container statuses. Pure."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def resource_version(obj: Obj) -> int:
    """resourceVersion as a number for ordering (the testbed's are integers)."""
    try:
        return int(obj.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def conditions_of(obj: Obj) -> dict[str, Obj]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def pod_ready_condition(containers_ready: bool, obj: Obj) -> tuple[str, str | None, str | None]:
    """kubelet's Ready condition: ``(status, reason, message)`` from ContainersReady and the
    readiness gates of ``obj`` (a pod dict)."""
    if not containers_ready:
        return "False", "ContainersNotReady", "containers with unready status"
    conds = conditions_of(obj)
    missing: list[str] = []
    unready: list[str] = []
    for gate in (obj.get("spec") or {}).get("readinessGates") or []:
        ctype = gate.get("conditionType")
        c = conds.get(ctype)
        if c is None:
            missing.append(ctype)
        elif c.get("status") != "True":
            unready.append(ctype)
    if missing or unready:
        msgs = [
            f'corresponding condition of pod readiness gate "{t}" does not exist.' for t in missing
        ]
        msgs += [
            f'the status of pod readiness gate "{t}" is not "True", but False' for t in unready
        ]
        return "False", "ReadinessGatesNotReady", ", ".join(msgs)
    return "True", None, None


def condition(
    obj: Obj, ctype: str, status: str, reason: str | None = None, message: str | None = None
) -> Obj:
    """A condition for a status patch of ``obj``; ``lastTransitionTime`` moves only on a flip."""
    cur = conditions_of(obj).get(ctype, {})
    same = cur.get("status") == status
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastProbeTime": None,
        "lastTransitionTime": cur.get("lastTransitionTime") if same else now_iso(),
    }


def container_status(
    name: str,
    spec: Obj,
    *,
    container_id: str,
    started_at: str,
    ready: bool,
    exit_code: int | None = None,
) -> Obj:
    """One ``containerStatuses`` entry: running since ``started_at``, or terminated with
    ``exit_code``."""
    if exit_code is not None:
        state: Obj = {
            "terminated": {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": started_at,
                "finishedAt": now_iso(),
            }
        }
    else:
        state = {"running": {"startedAt": started_at}}
    return {
        "name": name,
        "image": spec.get("image", "testbed/app"),
        "imageID": "testbed://app",
        "containerID": container_id,
        "ready": ready,
        "started": exit_code is None,
        "restartCount": 0,
        "state": state,
    }


def ready_conditions(obj: Obj, containers_ready: bool, *, reason: str | None = None) -> list[Obj]:
    """ContainersReady and Ready together, as the kubelet's status manager writes them when a
    container's readiness changes (``reason`` overrides the not-ready reason)."""
    if containers_ready:
        status, ready_reason, message = pod_ready_condition(True, obj)
        return [
            condition(obj, "ContainersReady", "True"),
            condition(obj, "Ready", status, ready_reason, message),
        ]
    why = reason or "ContainersNotReady"
    message = None if reason else "containers with unready status"
    return [
        condition(obj, "ContainersReady", "False", why, message),
        condition(obj, "Ready", "False", why, message),
    ]
