"""The pod app: a tiny threaded HTTP/1.1 server answering ``{"pod", "src"}`` (its name and the
client address it sees), run inside each pod namespace by ``--serve-pod``."""

from __future__ import annotations

import json
import os
import socketserver
from http.server import BaseHTTPRequestHandler
from typing import Any


class _PodHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    pod_name = "pod"

    def do_GET(self) -> None:
        body = json.dumps({"pod": self.pod_name, "src": self.client_address[0]}).encode()
        conn = "close" if self.close_connection else "keep-alive"
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: {conn}\r\n\r\n"
        ).encode()
        self.wfile.write(head + body)  # one write: no Nagle / delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _PodServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def server_bind(self) -> None:
        # Not HTTPServer.server_bind: that calls socket.getfqdn (reverse DNS).
        socketserver.TCPServer.server_bind(self)


def serve_pod(name: str, port: int, cpus: set[int] | None = None) -> None:
    """Run the pod app forever (inside the pod namespace), on ``cpus`` when given."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    handler = type("Handler", (_PodHandler,), {"pod_name": name})
    with _PodServer(("0.0.0.0", port), handler) as server:
        server.serve_forever(poll_interval=0.5)
