"""The few error classes of podlb (see STYLE.md, principle 7).

Adapters wrap library errors with ``raise ... from``; callers retry only ``TransientError``.
"""

from __future__ import annotations


class PodlbError(Exception):
    """Base of every error podlb raises on purpose."""


class TransientError(PodlbError):
    """May succeed when retried with backoff (timeouts, 5xx, 429, a vanished race)."""


class PermanentError(PodlbError):
    """Retrying will not help (bad input, 4xx other than 409/429, missing capability)."""


class NamespaceGone(TransientError):
    """A network namespace or process vanished while it was being inspected."""


class NetlinkError(PodlbError):
    """The kernel answered a netlink request with an error."""

    def __init__(self, errno: int, what: str) -> None:
        super().__init__(f"netlink {what}: errno {errno}")
        self.errno = errno


class DumpInterrupted(TransientError):
    """A netlink dump was interrupted (NLM_F_DUMP_INTR) more times than allowed."""


class NotFound(PermanentError):
    """The object does not exist (HTTP 404): a pod that is gone, a Lease not yet created."""


class Conflict(TransientError):
    """Optimistic concurrency lost (HTTP 409 on update) or the name already exists on create."""


class Unauthorized(PermanentError):
    """HTTP 401 / 403: the credentials or the RBAC rules do not allow the request."""
