"""Reading an answer's body: whole, in one buffer (a chunked list page is not held three times
over), and a body cut short is a transient error; every call timed."""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from agent.errors import PodlbError, TransientError
from agent.kube.calls import Calls

BODY = b'{"items": [' + b",".join(b'{"n": %d, "pad": "%s"}' % (i, b"x" * 200) for i in range(20000))
BODY += b"]}"


class Chunked(BaseHTTPRequestHandler):
    """Answers as kube-apiserver answers a list: chunked, in pieces of 32 KiB; ``/cut`` stops
    half way and closes the connection."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        end = len(BODY) // 2 if self.path == "/cut" else len(BODY)
        for i in range(0, end, 32768):
            piece = BODY[i : min(i + 32768, end)]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        if self.path == "/cut":
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Chunked)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_chunked_body_is_read_whole_into_one_buffer(server: str) -> None:
    pool = urllib3.PoolManager()
    resp = pool.request("GET", f"{server}/list", preload_content=False)
    tracemalloc.start()
    try:
        data = Calls().read("list", "pods", resp)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data == BODY
    # urllib3's ``data`` holds the pieces, their join and more: about three times the body.
    assert peak < 1.5 * len(BODY), f"peak {peak} for a body of {len(BODY)}"


def test_a_body_cut_short_is_transient(server: str) -> None:
    seen: list[tuple[str, str, str]] = []
    pool = urllib3.PoolManager(retries=False)
    resp = pool.request("GET", f"{server}/cut", preload_content=False)
    with pytest.raises(TransientError, match="list pods: reading the answer"):
        Calls(lambda *call: seen.append(call)).read("list", "pods", resp)
    assert seen == [("list", "pods", "error")]


def test_every_call_is_timed_answered_or_not() -> None:
    """podlb_kube_request_duration_seconds: a slow API server shows in the condition writes'
    time (a readiness gate waits on them), whether the call was answered or failed."""
    timed: list[tuple[str, str, float]] = []
    calls = Calls(timed=lambda verb, resource, s: timed.append((verb, resource, s)))

    def slow() -> str:
        time.sleep(0.05)
        return "ok"

    def refused() -> None:
        time.sleep(0.05)
        raise ApiException(status=500, reason="boom")

    assert calls("patch", "pods/status", slow) == "ok"
    with pytest.raises(PodlbError):
        calls("patch", "pods/status", refused)
    with pytest.raises(TransientError):
        calls("get", "pods", lambda: (_ for _ in ()).throw(OSError("reset")))
    assert [(v, r) for v, r, _ in timed] == [("patch", "pods/status")] * 2 + [("get", "pods")]
    assert all(s >= 0.05 for _, _, s in timed[:2]) and timed[2][2] < 0.05
