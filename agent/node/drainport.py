"""The in-pod drain listener: ``httpGet`` preStop hooks with no ``host`` reach the agent.

For every opted-in pod the agent opens a listening socket *inside the pod's network
namespace* on ``--drain-port``. kubelet's ``GET podIP:port/drain`` lands on it, which
identifies the pod exactly, and the request long-polls until the drain is over. App images
need no shell and no curl. A port the app already uses is detected by our bind failing (never
by the scan alone: a scan also sees our own listener, and may predate its close), reported
once per pod as an Event and skipped. One selector thread accepts on every listener; each
request gets a thread, reads at most 8 KiB for at most 5 s in all (a slow sender is cut off
then, not each time it is idle 5 s), and answers once. Connections are bounded per pod (8 at
once) and on the node (512): a flood from one pod -- its app is on the other side of this
port -- ends at its own limit and cannot take the slots the kubelet needs for other pods'
hooks.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from agent.errors import NamespaceGone
from agent.model import Pod, PodKey

from .drain import DrainResult

log = logging.getLogger(__name__)

MAX_REQUEST = 8192
READ_TIMEOUT_S = 5.0  # for the whole request head
MAX_PER_POD = 8  # connections served at once per pod (a pod's containers each have a hook)
DRAIN_PATHS = ("/drain", "/")


def parse_request(data: bytes) -> tuple[str, str] | None:
    """(method, path) of an HTTP/1.x request head; None if it is not one."""
    head, sep, _ = data.partition(b"\r\n")
    if not sep:
        return None
    parts = head.split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    try:
        return parts[0].decode("ascii"), parts[1].decode("ascii").split("?", 1)[0]
    except UnicodeDecodeError:
        return None


def response(code: int, body: dict[str, object]) -> bytes:
    text = json.dumps(body).encode()
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
              409: "Conflict", 429: "Too Many Requests", 500: "Internal Server Error",
              503: "Service Unavailable"}.get(code, "Error")  # fmt: skip
    return (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(text)}\r\nConnection: close\r\n\r\n"
    ).encode() + text


def result_body(key: PodKey, result: DrainResult) -> dict[str, object]:
    return {
        "pod": str(key),
        "outcome": result.outcome.value if result.outcome else None,
        "seconds": round(result.seconds, 3),
        "message": result.message,
    }


class DrainListeners:
    def __init__(
        self,
        port: int,
        drain: Callable[[str, str, threading.Event], DrainResult],
        inside: Callable[[tuple[str, ...], int], AbstractContextManager[object]],
        event: Callable[[Pod, str, str, str], None],
        max_connections: int = 512,
        max_per_pod: int = MAX_PER_POD,
    ) -> None:
        self.port = port
        self.drain = drain
        self.inside = inside
        self.event = event
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._socks: dict[PodKey, tuple[str, socket.socket]] = {}  # key -> (pod uid, socket)
        self._conflicts: set[str] = set()  # uids of the pods reported already
        self._closed = False  # by close(): a later sync (a scan that ended after) opens nothing
        # Connection threads are bounded before they start: a flood of idle connections to
        # the drain port gets closed, it cannot exhaust threads.
        self._conn_slots = threading.BoundedSemaphore(max_connections)
        self.max_per_pod = max_per_pod
        self._per_pod: dict[PodKey, int] = {}  # connections being served, per pod

    def listening(self, key: PodKey) -> bool:
        with self._lock:
            return key in self._socks

    def sync(self, wanted: dict[PodKey, tuple[Pod, tuple[str, ...], int, frozenset[int]]]) -> None:
        """Listen in every wanted pod (pod, netns paths and inode, ports it listens on); close
        the rest."""
        with self._lock:
            if self._closed:
                return
            current = dict(self._socks)
            self._conflicts &= {want[0].uid for want in wanted.values()}
        for key, (uid, _sock) in current.items():
            want = wanted.get(key)
            if want is None or want[0].uid != uid:
                self._close(key)
        for key, (pod, paths, inode, listening) in wanted.items():
            if key in current and current[key][0] == pod.uid:
                continue
            self._open(pod, paths, inode, listening)

    def _open(
        self, pod: Pod, paths: tuple[str, ...], inode: int, listening: frozenset[int]
    ) -> None:
        """Listen in ``pod``'s namespace. ``listening`` (the ports the last scan saw) only
        words the report when the port is taken: that scan may have seen our own listener."""
        key = pod.key
        try:
            family = socket.AF_INET6 if pod.ips and ":" in pod.ips[0] else socket.AF_INET
            with self.inside(paths, inode):
                sock = socket.socket(family, socket.SOCK_STREAM)
        except (OSError, NamespaceGone) as exc:
            log.debug("pod=%s: no drain listener: %s", key, exc)
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", self.port))
            sock.listen(16)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                log.warning("pod=%s: drain listener failed: %s", key, exc)
            elif self.port in listening:
                self._conflict(pod, f"the app listens on the drain port {self.port} itself")
            else:
                self._conflict(pod, f"the drain port {self.port} is in use in the pod")
            return
        with self._lock:
            if self._closed:  # stopped while we bound: this listener would never be served
                sock.close()
                return
            self._socks[key] = (pod.uid, sock)
            self._sel.register(sock, selectors.EVENT_READ, key)
        log.debug("pod=%s: drain listener on port %d", key, self.port)

    def _conflict(self, pod: Pod, why: str) -> None:
        with self._lock:
            if pod.uid in self._conflicts:
                return
            self._conflicts.add(pod.uid)
        log.warning("pod=%s: %s: no in-pod drain listener (use the exec hook)", pod.key, why)
        with contextlib.suppress(Exception):
            self.event(pod, "Warning", "DrainPortInUse", why + "; the httpGet drain hook will fail")

    def _close(self, key: PodKey) -> None:
        with self._lock:
            entry = self._socks.pop(key, None)
        if entry is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(entry[1])
        entry[1].close()

    def close(self) -> None:
        """Close every listener; a later ``sync`` opens none."""
        with self._lock:
            self._closed = True
            keys = list(self._socks)
        for key in keys:
            self._close(key)

    def run(self, stop: threading.Event) -> None:
        """Accept on every listener until ``stop``; each request is served in a thread."""
        while not stop.is_set():
            for sel_key, _ in self._sel.select(timeout=0.2):
                try:
                    conn, _addr = sel_key.fileobj.accept()  # type: ignore[union-attr]
                except OSError:
                    continue
                pod_key: PodKey = sel_key.data
                why = self._take_slot(pod_key)
                if why:
                    with contextlib.suppress(OSError):
                        conn.setblocking(False)  # never wait on a flooding client
                        conn.send(response(429, {"error": why}))
                    conn.close()
                    continue
                try:
                    threading.Thread(
                        target=self._serve_slot, args=(conn, pod_key, stop), daemon=True,
                        name=f"drain-{pod_key.name}",
                    ).start()  # fmt: skip
                except RuntimeError:  # no thread to be had: refuse this one, keep serving
                    self._give_slot(pod_key)
                    conn.close()
        self.close()

    def _take_slot(self, key: PodKey) -> str | None:
        """Count a connection of ``key``'s pod in; the reason when it is over a limit."""
        with self._lock:
            if self._per_pod.get(key, 0) >= self.max_per_pod:
                return f"too many drain connections from this pod (at most {self.max_per_pod})"
            if not self._conn_slots.acquire(blocking=False):
                return "too many drain connections on this node"
            self._per_pod[key] = self._per_pod.get(key, 0) + 1
        return None

    def _give_slot(self, key: PodKey) -> None:
        with self._lock:
            left = self._per_pod.pop(key, 1) - 1
            if left:
                self._per_pod[key] = left
            self._conn_slots.release()

    def _serve_slot(self, conn: socket.socket, key: PodKey, stop: threading.Event) -> None:
        try:
            self._serve(conn, key, stop)
        except OSError:
            pass  # the caller went away
        finally:
            self._give_slot(key)

    def _serve(self, conn: socket.socket, key: PodKey, stop: threading.Event) -> None:
        with conn:
            deadline = time.monotonic() + READ_TIMEOUT_S
            data = b""
            try:
                while b"\r\n\r\n" not in data and len(data) < MAX_REQUEST:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return  # too slow: cut off
                    conn.settimeout(left)
                    chunk = conn.recv(MAX_REQUEST - len(data))
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                return
            req = parse_request(data)
            if req is None:
                conn.sendall(response(400, {"error": "not an HTTP/1.x request"}))
                return
            method, path = req
            if method != "GET":
                conn.sendall(response(405, {"error": "GET only"}))
                return
            if path not in DRAIN_PATHS:
                conn.sendall(response(404, {"error": f"unknown path {path}; use /drain"}))
                return
            conn.settimeout(None)
            result = self.drain(key.namespace, key.name, stop)
            with contextlib.suppress(OSError):
                conn.sendall(response(result.code, result_body(key, result)))
