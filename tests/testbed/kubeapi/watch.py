"""Watch streams: chunked JSON events from the store's watch queue, filtered by namespace and
selectors (an object leaving the selection is a DELETED event), with bookmarks and timeouts."""

from __future__ import annotations

import contextlib
import copy
import json
import queue
import socket
import time
from collections.abc import Callable

from .errors import status_body
from .lists import matcher
from .resources import Resource
from .routing import RequestInfo
from .store import Expired, Obj, Watcher
from .transport import BaseHandler


class WatchHandler(BaseHandler):
    """The ``watch`` verb of :class:`~.handler.Handler`."""

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _event(self, etype: str, obj: Obj) -> None:
        self._chunk(
            json.dumps({"type": etype, "object": obj}, separators=(",", ":")).encode() + b"\n"
        )

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _watch(self, info: RequestInfo) -> None:
        res = info.resource
        assert res is not None
        api = self.api
        match = matcher(info)
        q = info.query
        timeout = q.get("timeoutSeconds")
        deadline = time.monotonic() + float(timeout) if timeout else None
        bookmarks = q.get("allowWatchBookmarks", "").lower() in ("true", "1")
        try:
            w = api.store.watch(res.key, info.namespace, q.get("resourceVersion"))
        except Expired as e:
            self._start_stream()
            self._event("ERROR", status_body(410, str(e), "Expired"))
            self._end_stream()
            return
        api.faults.track_stream(self.connection, info)
        try:
            self._start_stream()
            self._stream(w, res, info, match, deadline, bookmarks)
        finally:
            api.faults.track_stream(self.connection, None)
            api.store.unwatch(w)

    def _stream(
        self,
        w: Watcher,
        res: Resource,
        info: RequestInfo,
        match: Callable[[Obj], bool],
        deadline: float | None,
        bookmarks: bool,
    ) -> None:
        api = self.api
        store = api.store
        next_bookmark = time.monotonic() + api.bookmark_interval
        while True:
            if api.faults.swallowed(self.connection, None):
                self._park()
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self._end_stream()
                return
            waits = [0.25]
            if deadline is not None:
                waits.append(deadline - now)
            if bookmarks:
                waits.append(next_bookmark - now)
            try:
                ev = w.queue.get(timeout=max(0.0, min(waits)))
            except queue.Empty:
                ev = None
                if bookmarks and time.monotonic() >= next_bookmark:
                    with store.lock:
                        rv = store.resource_version if w.queue.empty() else None
                    if rv is not None:
                        api.faults.wait_frozen()
                        if api.faults.swallowed(self.connection, info):
                            self._park()
                            return
                        self._event(
                            "BOOKMARK",
                            {
                                "kind": res.kind,
                                "apiVersion": res.api_version,
                                "metadata": {"resourceVersion": str(rv)},
                            },
                        )
                    next_bookmark = time.monotonic() + api.bookmark_interval
                if api._stopping:
                    self.close_connection = True
                    return
                continue
            if ev is None:  # cut or shutdown: drop the connection without the final chunk
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            ns = (ev.obj.get("metadata") or {}).get("namespace")
            if info.namespace and ns != info.namespace:
                continue
            new_m = match(ev.obj)
            out: tuple[str, Obj] | None = None
            if ev.type == "MODIFIED":
                old_m = match(ev.old) if ev.old is not None else new_m
                if new_m and old_m:
                    out = ("MODIFIED", ev.obj)
                elif new_m:
                    out = ("ADDED", ev.obj)
                elif old_m and ev.old is not None:
                    old = copy.deepcopy(ev.old)
                    old["metadata"]["resourceVersion"] = str(ev.rv)
                    out = ("DELETED", old)
            elif new_m:
                out = (ev.type, ev.obj)
            if out is not None:
                api.faults.wait_frozen()
                if api.faults.swallowed(self.connection, info):
                    self._park()
                    return
                self._event(*out)
