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

import collections
import contextlib
import heapq
import os
import selectors
import signal
import socket
import sys
import time

# Not typing.TYPE_CHECKING: importing typing (or http, for its status phrases) costs each pod
# milliseconds of CPU at start; type checkers treat this name alike.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn

_STARTED = time.monotonic()  # "started" of GET /probes: this module's import

MAX_LINE = 65536  # a longer request line is refused with 414
MAX_HEAD = 65536  # longer headers are refused with 431
REASONS = {
    200: "OK",
    400: "Bad Request",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


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
        self._wake_r, self._wake_w = socket.socketpair()  # see :meth:`request_stop`
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)

    def request_stop(self) -> None:
        """Ask :meth:`serve` to drain and return; a signal handler or another thread may call
        it (a byte on the wake-up socket ends the loop's wait: after a signal Python retries an
        interrupted ``epoll_wait``)."""
        self.stop_requested = True
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
            self._wake_w.send(b"x")

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
            f"HTTP/1.1 {code} {REASONS[code]}\r\nContent-Type: {ctype}\r\n"
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


USAGE = (
    "usage: tests.testbed.app --port P [--name POD] [--host ADDR] [--delay-ms N]\n"
    "                         [--ready-file PATH] [--drain-timeout S]"
)


class Options:
    """The command line (parsed by hand: ``argparse`` and the ``re`` it imports cost each pod
    about 14 ms of CPU at start). ``--name`` defaults to ``$POD_NAME``, ``--delay-ms`` to
    ``$APP_DELAY_MS``."""

    def __init__(self) -> None:
        self.port: int | None = None
        self.name = os.environ.get("POD_NAME", "app")
        self.host = "0.0.0.0"
        self.delay_ms = int(os.environ.get("APP_DELAY_MS", "0"))
        self.ready_file: str | None = None
        self.drain_timeout: float | None = None  # give up on in-flight requests after


def parse_args(argv: Sequence[str]) -> Options:
    """``--opt VALUE`` or ``--opt=VALUE``; ``-h``/``--help`` prints usage and exits 0, a bad
    command line prints usage and the error and exits 2 (as ``argparse`` does)."""
    opts = Options()
    convert = {"--port": int, "--name": str, "--host": str, "--delay-ms": int,
               "--ready-file": str, "--drain-timeout": float}  # fmt: skip
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            print(f"{USAGE}\n\n{__doc__}")
            raise SystemExit(0)
        flag, eq, value = arg.partition("=")
        if flag not in convert:
            _usage_error(f"unrecognized argument {arg!r}")
        if not eq:
            if not args:
                _usage_error(f"{flag}: expected a value")
            value = args.pop(0)
        try:
            setattr(opts, flag[2:].replace("-", "_"), convert[flag](value))
        except ValueError:
            _usage_error(f"{flag}: invalid value {value!r}")
    if opts.port is None:
        _usage_error("--port is required")
    return opts


def _usage_error(message: str) -> NoReturn:
    print(f"{USAGE}\ntests.testbed.app: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    assert args.port is not None  # parse_args refuses a command line without it
    srv = AppServer(args.host, args.port, args.name, args.delay_ms)
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


if __name__ == "__main__":
    sys.exit(main())
