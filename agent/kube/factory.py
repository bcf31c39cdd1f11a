"""Builds every Kubernetes adapter from one API client (used by the composition root)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client

from agent.clock import Clock
from agent.model import EndpointSlice, Pod, Service

from .calls import Calls
from .client import KubeAccess, api_client
from .convert import endpointslice_from_dict, pod_from_dict, service_from_dict
from .decode import Decoder, Key
from .informer import Informer
from .leader_pods import LeaderPodDecoder
from .lease import LeaseStore
from .pods import PodStatusSink

T = TypeVar("T")
# (on_change(key), on_resync(), resync period in seconds): what every informer is given.
Hooks = tuple[Callable[[Key], None], Callable[[], None], float]


class KubeAdapters:
    def __init__(self, access: KubeAccess, calls: Calls, clock: Clock) -> None:
        self.access = access
        self.api = api_client(access)
        self.calls = calls
        self.clock = clock
        self.core = client.CoreV1Api(self.api)
        self.discovery = client.DiscoveryV1Api(self.api)

    def _informer(
        self,
        resource: str,
        list_fn: Callable[..., Any],
        convert: Callable[[dict[str, Any]], T] | Decoder[T],
        hooks: Hooks,
        list_from_cache: bool = False,
        **kwargs: Any,
    ) -> Informer[T]:
        on_change, on_resync, resync_s = hooks
        return Informer(
            resource,
            list_fn,
            convert,
            self.calls,
            self.clock,
            kwargs=kwargs,
            on_change=on_change,
            on_resync=on_resync,
            resync_s=resync_s,
            request_timeout_s=self.access.timeout_s,
            watch_idle_s=self.access.watch_idle_s,
            list_from_cache=list_from_cache,
        )

    def node_pods(
        self,
        node_name: str,
        on_change: Callable[[Key], None],
        on_resync: Callable[[], None],
        resync_s: float,
    ) -> Informer[Pod]:
        """Pods scheduled to ``node_name`` (field selector ``spec.nodeName``), first listed
        from the API server's cache (a list from etcd reads every pod of the cluster to select
        a node's: 10 s of the API server's CPU at 30,000 pods)."""
        return self._informer(
            "pods",
            self.core.list_pod_for_all_namespaces,
            pod_from_dict,
            (on_change, on_resync, resync_s),
            list_from_cache=True,
            field_selector=f"spec.nodeName={node_name}",
        )

    def all_pods(
        self, on_change: Callable[[Key], None], on_resync: Callable[[], None], resync_s: float
    ) -> Informer[Pod]:
        """Every pod of the cluster (the leader: backends live on every node), each decoded
        straight into what the leader decides on."""
        return self._informer(
            "pods",
            self.core.list_pod_for_all_namespaces,
            LeaderPodDecoder(),
            (on_change, on_resync, resync_s),
        )

    def services(
        self, on_change: Callable[[Key], None], on_resync: Callable[[], None], resync_s: float
    ) -> Informer[Service]:
        return self._informer(
            "services",
            self.core.list_service_for_all_namespaces,
            service_from_dict,
            (on_change, on_resync, resync_s),
        )

    def endpointslices(
        self, on_change: Callable[[Key], None], on_resync: Callable[[], None], resync_s: float
    ) -> Informer[EndpointSlice]:
        return self._informer(
            "endpointslices",
            self.discovery.list_endpoint_slice_for_all_namespaces,
            endpointslice_from_dict,
            (on_change, on_resync, resync_s),
        )

    def status_sink(self, component: str, host: str) -> PodStatusSink:
        return PodStatusSink(self.api, self.calls, self.clock, component, host)

    def lease_store(self, namespace: str, name: str, timeout_s: float | None = None) -> LeaseStore:
        """``timeout_s``: per Lease request (default: the client's); keep it well under the
        renew deadline so that a hung renewal leaves time for another attempt."""
        return LeaseStore(
            self.api, self.calls, namespace, name, timeout_s=timeout_s or self.access.timeout_s
        )

    def close(self) -> None:
        self.api.close()
