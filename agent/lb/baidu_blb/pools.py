"""BLB pool names (pure) and the endpoint a provider answers for.

* ``<blb-id>/<ip-group-id>``, e.g. ``lb-a7942975/ip_group-45661177``;
* ``<blb-id>/<PROTO>:<PORT>``, e.g. ``lb-a7942975/TCP:80``: the IP group the listener's
  policy forwards to (``describe_app_ipgroup_policys``, see :mod:`.answers`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent.lb.base import PoolNotFound

LISTENER_PROTOCOLS = frozenset({"TCP", "UDP", "HTTP", "HTTPS", "SSL"})

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True, slots=True)
class PoolRef:
    """A parsed pool name: an IP group, or a listener whose policy names one."""

    blb_id: str
    ip_group_id: str | None = None
    protocol: str | None = None  # TCP, UDP, HTTP, HTTPS, SSL
    port: int | None = None


def parse_pool(pool: str) -> PoolRef:
    """``<blb-id>/<ip-group-id>`` or ``<blb-id>/<PROTO>:<PORT>``; PoolNotFound otherwise."""
    expected = "expected <blb-id>/<ip-group-id> or <blb-id>/<PROTO>:<PORT>"
    blb_id, sep, rest = pool.partition("/")
    if not sep or not _ID.fullmatch(blb_id):
        raise PoolNotFound(f"BLB pool {pool!r}: {expected}")
    if ":" in rest:
        proto, _, port_s = rest.partition(":")
        proto = proto.upper()
        if proto not in LISTENER_PROTOCOLS:
            raise PoolNotFound(
                f"BLB pool {pool!r}: listener protocol {proto!r} is not one of"
                f" {', '.join(sorted(LISTENER_PROTOCOLS))}"
            )
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise PoolNotFound(f"BLB pool {pool!r}: listener port {port_s!r} out of 1..65535")
        return PoolRef(blb_id, protocol=proto, port=int(port_s))
    if not _ID.fullmatch(rest):
        raise PoolNotFound(f"BLB pool {pool!r}: {expected}")
    return PoolRef(blb_id, ip_group_id=rest)


def instance_name(endpoint: str) -> str:
    """The instance a provider answers for: the endpoint's host."""
    host = urlsplit(endpoint if "//" in endpoint else f"//{endpoint}").hostname
    if not host:
        raise ValueError(f"BLB endpoint {endpoint!r}: no host")
    return host


def sdk_endpoint(endpoint: str) -> str:
    """The endpoint for the SDK: HTTPS unless a scheme is given (the SDK defaults to HTTP)."""
    if "://" in endpoint:
        scheme = endpoint.split("://", 1)[0]
        if scheme not in ("http", "https"):
            raise ValueError(f"BLB endpoint {endpoint!r}: scheme must be http or https")
        return endpoint
    return f"https://{endpoint}"
