"""The leader Lease (``coordination.k8s.io/v1``) as a :class:`LeaseRecord` store.

I/O only: get / create / optimistic replace. The deciding is in ``agent.leader.election``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubernetes import client

from agent.errors import NotFound
from agent.kube.calls import Calls
from agent.leader.lease_record import LeaseRecord

RESOURCE = "leases"


def format_micro_time(value: dt.datetime) -> str:
    """MicroTime as the API server writes it: RFC 3339, UTC, always six fractional digits."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: Lease times must be timezone-aware")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _utc(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # the client leaves unparsable strings alone
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class LeaseStore:
    """One named Lease. ``get`` gives None on 404; ``update`` is a PUT carrying the record's
    ``resourceVersion`` and raises ``Conflict`` on 409; errors are classified by ``calls``."""

    def __init__(
        self,
        api_client: client.ApiClient,
        calls: Calls,
        namespace: str,
        name: str = "podlb-leader",
        timeout_s: float = 5.0,
    ) -> None:
        self._client = api_client
        self._api = client.CoordinationV1Api(api_client)
        self._calls = calls
        self.namespace = namespace
        self.name = name
        self._timeout_s = timeout_s  # connect and read, per request (the watchdog does not need it)
        # metadata we do not model (labels, annotations, owners) survives our PUTs
        self._meta: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"LeaseStore({self.namespace}/{self.name})"

    def get(self) -> LeaseRecord | None:
        try:
            lease = self._calls(
                "get",
                RESOURCE,
                self._api.read_namespaced_lease,
                self.name,
                self.namespace,
                _request_timeout=(self._timeout_s, self._timeout_s),
            )
        except NotFound:
            return None
        return self._record(lease)

    def create(self, record: LeaseRecord) -> LeaseRecord:
        lease = self._calls(
            "create",
            RESOURCE,
            self._api.create_namespaced_lease,
            self.namespace,
            self._body(record, create=True),
            _request_timeout=(self._timeout_s, self._timeout_s),
        )
        return self._record(lease)

    def update(self, record: LeaseRecord) -> LeaseRecord:
        if record.resource_version is None:
            raise ValueError("a Lease update needs the resourceVersion it replaces")
        lease = self._calls(
            "update",
            RESOURCE,
            self._api.replace_namespaced_lease,
            self.name,
            self.namespace,
            self._body(record, create=False),
            _request_timeout=(self._timeout_s, self._timeout_s),
        )
        return self._record(lease)

    def _body(self, record: LeaseRecord, *, create: bool) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if not create:
            if self._meta.get("resourceVersion") == record.resource_version:
                for key in ("labels", "annotations", "ownerReferences"):
                    if self._meta.get(key):
                        meta[key] = self._meta[key]
            meta["resourceVersion"] = record.resource_version
        spec: dict[str, Any] = {
            "holderIdentity": record.holder if record.holder is not None else "",
            "leaseDurationSeconds": int(record.lease_duration_s),
            "leaseTransitions": int(record.transitions),
        }
        if record.acquire_time is not None:
            spec["acquireTime"] = format_micro_time(record.acquire_time)
        if record.renew_time is not None:
            spec["renewTime"] = format_micro_time(record.renew_time)
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": spec,
        }

    def _record(self, lease: Any) -> LeaseRecord:
        meta = lease.metadata
        self._meta = {
            "resourceVersion": meta.resource_version,
            "labels": meta.labels,
            "annotations": meta.annotations,
            "ownerReferences": (
                [self._client.sanitize_for_serialization(o) for o in meta.owner_references]
                if meta.owner_references
                else None
            ),
        }
        spec = lease.spec
        return LeaseRecord(
            holder=spec.holder_identity if spec is not None else None,
            lease_duration_s=int(spec.lease_duration_seconds or 0) if spec is not None else 0,
            acquire_time=_utc(spec.acquire_time) if spec is not None else None,
            renew_time=_utc(spec.renew_time) if spec is not None else None,
            transitions=int(spec.lease_transitions or 0) if spec is not None else 0,
            resource_version=meta.resource_version,
        )
