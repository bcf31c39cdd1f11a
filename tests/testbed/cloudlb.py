"""A cloud LB on this machine: the CLB API double, a real data plane and the cloud's controller.

On TKE the CLB forwards traffic and the cloud's own service controller registers the pods in
it; podlb only observes. Here:

* :class:`HAProxyDataPlane` makes a real HAProxy backend follow the targets a
  :class:`~tests.testbed.clb.ClbDouble` listener has *in effect* (its ``on_change`` hook, so the
  double's task delay is the data plane's delay too). A target the CLB drops stops getting new
  connections at once; its open connections finish, as with a CLB deregistration.
* :class:`ControllerStandIn` plays TKE's service controller: it registers every pod of a
  Service whose containers are ready (before the pod is Ready: its readiness gate waits on the
  LB) and deregisters it once it terminates, through the double's in-process API (the real
  controller does not go through the tenant's credentials either).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from kubernetes import client

from agent.lb.base import server_name
from tests.testbed.haproxy import HAProxy, HAProxyRuntimeError

log = logging.getLogger(__name__)


class HAProxyDataPlane:
    """``on_change`` hook of a ClbDouble: mirror one listener's targets into ``backend``."""

    def __init__(self, lb: HAProxy, backend: str, listener_id: str) -> None:
        self.lb = lb
        self.backend = backend
        self.listener_id = listener_id
        self._lock = threading.Lock()
        self._servers: dict[str, int] = {}  # name -> weight in effect
        self._stop = threading.Event()

    def close(self) -> None:
        self._stop.set()

    def on_change(
        self, lb_id: str, listener_id: str, location_id: str | None, targets: list[Any]
    ) -> None:
        del lb_id, location_id
        if listener_id != self.listener_id:
            return
        wanted = {server_name(ip, port): (ip, port, weight) for ip, port, weight in targets}
        with self._lock:
            for name, (ip, port, weight) in wanted.items():
                if name not in self._servers:
                    self.lb.add_server(self.backend, name, ip, port)
                if self._servers.get(name) != weight:
                    self.lb.runtime_ok(f"set server {self.backend}/{name} weight {weight}")
                    self._servers[name] = weight
            for name in set(self._servers) - set(wanted):
                del self._servers[name]
                self.lb.runtime_ok(f"set server {self.backend}/{name} state drain")
                threading.Thread(target=self._remove_when_idle, args=(name,), daemon=True).start()

    def _remove_when_idle(self, name: str, timeout: float = 60.0) -> None:
        """Open connections finish on a deregistered target; then it goes."""
        deadline = time.monotonic() + timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            row = self.lb.servers(self.backend).get(name)
            if row is None:
                return
            if row.get("scur") == "0":
                break
            self._stop.wait(0.1)
        with self._lock, contextlib.suppress(HAProxyRuntimeError, OSError):
            if name not in self._servers:  # not registered again meanwhile
                self.lb.del_server(self.backend, name)


class ControllerStandIn:
    """TKE's service controller for one Service port: keeps the CLB listener's targets equal
    to the Service's pods whose containers are ready and that are not terminating."""

    def __init__(
        self,
        api_client: client.ApiClient,
        clb: Any,  # tests.testbed.clb.ClbDouble
        *,
        lb_id: str,
        listener_id: str,
        namespace: str,
        selector: str,
        port: int,
        period_s: float = 0.2,
    ) -> None:
        self.core = client.CoreV1Api(api_client)
        self.clb = clb
        self.lb_id = lb_id
        self.listener_id = listener_id
        self.namespace = namespace
        self.selector = selector
        self.port = port
        self.period_s = period_s
        self._registered: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cloud-controller", daemon=True)

    def __enter__(self) -> ControllerStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _wanted(self) -> set[str]:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector).items
        out = set()
        for p in pods:
            conds = {c.type: c.status for c in (p.status.conditions or [])}
            ready = conds.get("ContainersReady") == "True"
            if ready and p.status.pod_ip and not p.metadata.deletion_timestamp:
                out.add(p.status.pod_ip)
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                wanted = self._wanted()
            except Exception as exc:  # the API double restarting: try again next period
                log.warning("cloud controller stand-in: %s", exc)
                continue
            new, gone = wanted - self._registered, self._registered - wanted
            if gone:
                self.clb.deregister(self.lb_id, self.listener_id, [(ip, self.port) for ip in gone])
            if new:
                self.clb.register(
                    self.lb_id, self.listener_id, [(ip, self.port, 100) for ip in new]
                )
            self._registered = wanted
