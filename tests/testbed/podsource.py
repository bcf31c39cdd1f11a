"""The simulated kubelet's source of pods (:mod:`tests.testbed.node`), as the real one's API
source: list + watch of one node's pods (``fieldSelector=spec.nodeName=<node>``) through the
official client, from the list's resourceVersion, with bookmarks; a 410 lists again, and the
pods that vanished meanwhile come as ``DELETED``. One thread per node."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

Obj = dict[str, Any]
EventFn = Callable[[str, str, Obj], None]  # (node, type, pod)


def pod_key(obj: Obj) -> str:
    md = obj["metadata"]
    return f"{md.get('namespace', 'default')}/{md['name']}"


class PodSource:
    def __init__(
        self,
        api_client: client.ApiClient,
        node: str,
        on_event: EventFn,
        known: Callable[[str], Mapping[str, Obj]],
        on_error: Callable[[str], None],
        *,
        watch_timeout: int = 2,
    ) -> None:
        """``known(node)``: the pods the kubelet runs there, by key; ``on_error(message)``."""
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.node = node
        self.on_event, self.known, self.on_error = on_event, known, on_error
        self.watch_timeout = watch_timeout
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread = threading.Thread(target=self._loop, name=f"kubelet-{node}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def join(self) -> None:
        self._thread.join(self.watch_timeout + 5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                rv = self._list()
                while not self._stop.is_set():
                    rv = self._watch_from(rv)
            except ApiException as e:
                if e.status != 410:
                    self.on_error(f"watch {self.node}: {e.status} {e.reason}")
                    self._stop.wait(0.5)
            except Exception as e:
                if not self._stop.is_set():
                    self.on_error(f"watch {self.node}: {e!r}")
                    self._stop.wait(0.5)

    def _list(self) -> str:
        lst = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node}", _request_timeout=10
        )
        seen: set[str] = set()
        for item in lst.items:
            obj = self.api_client.sanitize_for_serialization(item)
            seen.add(pod_key(obj))
            self.on_event(self.node, "ADDED", obj)
        for key, obj in self.known(self.node).items():
            if key not in seen:
                self.on_event(self.node, "DELETED", obj)
        return str(lst.metadata.resource_version)

    def _watch_from(self, rv: str) -> str:
        w = self._watch = watch.Watch()
        try:
            for ev in w.stream(
                self.core.list_pod_for_all_namespaces,
                field_selector=f"spec.nodeName={self.node}",
                resource_version=rv,
                allow_watch_bookmarks=True,
                timeout_seconds=self.watch_timeout,
                _request_timeout=self.watch_timeout + 10,
            ):
                obj = ev["raw_object"]
                rv = obj.get("metadata", {}).get("resourceVersion") or rv
                if ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    self.on_event(self.node, ev["type"], obj)
                if self._stop.is_set():
                    break
        finally:
            w.stop()
        return rv
