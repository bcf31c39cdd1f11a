"""HTTP plumbing: the threaded server that tracks its connections, and the base request
handler (read a body, send an answer, a cut answer, or none)."""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from .errors import ApiError

if TYPE_CHECKING:
    from .server import KubeAPIServer


class HTTPServer(ThreadingHTTPServer):
    """Threaded, no reverse DNS, quiet about clients that go away, and able to drop every
    open connection (:meth:`close_all`)."""

    daemon_threads = True
    # The accept queue (socketserver's default is 5): hundreds of kubelet and agent threads
    # connect at once in a 300-pod rollout, and connections past a full queue were reset
    # (kube-apiserver listens with the kernel's somaxconn, 4096 here).
    request_queue_size = 1024
    allow_reuse_address = True
    block_on_close = False

    def __init__(
        self, addr: tuple[str, int], api: KubeAPIServer, handler: type[BaseHandler]
    ) -> None:
        self.api = api
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(addr, handler)

    def server_bind(self) -> None:  # no reverse DNS lookup
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-request (a cut watch, an agent killed) is normal here.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conns_lock:
            self.conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conns_lock:
            self.conns.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        with self.conns_lock:
            conns = list(self.conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class BaseHandler(BaseHTTPRequestHandler):
    """Reading a request body and sending answers: whole, cut half-way, or never."""

    protocol_version = "HTTP/1.1"
    server: HTTPServer
    server_version = "kubeapi-testbed"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def api(self) -> KubeAPIServer:
        return self.server.api

    # -- low level
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        if isinstance(body, bytes | str):
            data = body.encode() if isinstance(body, str) else body
            ctype = "text/plain; charset=utf-8"
        else:
            data = json.dumps(body, separators=(",", ":")).encode()
            ctype = "application/json"
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_error(self, err: ApiError) -> None:
        self._send(err.code, err.body(), err.headers)

    def _send_cut(self, code: int, body: Any) -> None:
        """Headers and half the body, then the connection is dropped (no reset, no rest)."""
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _park(self) -> None:
        """A swallowed request: never answer (until the server stops)."""
        api = self.api
        while not api._stopping:
            time.sleep(0.05)
        self.close_connection = True
