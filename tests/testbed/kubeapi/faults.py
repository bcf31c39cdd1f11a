"""Fault injection: refused connections, error answers, latency, a frozen or wedged server,
cut watches and lists (see README.md)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ApiError
from .routing import RequestInfo

if TYPE_CHECKING:
    from .server import KubeAPIServer


@dataclass
class _Error:
    code: int
    retry_after: int | None
    count: int | None
    match: Callable[[RequestInfo], bool] | None
    message: str | None


class Faults:
    """Fault injection for an API server."""

    def __init__(self, api: KubeAPIServer) -> None:
        self._api = api
        self._lock = threading.Lock()
        self._error: _Error | None = None
        self._latency = 0.0
        self._frozen_until = 0.0
        self.refused = False
        self._cut_lists: tuple[int, Callable[[RequestInfo], bool] | None] = (0, None)
        self._blackhole: Callable[[RequestInfo], bool] | None = None
        self._dead: set[int] = set()  # connections that never answer again
        self._streams: dict[int, RequestInfo] = {}  # open watch streams by connection

    def refuse(self) -> None:
        """Close the listening socket (and open connections): clients get ECONNREFUSED."""
        self.refused = True
        self._api._stop_listener()

    def accept(self) -> None:
        """Listen again on the same port."""
        if self.refused:
            self._api._start_listener()
            self.refused = False

    def set_error(
        self,
        code: int = 500,
        retry_after: int | None = 1,
        count: int | None = None,
        match: Callable[[RequestInfo], bool] | None = None,
        message: str | None = None,
    ) -> None:
        """Answer matching requests with ``code`` and a Status body (``count`` times, or until
        cleared). ``match(info)`` gets a RequestInfo (verb, resource, namespace, name...)."""
        with self._lock:
            self._error = _Error(code, retry_after, count, match, message)

    def set_latency(self, seconds: float) -> None:
        self._latency = seconds

    def cut_watches(self) -> int:
        """Abruptly close every open watch stream; returns how many were cut."""
        return self._api.store.cut_watches()

    def freeze(self, seconds: float) -> None:
        """Accept connections but answer nothing (watches go silent too) for ``seconds``."""
        self._frozen_until = time.monotonic() + seconds

    def cut_lists(self, count: int = 1, match: Callable[[RequestInfo], bool] | None = None) -> None:
        """Drop the connection half-way through the body of the next ``count`` matching list
        answers (headers and Content-Length sent in full: the client reads a short body)."""
        with self._lock:
            self._cut_lists = (count, match)

    def blackhole(self, match: Callable[[RequestInfo], bool] | None = None) -> None:
        """Half-open connections: matching requests are read and never answered, and the
        connections they arrive on (watch streams open now too) stay silent for good, even
        after :meth:`heal` — like a NAT entry or an API LB that dropped them without a reset.
        ``match(info)`` sees ``info.user`` (set once the token is known)."""
        with self._lock:
            self._blackhole = match or (lambda info: True)
            self._dead |= {c for c, info in self._streams.items() if self._blackhole(info)}

    def heal(self) -> None:
        """New requests are answered again; connections swallowed before stay dead."""
        with self._lock:
            self._blackhole = None

    def clear(self) -> None:
        with self._lock:
            self._error = None
            self._cut_lists = (0, None)
            self._blackhole = None
        self._latency = 0.0
        self._frozen_until = 0.0
        self.accept()

    # -- used by the handler
    def wait_frozen(self) -> None:
        while time.monotonic() < self._frozen_until and not self._api._stopping:
            time.sleep(min(0.02, max(0.0, self._frozen_until - time.monotonic())))

    def delay(self) -> None:
        if self._latency > 0:
            time.sleep(self._latency)

    def swallowed(self, conn: socket.socket, info: RequestInfo | None) -> bool:
        """Whether this connection is (now) dead: then the handler must never answer."""
        with self._lock:
            if id(conn) in self._dead:
                return True
            if self._blackhole is not None and info is not None and self._blackhole(info):
                self._dead.add(id(conn))
                return True
        return False

    def track_stream(self, conn: socket.socket, info: RequestInfo | None) -> None:
        """A watch stream opens (``info``) or ends (None) on ``conn``."""
        with self._lock:
            if info is None:
                self._streams.pop(id(conn), None)
            else:
                self._streams[id(conn)] = info

    def take_cut_list(self, info: RequestInfo) -> bool:
        with self._lock:
            count, match = self._cut_lists
            if count <= 0 or (match is not None and not match(info)):
                return False
            self._cut_lists = (count - 1, match)
            return True

    def check(self, info: RequestInfo) -> ApiError | None:
        with self._lock:
            e = self._error
            if e is None or (e.match is not None and not e.match(info)):
                return None
            if e.count is not None:
                e.count -= 1
                if e.count <= 0:
                    self._error = None
        headers: dict[str, str] = {}
        details: dict[str, Any] | None = None
        if e.retry_after is not None and e.code in (429, 503):
            headers["Retry-After"] = str(e.retry_after)
            details = {"retryAfterSeconds": e.retry_after}
        default = {
            429: "Too many requests, please try again later.",
            503: "The server is currently unable to handle the request",
            504: "The server was unable to return a response in the time allotted",
        }.get(e.code, "Internal error occurred: injected fault")
        return ApiError(e.code, e.message or default, None, details, headers)
