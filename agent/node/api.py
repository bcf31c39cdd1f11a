"""The node HTTP API: /healthz /readyz /metrics /v1/pods (one server, bounded requests).

It listens on the node's addresses (``0.0.0.0:9808``), so pods can reach it: requests are
served one thread each, at most ``MAX_PER_CALLER`` at once per client address and
``MAX_REQUESTS`` in all. A connection over a limit gets ``429`` at once, before any thread is
made for it, so a flood from one address costs the others nothing but the accept.
"""

from __future__ import annotations

import json
import logging
import socketserver
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from agent.metrics import PodView
from agent.model import DATAPATH_READY, LB_READY
from agent.report import namespace_json

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0
MAX_REQUESTS = 128  # requests served at once
MAX_PER_CALLER = 16  # ... of them from one client address


def pod_view_json(view: PodView) -> dict[str, Any]:
    pod = view.pod
    ns = view.netns
    main = None
    if ns is not None:
        for ip in pod.ips:
            main = ns.interface_with_ip(ip)
            if main:
                break
    conds = {}
    for ctype in (DATAPATH_READY, LB_READY):
        c = pod.condition(ctype)
        conds[ctype] = (
            {"status": c.status, "reason": c.reason, "message": c.message,
             "lastTransitionTime": c.last_transition_time}
            if c else None
        )  # fmt: skip
    return {
        "namespace": pod.namespace,
        "name": pod.name,
        "uid": pod.uid,
        "ips": list(pod.ips),
        "phase": pod.phase,
        "terminating": pod.terminating,
        "opted_in": view.opted_in,
        "serving_ports": sorted(view.serving_ports),
        "datapath": {"ready": view.datapath_ready, "reason": view.reason},
        "interface": (
            {"name": main.name, "kind": main.kind.value, "mode": main.mode, "state": main.state}
            if main
            else None
        ),
        "tcp": namespace_json(ns)["tcp"] if ns is not None else None,
        "netns": {"inode": ns.inode, "path": ns.path} if ns is not None else None,
        "conditions": conds,
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    max_requests = MAX_REQUESTS
    max_per_caller = MAX_PER_CALLER

    def server_activate(self) -> None:
        self._count_lock = threading.Lock()
        self._serving: dict[str, int] = {}  # client address -> requests being served
        self._total = 0
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        caller = str(client_address[0])
        with self._count_lock:
            over = (
                "too many requests from this address"
                if self._serving.get(caller, 0) >= self.max_per_caller
                else "too many requests"
                if self._total >= self.max_requests
                else None
            )
            if over is None:
                self._serving[caller] = self._serving.get(caller, 0) + 1
                self._total += 1
        if over is not None:
            body = over.encode() + b"\n"
            head = (
                "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            try:
                request.setblocking(False)  # never wait on a flooding client
                request.send(head.encode() + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done(caller)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(str(client_address[0]))

    def _done(self, caller: str) -> None:
        with self._count_lock:
            left = self._serving.pop(caller, 1) - 1
            if left:
                self._serving[caller] = left
            self._total -= 1

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn): no DNS at start-up.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, TimeoutError)):
            return  # the client went away: nothing to report
        log.exception("node API: error serving %s", client_address)


class NodeAPI:
    """One HTTP server for probes, metrics and introspection; GET only."""

    def __init__(
        self,
        listen: tuple[str, int],
        registry: CollectorRegistry,
        views: Callable[[], list[PodView]],
        ready: Callable[[], bool],
    ) -> None:
        self.registry = registry
        self.views = views
        self.ready = ready
        self.routes: dict[str, Callable[[BaseHTTPRequestHandler], tuple[int, str, bytes]]] = {
            "/healthz": lambda h: (200, "text/plain", b"ok\n"),
            "/readyz": self._readyz,
            "/metrics": self._metrics,
            "/v1/pods": self._pods,
        }
        # Routes under a prefix get the rest of the path: "/v1/drain/" -> "ns/name".
        self.prefix_routes: dict[
            str, Callable[[BaseHTTPRequestHandler, str], tuple[int, str, bytes]]
        ] = {}
        self.server = _Server(listen, self._handler())

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def _readyz(self, h: BaseHTTPRequestHandler) -> tuple[int, str, bytes]:
        if self.ready():
            return 200, "text/plain", b"ready\n"
        return 503, "text/plain", b"not ready: informers not synced or no scan completed yet\n"

    def _metrics(self, h: BaseHTTPRequestHandler) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

    def _pods(self, h: BaseHTTPRequestHandler) -> tuple[int, str, bytes]:
        views = sorted(self.views(), key=lambda v: (v.pod.namespace, v.pod.name))
        body = json.dumps({"pods": [pod_view_json(v) for v in views]}, indent=1)
        return 200, "application/json", body.encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "podlb-agent"
            protocol_version = "HTTP/1.1"
            # Errors about unparsable request lines still get a status line (not HTTP/0.9).
            default_request_version = "HTTP/1.0"
            timeout = REQUEST_TIMEOUT_S  # socket timeout: a slow or silent client is cut off

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s - %s", self.address_string(), format % args)

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                route = api.routes.get(path)
                prefixed = next(
                    ((p, r) for p, r in api.prefix_routes.items() if path.startswith(p)), None
                )
                if route is None and prefixed is None:
                    self._send(404, "text/plain", b"not found\n")
                    return
                try:
                    if route is not None:
                        code, ctype, body = route(self)
                    else:
                        assert prefixed is not None
                        code, ctype, body = prefixed[1](self, path[len(prefixed[0]) :])
                except Exception:  # a bug in one route must not kill the server
                    log.exception("node API %s failed", path)
                    code, ctype, body = 500, "text/plain", b"internal error\n"
                self._send(code, ctype, body)

            def do_HEAD(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in api.routes:
                    self.do_GET()
                else:  # HEAD must not start a drain (prefix routes act)
                    self._send(405, "text/plain", b"method not allowed\n")

            def _not_allowed(self) -> None:
                self._send(405, "text/plain", b"method not allowed\n")

            do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

        return Handler

    def serve(self, stop: threading.Event) -> None:
        thread = threading.Thread(target=self.server.serve_forever, name="node-api", daemon=True)
        thread.start()
        stop.wait()
        self.server.shutdown()
        self.server.server_close()
        thread.join(timeout=5)
