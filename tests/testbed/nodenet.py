"""The simulated nodes' pod networks on this host (:mod:`tests.testbed.node`).

A free ``/24`` of ``10.244.0.0/16`` per node (or the given ones), claimed with an
``unreachable`` route: like a real node (Calico installs a blackhole route for its block) the
host routes the whole ``/24`` locally, under the pods' own ``/32`` routes, so a connection to
a deleted pod's IP fails at once ("no route to host") instead of leaving through the default
route. Pod IPs are handed out from it (``.1`` is the "gateway") and come back when their pod is
removed; pods' namespaces come from a
:class:`~tests.testbed.netns.NetnsPool`. :meth:`NodeNetwork.close` removes the namespaces and
the routes it added.
"""

from __future__ import annotations

import ipaddress
import random
import threading
from collections.abc import Mapping, Sequence

from tests.testbed.netns import NetnsPool, ip


def _route_unreachable(cidr: str) -> bool:
    """Add ``unreachable <cidr>`` on the host; False when a route to it exists already."""
    return ip("route", "add", "unreachable", cidr, check=False).returncode == 0


class NodeNetwork:
    def __init__(
        self,
        nodes: Sequence[str],
        pod_cidrs: Mapping[str, str] | None = None,
        *,
        pool_prefix: str = "kl",
    ) -> None:
        self.pool = NetnsPool(prefix=pool_prefix)
        self._routes: list[str] = []  # the unreachable routes added here
        self.pod_cidrs = dict(pod_cidrs) if pod_cidrs else self._pick_cidrs(nodes)
        for cidr in self.pod_cidrs.values():
            if cidr not in self._routes and _route_unreachable(cidr):
                self._routes.append(cidr)
        self._init_ips()

    def _init_ips(self) -> None:
        self._lock = threading.Lock()
        self._ip_free: dict[str, list[str]] = {
            n: [str(h) for h in ipaddress.ip_network(c).hosts()][1:]
            for n, c in self.pod_cidrs.items()
        }

    def _pick_cidrs(self, nodes: Sequence[str]) -> dict[str, str]:
        """A free ``10.244.X.0/24`` per node (no route into it on this host yet), claimed by
        adding its unreachable route (which fails when another kubelet was quicker)."""
        out: dict[str, str] = {}
        candidates = list(range(100, 250))
        random.shuffle(candidates)
        for node in nodes:
            while True:
                if not candidates:
                    raise RuntimeError("no free /24 in 10.244.0.0/16")
                cidr = f"10.244.{candidates.pop()}.0/24"
                taken = ip("-4", "route", "show", "root", cidr, check=False).stdout.strip()
                if not taken and _route_unreachable(cidr):
                    self._routes.append(cidr)
                    out[node] = cidr
                    break
        return out

    def alloc_ip(self, node: str) -> str:
        with self._lock:
            free = self._ip_free[node]
            if not free:
                raise RuntimeError(f"{node}: no free pod IP in {self.pod_cidrs[node]}")
            return free.pop(0)

    def free_ip(self, node: str, addr: str) -> None:
        """A removed pod's IP goes back, at the end of the line: handed out again only after
        every other free one, as host-local IPAM goes round its range (a node's /24 holds 253
        pods over its life otherwise: a 300-pod rollout on two nodes ran out)."""
        with self._lock:
            if addr not in self._ip_free[node]:
                self._ip_free[node].append(addr)

    def close(self) -> None:
        self.pool.close()
        while self._routes:
            ip("route", "del", "unreachable", self._routes.pop(), check=False)
