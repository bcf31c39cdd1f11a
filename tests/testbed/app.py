"""The pod app: a tiny HTTP/1.1 server that answers with its pod name.

Run it as ``sys.executable -m tests.testbed.app --port P --name POD [--delay-ms N]
[--ready-file PATH] [--host ADDR] [--drain-timeout S]`` (or as a script: it imports only the
standard library). It never does DNS (``http.server`` calls ``getfqdn`` on bind, which hangs
inside a network namespace without a resolver).

* ``GET /`` -> ``200`` with the pod name as the whole body (header ``X-Pod`` too); every
  response waits ``--delay-ms`` first, or ``?delay_ms=N`` from the query string;
* ``GET /healthz`` -> ``200 ok`` (never delayed), or ``503 failing`` after
  ``GET /health?ok=0`` (``?ok=1`` heals it); the last 1000 ``/healthz`` requests are timed;
* ``GET /probes`` -> JSON ``{"started": t, "listening": t, "healthz": [t, ...]}``: when the
  app started (its module was imported), when it listened, and when each ``/healthz``
  request came, in ``time.monotonic()`` seconds (``CLOCK_MONOTONIC``, shared by the host,
  its network namespaces and containers): a test compares a kubelet's probes with its clock;
* ``HEAD`` as ``GET`` without the body; other methods -> ``501``; a request it cannot parse
  -> ``400`` (a request line over 64 KiB ``414``, headers over 64 KiB ``431``), each with
  ``Connection: close``;
* keep-alive is honoured (HTTP/1.1 unless ``Connection: close``, HTTP/1.0 with
  ``Connection: keep-alive``; ``Content-Length`` always set; a request body of
  ``Content-Length`` bytes is read and ignored, a chunked one refused with ``400``);
* on SIGTERM (or SIGINT) it behaves like a well-written app: stops accepting, lets in-flight
  requests finish (their responses carry ``Connection: close``), closes idle keep-alive
  connections, and exits 0 (``--drain-timeout``: gives up on in-flight requests after that
  many seconds).

``--ready-file`` is written (with the port) once the socket listens.

It is one thread with one ``epoll`` loop that sleeps until a socket or a delayed response
needs it (no polling while idle), and it imports little: the testbed runs hundreds of these,
each probed by the kubelet and health-checked by the LB every second.
"""

from __future__ import annotations

import argparse
import collections
import heapq
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

    from tests.testbed.netns import Pod

_STARTED = time.monotonic()  # "started" of GET /probes: this module's import

MAX_LINE = 65536  # a longer request line is refused with 414
MAX_HEAD = 65536  # longer headers are refused with 431


class Request:
    """One parsed request: what it asks for and how many bytes of the buffer it used."""

    __slots__ = ("keep_alive", "method", "size", "target")

    def __init__(self, method: str, target: str, keep_alive: bool, size: int) -> None:
        self.method = method
        self.target = target
        self.keep_alive = keep_alive
        self.size = size


class BadRequest(Exception):
    """A request the app refuses; answered with ``code`` and the connection closed."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


def parse_request(buf: bytes) -> Request | None:
    """The request at the start of ``buf``, None while it is incomplete; raises
    :class:`BadRequest`."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if b"\n" not in buf[: MAX_LINE + 2] and len(buf) > MAX_LINE:
            raise BadRequest(414, "request line too long")
        if len(buf) > MAX_HEAD:
            raise BadRequest(431, "headers too long")
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise BadRequest(400, f"bad request line {lines[0][:80]!r}")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest(505, f"unsupported version {version[:20]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest(400, f"bad header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise BadRequest(400, "chunked request bodies are not supported")
    try:
        body = int(headers.get("content-length", "0"))
    except ValueError:
        raise BadRequest(400, "bad Content-Length") from None
    if body < 0:
        raise BadRequest(400, "bad Content-Length")
    size = end + 4 + body
    if len(buf) < size:
        return None
    conn = headers.get("connection", "").lower()
    keep_alive = "keep-alive" in conn if version == "HTTP/1.0" else "close" not in conn
    return Request(method, target, keep_alive, size)


def query(target: str) -> dict[str, str]:
    """The query string's parameters (the first value of each; no percent-decoding, which the
    app's parameters never need)."""
    out: dict[str, str] = {}
    for part in target.partition("?")[2].split("&"):
        if part:
            name, _, value = part.partition("=")
            out.setdefault(name, value)
    return out


class _Conn:
    """One client connection: bytes read and not yet answered, bytes still to send, and
    whether a request is in flight (read and not fully answered)."""

    __slots__ = ("busy", "close_after", "inbuf", "out", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = b""
        self.out = b""
        self.busy = False
        self.close_after = False

    @property
    def idle(self) -> bool:
        """Between requests: nothing in flight, nothing half-read, nothing left to send."""
        return not self.busy and not self.inbuf and not self.out


class AppServer:
    """The app's server: one listening socket, its connections, one event loop.

    ``address_family`` is taken from ``host`` (``::``-style: IPv6) unless set on the class."""

    address_family: int | None = None

    def __init__(self, host: str, port: int, name: str, delay_ms: int) -> None:
        self.pod_name = name
        self.delay_ms = delay_ms
        self.draining = False
        self.stop_requested = False
        self.started_at = _STARTED
        self.healthy = True
        self.healthz_at: collections.deque[float] = collections.deque(maxlen=1000)
        self.conns: dict[int, _Conn] = {}  # by file descriptor
        self._timers: list[tuple[float, int, _Conn, Request]] = []  # delayed answers, a heap
        self._seq = 0
        family = self.address_family or (socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host, port))
            self.socket.listen(1024)
        except BaseException:
            self.socket.close()
            raise
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self.listening_at = time.monotonic()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.socket, selectors.EVENT_READ, None)
        self._wake_r, self.wake_w = socket.socketpair()  # see :meth:`request_stop`
        for s in (self._wake_r, self.wake_w):
            s.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)

    def request_stop(self) -> None:
        """Ask :meth:`serve` to drain and return (a signal handler may call it: the signal's
        wakeup fd, :attr:`wake_w`, wakes the loop)."""
        self.stop_requested = True

    def probes(self) -> bytes:
        import json  # only for GET /probes: every pod pays for what it imports at start

        times = {"started": self.started_at, "listening": self.listening_at}
        return json.dumps({**times, "healthz": list(self.healthz_at)}).encode()

    # -- the loop ---------------------------------------------------------------------------
    def serve(self, drain_timeout: float | None = None) -> bool:
        """Serve until :meth:`request_stop`, then drain; True when every connection ended
        before ``drain_timeout``."""
        while not self.stop_requested:
            self._tick(None)
        self.drain()
        deadline = None if drain_timeout is None else time.monotonic() + drain_timeout
        while self.conns:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._tick(left)
        return True

    def _tick(self, limit: float | None) -> None:
        """Wait for sockets (at most ``limit`` s, or until the next delayed answer), handle
        them, then send the answers that are due."""
        timeout = limit
        if self._timers:
            due = max(0.0, self._timers[0][0] - time.monotonic())
            timeout = due if timeout is None else min(timeout, due)
        for key, mask in self._sel.select(timeout):
            if key.fileobj is self.socket:
                self._accept()
            elif key.fileobj is self._wake_r:
                self._drain_wakeups()
            elif mask & selectors.EVENT_WRITE:
                self._flush(key.data)
            else:
                self._read(key.data)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, conn, req = heapq.heappop(self._timers)
            if conn.sock.fileno() >= 0:
                self._answer(conn, req)

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except BlockingIOError:
            pass

    def _accept(self) -> None:
        for _ in range(64):  # a bounded batch, so a flood cannot starve the connections
            try:
                sock, _ = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ECONNABORTED and the like: that client is gone
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock)
            self.conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.inbuf += data
        self._next_request(conn)

    def _next_request(self, conn: _Conn) -> None:
        """Start on the next complete request in ``conn``'s buffer, if it has none in flight."""
        if conn.busy or conn.out or conn.close_after:
            return
        try:
            req = parse_request(conn.inbuf)
        except BadRequest as e:
            conn.inbuf = b""
            conn.busy = True
            body = str(e).encode()
            self._send(conn, self._response(e.code, body, close=True) + body, close=True)
            return
        if req is None:
            return
        conn.inbuf = conn.inbuf[req.size :]
        conn.busy = True
        delay = self._delay_of(req)
        if delay > 0:
            self._seq += 1
            heapq.heappush(self._timers, (time.monotonic() + delay, self._seq, conn, req))
        else:
            self._answer(conn, req)

    def _delay_of(self, req: Request) -> float:
        """Seconds to wait before answering: none for the health endpoints."""
        path = req.target.partition("?")[0]
        if req.method not in ("GET", "HEAD") or path in ("/healthz", "/health", "/probes"):
            return 0.0
        try:
            return int(query(req.target).get("delay_ms", self.delay_ms)) / 1000
        except ValueError:
            return self.delay_ms / 1000

    def _answer(self, conn: _Conn, req: Request) -> None:
        if req.method not in ("GET", "HEAD"):
            body = f"Unsupported method ({req.method!r})".encode()
            self._send(conn, self._response(501, body, close=True) + body, close=True)
            return
        code, body, ctype = self._route(req.target)
        close = not req.keep_alive or self.draining
        head = self._response(code, body, ctype, close=close)
        self._send(conn, head if req.method == "HEAD" else head + body, close=close)

    def _route(self, target: str) -> tuple[int, bytes, str]:
        path = target.partition("?")[0]
        if path == "/healthz":
            self.healthz_at.append(time.monotonic())
            return (200, b"ok", "text/plain") if self.healthy else (503, b"failing", "text/plain")
        if path == "/probes":
            return 200, self.probes(), "application/json"
        if path == "/health":
            self.healthy = query(target).get("ok", "1") != "0"
            return 200, b"ok" if self.healthy else b"failing", "text/plain"
        return 200, self.pod_name.encode(), "text/plain"

    def _response(
        self, code: int, body: bytes, ctype: str = "text/plain", *, close: bool = False
    ) -> bytes:
        """The status line and headers of an answer with ``body``."""
        return (
            f"HTTP/1.1 {code} {HTTPStatus(code).phrase}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nX-Pod: {self.pod_name}\r\n"
            + ("Connection: close\r\n" if close else "")
            + "\r\n"
        ).encode("latin-1")

    # -- writing ----------------------------------------------------------------------------
    def _send(self, conn: _Conn, data: bytes, *, close: bool) -> None:
        conn.close_after = conn.close_after or close
        conn.out += data
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if conn.out:  # the rest when the socket can take it
            self._sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
            return
        if conn.close_after:
            self._close(conn)
            return
        self._sel.modify(conn.sock, selectors.EVENT_READ, conn)
        conn.busy = False
        if self.draining and conn.idle:
            self._close(conn)
        else:
            self._next_request(conn)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            self.conns.pop(fd, None)
            self._sel.unregister(conn.sock)
            conn.sock.close()

    # -- SIGTERM ----------------------------------------------------------------------------
    def drain(self) -> None:
        """Stop accepting (new connections are refused), read what idle connections already
        received (a request there is answered, with ``Connection: close``), close the idle
        ones; busy ones close after their answer."""
        self.draining = True
        self._sel.unregister(self.socket)
        self.socket.close()
        for conn in list(self.conns.values()):
            if conn.idle:
                self._read(conn)
            if conn.idle and conn.sock.fileno() >= 0:
                self._close(conn)


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

    srv = AppServer(args.host, args.port, args.name, args.delay_ms)
    signal.set_wakeup_fd(srv.wake_w.fileno())
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: srv.request_stop())
    if args.ready_file:
        tmp = f"{args.ready_file}.tmp"
        with open(tmp, "w") as f:
            f.write(str(srv.server_address[1]))
        os.replace(tmp, args.ready_file)
    srv.serve(args.drain_timeout)
    sys.stdout.flush()
    return 0


# -- spawning helpers (used by tests, the node simulator and benches) -----------------------
# They import what they need when called, so that the app itself starts with little.
def app_argv(port: int, name: str, *, delay_ms: int = 0, host: str = "0.0.0.0") -> list[str]:
    """The app's command line: ``-S`` skips ``site`` (the virtualenv's packages and their
    import hooks, which the app does not use: a third of its start-up); ``PYTHONPATH`` (see
    :func:`_env`) or the working directory finds ``tests``."""
    argv = [sys.executable, "-S", "-m", "tests.testbed.app", "--port", str(port), "--name", name]
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
    import subprocess

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
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env() -> dict[str, str]:
    """The app's environment: ``PYTHONPATH`` finds ``tests``; its bytecode is cached outside
    the tree (``PYTHONPYCACHEPREFIX``) even where ``PYTHONDONTWRITEBYTECODE`` is set, since
    compiling the module again costs each pod about 10 ms of CPU at start."""
    env = dict(os.environ)
    root = _repo_root()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    tmp = env.get("TMPDIR") or "/tmp"
    env.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tmp, "podlb-testbed-pycache"))
    return env


if __name__ == "__main__":
    sys.exit(main())
