"""The leader-election record as plain data (no Kubernetes client here).

It mirrors the ``spec`` of a ``coordination.k8s.io/v1`` Lease plus the ``resourceVersion`` that
makes writes optimistic. ``agent/kube/lease.py`` converts it to and from the API object.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    holder: str | None  # holderIdentity; "" or None = nobody holds it (released)
    lease_duration_s: int  # leaseDurationSeconds as the holder advertises it
    acquire_time: dt.datetime | None  # MicroTime, UTC
    renew_time: dt.datetime | None  # MicroTime, UTC; only compared for change, never for expiry
    transitions: int  # leaseTransitions: how many times the holder changed
    resource_version: str | None = None  # None on a record not yet stored

    @property
    def held(self) -> bool:
        return bool(self.holder)
