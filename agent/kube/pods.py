"""Pod status patches (our condition type only) and Events, through the official client."""

from __future__ import annotations

import json
import secrets
from typing import Any

from kubernetes import client

from agent.clock import Clock
from agent.errors import Conflict, NotFound, PermanentError, TransientError
from agent.model import Condition, Pod, PodKey

from .calls import Calls
from .convert import pod_from_dict


class PodStatusSink:
    """Writes one condition with a strategic-merge patch of ``pods/status``.

    Strategic merge merges ``status.conditions`` by ``type``: kubelet's conditions and other
    controllers' are left as they are. (The client sends a dict body to a PATCH as
    ``application/strategic-merge-patch+json``; a list would be a JSON patch.)
    """

    def __init__(
        self, api: client.ApiClient, calls: Calls, clock: Clock, component: str, host: str
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.calls = calls
        self.clock = clock
        self.component = component
        self.host = host

    def get_pod(self, namespace: str, name: str) -> Pod:
        """The pod as the API server has it now (not the cache); NotFound when gone."""
        resp = self.calls(
            "get",
            "pods",
            self.core.read_namespaced_pod,
            name,
            namespace,
            _preload_content=False,
        )
        data = self.calls.read("get", "pods", resp)
        try:
            return pod_from_dict(json.loads(data))
        except (ValueError, TypeError) as exc:
            raise TransientError(f"get pod {namespace}/{name}: unreadable answer") from exc

    def patch_condition(self, key: PodKey, condition: Condition, uid: str) -> None:
        """Patch the condition onto the pod ``key`` only if it is still the pod ``uid``: the
        uid in the patch is a precondition (the API server refuses to change it, 422), so a
        namesake recreated meanwhile is left alone; that case raises ``NotFound``."""
        body: dict[str, Any] = {"status": {"conditions": [condition_dict(condition)]}}
        if uid:
            body["metadata"] = {"uid": uid}
        try:
            resp = self.calls(
                "patch",
                "pods/status",
                self.core.patch_namespaced_pod_status,
                key.name,
                key.namespace,
                body,
                _preload_content=False,
            )
            # Read, so the connection goes back to the pool (unread, each write opened one).
            self.calls.read("patch", "pods/status", resp)
        except (PermanentError, Conflict) as exc:
            if uid and _uid_refused(exc):
                raise NotFound(f"patch pods/status {key}: no longer the pod {uid}") from exc
            raise

    def emit_event(self, pod: Pod, event_type: str, reason: str, message: str) -> None:
        self.emit_object_event("Pod", pod.namespace, pod.name, pod.uid, event_type, reason, message)

    def emit_object_event(
        self,
        kind: str,
        namespace: str,
        name: str,
        uid: str,
        event_type: str,
        reason: str,
        message: str,
    ) -> None:
        """A core/v1 Event about any namespaced v1 object (Pod, Service)."""
        now = self.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{secrets.token_hex(8)}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": kind,
                "name": name,
                "namespace": namespace,
                "uid": uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": event_type,
            "source": {"component": self.component, "host": self.host},
            "reportingComponent": f"podlb.io/{self.component}",
            "reportingInstance": self.host,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        resp = self.calls(
            "create",
            "events",
            self.core.create_namespaced_event,
            namespace,
            body,
            _preload_content=False,
        )
        self.calls.read("create", "events", resp)  # the connection back to the pool


def _uid_refused(exc: Exception) -> bool:
    """The API server refused a patch for carrying another uid: 422 ``metadata.uid`` (a PATCH
    sets the field, validation refuses the change) or 409 "Precondition failed: UID"."""
    cause = exc.__cause__
    status = getattr(cause, "status", None)
    body = str(getattr(cause, "body", "") or "")
    return (status == 422 and "metadata.uid" in body) or (status == 409 and "UID" in body)


def condition_dict(condition: Condition) -> dict[str, Any]:
    return {
        "type": condition.type,
        "status": condition.status,
        "reason": condition.reason,
        "message": condition.message,
        "lastTransitionTime": condition.last_transition_time,
        "lastProbeTime": None,
    }
