"""The pod app: a tiny threaded HTTP/1.1 server that answers with its pod name.

Run it as ``sys.executable -m tests.testbed.app --port P --name POD [--delay-ms N]
[--ready-file PATH] [--host ADDR]``. It never does DNS (``http.server`` calls ``getfqdn`` on bind,
which hangs inside a network namespace without a resolver).

* ``GET /`` -> ``200`` with the pod name as the whole body (header ``X-Pod`` too); every
  response waits ``--delay-ms`` first, or ``?delay_ms=N`` from the query string;
* ``GET /healthz`` -> ``200 ok`` (never delayed), or ``503 failing`` after
  ``GET /health?ok=0`` (``?ok=1`` heals it); the last 1000 ``/healthz`` requests are timed;
* ``GET /probes`` -> JSON ``{"started": t, "listening": t, "healthz": [t, ...]}``: when the
  app started (its module was imported), when it listened, and when each ``/healthz``
  request came, in ``time.monotonic()`` seconds (``CLOCK_MONOTONIC``, shared by the host,
  its network namespaces and containers): a test compares a kubelet's probes with its clock;
* keep-alive is honoured (HTTP/1.1, ``Content-Length`` always set);
* on SIGTERM (or SIGINT) it behaves like a well-written app: stops accepting, lets in-flight
  requests finish (their responses carry ``Connection: close``), closes idle keep-alive
  connections, and exits 0.

``--ready-file`` is written (with the port) once the socket listens.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from tests.testbed.netns import Pod

_STARTED = time.monotonic()  # "started" of GET /probes: this module's import


class _Conn:
    """State of one client connection: idle (waiting for a request) or busy."""

    __slots__ = ("busy", "closing", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.busy = False
        self.closing = False


class AppServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, host: str, port: int, name: str, delay_ms: int) -> None:
        self.pod_name = name
        self.delay_ms = delay_ms
        self.draining = False
        self.started_at = _STARTED
        self.listening_at = 0.0
        self.healthy = True
        self.healthz_at: collections.deque[float] = collections.deque(maxlen=1000)
        self.lock = threading.Lock()
        self.conns: dict[int, _Conn] = {}
        self.idle_cv = threading.Condition(self.lock)
        super().__init__((host, port), Handler)

    def server_bind(self) -> None:  # no getfqdn(), unlike http.server.HTTPServer
        socketserver.TCPServer.server_bind(self)

    def server_activate(self) -> None:
        super().server_activate()
        self.listening_at = time.monotonic()

    def probes(self) -> bytes:
        times = {"started": self.started_at, "listening": self.listening_at}
        return json.dumps({**times, "healthz": list(self.healthz_at)}).encode()

    # -- connection tracking ------------------------------------------------------------
    def track(self, sock: socket.socket) -> _Conn:
        conn = _Conn(sock)
        with self.lock:
            self.conns[id(sock)] = conn
        return conn

    def untrack(self, sock: socket.socket) -> None:
        with self.lock:
            self.conns.pop(id(sock), None)
            self.idle_cv.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Close idle connections, let busy ones finish; True when all are gone."""
        with self.lock:
            self.draining = True
            for conn in self.conns.values():
                if not conn.busy and not conn.closing:
                    conn.closing = True
                    # SHUT_RD wakes the handler blocked in recv(); it sees EOF and closes.
                    with contextlib.suppress(OSError):
                        conn.sock.shutdown(socket.SHUT_RD)
            deadline = None if timeout is None else time.monotonic() + timeout
            while self.conns:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.idle_cv.wait(left)
        return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "podlb-testapp/1"
    sys_version = ""
    server: AppServer

    def setup(self) -> None:
        super().setup()
        self._conn = self.server.track(self.connection)
        if self.server.draining:
            self.close_connection = True

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def handle_one_request(self) -> None:
        # Mirrors BaseHTTPRequestHandler.handle_one_request, with busy/idle bookkeeping.
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except OSError:
            self.close_connection = True
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        srv = self.server
        with srv.lock:
            self._conn.busy = True
            if srv.draining:
                self.close_connection = True
        try:
            if len(self.raw_requestline) > 65536:
                self.send_error(414)
                return
            if not self.parse_request():
                return
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self.send_error(501, f"Unsupported method ({self.command!r})")
                return
            method()
            self.wfile.flush()
        except OSError:
            self.close_connection = True
        finally:
            with srv.lock:
                self._conn.busy = False
                if srv.draining:
                    self.close_connection = True
                srv.idle_cv.notify_all()

    def _reply(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
        closing = self.close_connection or self.server.draining
        self.send_response_only(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Pod", self.server.pod_name)
        if closing:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        qs = parse_qs(url.query)
        if url.path == "/healthz":
            self.server.healthz_at.append(time.monotonic())
            ok = self.server.healthy
            self._reply(200 if ok else 503, b"ok" if ok else b"failing")
            return
        if url.path == "/probes":
            self._reply(200, self.server.probes(), "application/json")
            return
        if url.path == "/health":
            self.server.healthy = qs.get("ok", ["1"])[0] != "0"
            self._reply(200, b"ok" if self.server.healthy else b"failing")
            return
        delay = self.server.delay_ms
        if "delay_ms" in qs:
            with contextlib.suppress(ValueError):
                delay = int(qs["delay_ms"][0])
        if delay > 0:
            time.sleep(delay / 1000)
        self._reply(200, self.server.pod_name.encode())

    do_HEAD = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tests.testbed.app", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", default=os.environ.get("POD_NAME", "app"))
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--delay-ms", type=int, default=int(os.environ.get("APP_DELAY_MS", "0")))
    p.add_argument("--ready-file", default=None)
    p.add_argument(
        "--drain-timeout", type=float, default=None, help="give up on in-flight requests after"
    )
    args = p.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    srv = AppServer(args.host, args.port, args.name, args.delay_ms)
    if args.ready_file:
        tmp = f"{args.ready_file}.tmp"
        with open(tmp, "w") as f:
            f.write(str(srv.server_address[1]))
        os.replace(tmp, args.ready_file)
    loop = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    loop.start()
    while not stop.wait(1.0):
        pass
    srv.shutdown()  # stop the accept loop
    srv.socket.close()  # stop accepting: new connections are refused
    srv.drain(args.drain_timeout)
    sys.stdout.flush()
    return 0


# -- spawning helpers (used by tests, the node simulator and benches) -----------------------
def app_argv(port: int, name: str, *, delay_ms: int = 0, host: str = "0.0.0.0") -> list[str]:
    argv = [sys.executable, "-m", "tests.testbed.app", "--port", str(port), "--name", name]
    argv += ["--host", host]
    if delay_ms:
        argv += ["--delay-ms", str(delay_ms)]
    return argv


def wait_listening(
    host: str,
    port: int,
    timeout: float = 5.0,
    proc: subprocess.Popen[bytes] | None = None,
    netns: str | None = None,
) -> None:
    """Poll until ``host:port`` accepts a TCP connection (from inside ``netns`` if given)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"app exited with {proc.returncode} before listening")
        try:
            if netns:
                from tests.testbed.netns import socket_in_netns

                s = socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(0.5)
                with s:
                    s.connect((host, port))
            else:
                socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host}:{port} not listening after {timeout}s") from None
            time.sleep(0.01)


def spawn_local(
    port: int, name: str, *, delay_ms: int = 0, host: str = "127.0.0.1", timeout: float = 5.0
) -> subprocess.Popen[bytes]:
    """Run the app on the host (``127.0.0.1``) and wait until it listens."""
    proc = subprocess.Popen(
        app_argv(port, name, delay_ms=delay_ms, host=host), cwd=_repo_root(), env=_env()
    )
    try:
        wait_listening(host, port, timeout, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def spawn_in_pod(
    pod: Pod, port: int, name: str | None = None, *, delay_ms: int = 0, timeout: float = 5.0
) -> subprocess.Popen[bytes]:
    """Run the app inside a :class:`~tests.testbed.netns.Pod` and wait until it listens on the
    pod IP. The process is also killed when the pool closes."""
    proc = pod.popen(
        app_argv(port, name or pod.name, delay_ms=delay_ms), cwd=_repo_root(), env=_env()
    )
    try:
        wait_listening(pod.ip, port, timeout, proc, netns=pod.name)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = _repo_root()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


if __name__ == "__main__":
    sys.exit(main())
