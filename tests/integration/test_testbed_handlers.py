"""The simulated kubelet's ``httpGet`` handler (probes and preStop hooks) against a loopback
server: status classes, headers, bad answers, timeouts."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.testbed.handlers import HandlerFailed, http_get

SEEN: list[dict[str, str]] = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        SEEN.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        code = int(self.path.rsplit("/", 1)[-1]) if self.path.startswith("/code/") else 200
        body = b"x" * (50_000 if self.path == "/big" else 2)
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def port() -> Iterator[int]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield int(srv.server_address[1])
    finally:
        srv.shutdown()
        srv.server_close()


def get(action: dict[str, object], port: int, timeout: float = 2.0) -> int:
    return http_get(action, "127.0.0.1", lambda p: port if p == "http" else int(p), 80, timeout)


def test_success_headers_and_failures(port: int) -> None:
    SEEN.clear()
    headers = [{"name": "X-Probe", "value": "yes"}]
    assert get({"path": "/healthz", "port": "http", "httpHeaders": headers}, port) == 200
    assert SEEN[-1]["path"] == "/healthz" and SEEN[-1]["x-probe"] == "yes"
    assert SEEN[-1]["host"] == f"127.0.0.1:{port}"
    assert SEEN[-1]["user-agent"].startswith("kube-probe/")
    assert get({"path": "/code/302", "port": port}, port) == 302
    assert get({"path": "/big", "port": port}, port) == 200
    assert get({"path": "/", "port": port, "host": "localhost"}, port) == 200
    with pytest.raises(HandlerFailed, match="HTTP 503"):
        get({"path": "/code/503", "port": port}, port)
    with pytest.raises(HandlerFailed, match="only HTTP"):
        get({"path": "/", "port": port, "scheme": "HTTPS"}, port)


def test_no_answer_bad_answer_and_nothing_listening() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def answer(data: bytes | None) -> None:
        conn, _ = srv.accept()
        conn.recv(4096)
        if data is not None:
            conn.sendall(data)
            conn.close()
        else:
            threading.Event().wait(1.5)
            conn.close()

    for data, match in ((b"hello\r\n\r\n", "no valid status line"), (b"", "no valid status")):
        t = threading.Thread(target=answer, args=(data,), daemon=True)
        t.start()
        with pytest.raises(HandlerFailed, match=match):
            get({"path": "/", "port": port}, port)
        t.join()
    t = threading.Thread(target=answer, args=(None,), daemon=True)
    t.start()
    with pytest.raises(OSError):
        get({"path": "/", "port": port}, port, timeout=0.3)
    t.join()
    srv.close()
    with pytest.raises(OSError):
        get({"path": "/", "port": port}, port)
