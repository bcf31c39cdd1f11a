"""The simulated kubelet's source of pods (:mod:`tests.testbed.node`), as the real one's API
source: list + watch of one node's pods (``fieldSelector=spec.nodeName=<node>``) through the
official client, from the list's resourceVersion, with bookmarks; a 410 lists again, and the
pods that vanished meanwhile come as ``DELETED``. One thread per node. The Deployment helper
(:mod:`tests.testbed.deploy`) watches its app's pods the same way, by other selectors, as the
Deployment controller's informer does."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

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
        field_selector: str | None = None,
        label_selector: str = "",
        on_listed: Callable[[str, int], None] | None = None,
    ) -> None:
        """``known(node)``: the pods the kubelet runs there, by key; ``on_error(message)``;
        ``on_listed(node, resourceVersion)`` after each list's events. The pods watched:
        ``field_selector`` (default ``spec.nodeName=<node>``) and ``label_selector``; ``node``
        is passed to the callbacks."""
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.node = node
        self.field_selector = f"spec.nodeName={node}" if field_selector is None else field_selector
        self.label_selector = label_selector
        self.on_listed = on_listed
        self.on_event, self.known, self.on_error = on_event, known, on_error
        self.watch_timeout = watch_timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"kubelet-{node}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """The watch ends at its next event or its timeout (``watch_timeout``)."""
        self._stop.set()

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
        resp = self.core.list_pod_for_all_namespaces(
            field_selector=self.field_selector, label_selector=self.label_selector,
            _request_timeout=10, _preload_content=False,
        )  # fmt: skip
        lst = json.loads(resp.data)
        seen: set[str] = set()
        for obj in lst.get("items") or []:
            seen.add(pod_key(obj))
            self.on_event(self.node, "ADDED", obj)
        for key, obj in self.known(self.node).items():
            if key not in seen:
                self.on_event(self.node, "DELETED", obj)
        rv = str(lst["metadata"]["resourceVersion"])
        if self.on_listed is not None:
            self.on_listed(self.node, int(rv))
        return rv

    def _watch_from(self, rv: str) -> str:
        """One watch from ``rv`` until its timeout; returns the last resourceVersion seen. The
        events are read as JSON: the client's ``Watch`` builds a model of every object, which
        took longer than everything else the kubelet does with an event."""
        resp = self.core.list_pod_for_all_namespaces(
            field_selector=self.field_selector, label_selector=self.label_selector,
            resource_version=rv, allow_watch_bookmarks=True, watch=True,
            timeout_seconds=self.watch_timeout, _request_timeout=self.watch_timeout + 10,
            _preload_content=False,
        )  # fmt: skip
        try:
            for line in iter_resp_lines(resp):
                if not line.strip():
                    continue
                ev = json.loads(line)
                obj = ev.get("object") or {}
                if ev.get("type") == "ERROR":
                    raise ApiException(
                        status=obj.get("code"), reason=f"{obj.get('reason')}: {obj.get('message')}"
                    )
                rv = obj.get("metadata", {}).get("resourceVersion") or rv
                if ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    self.on_event(self.node, ev["type"], obj)
                if self._stop.is_set():
                    break
        finally:
            resp.close()
            resp.release_conn()
        return rv
