"""The LB side: a plain socket HTTP/1.1 client and the closed-loop load of one segment
(:func:`run_segment`), run from the lb namespace."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.testbed.netns import in_netns

PATHS = ("direct", "nodeport")
MIXES = ("keepalive", "newconn")


_REQ_KEEP = b"GET / HTTP/1.1\r\nHost: web\r\n\r\n"
_REQ_CLOSE = b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"


def _connect(host: str, port: int, timeout: float = 2.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send one request, return the body of the response (Content-Length framing)."""
    sock.sendall(request)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed before the response head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"bad response: {head[:80]!r}")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed in the body")
        body += chunk
    return body


def get_once(host: str, port: int) -> dict[str, str]:
    """One request on a new connection (run it inside the client namespace)."""
    with _connect(host, port) as sock:
        return dict(json.loads(_exchange(sock, _REQ_CLOSE)))


@dataclass
class Segment:
    """What one (round, mix, path) run of the load measured."""

    path: str
    mix: str
    round: int
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    pods: Counter[str] = field(default_factory=Counter)
    srcs: Counter[str] = field(default_factory=Counter)
    pairs: Counter[tuple[str, str]] = field(default_factory=Counter)  # (pod, source seen)


def run_segment(
    lb_ns: str,
    targets: Sequence[tuple[str, int]],
    *,
    path: str,
    mix: str,
    round_no: int,
    duration: float,
    max_requests: int,
    concurrency: int,
    keepalive_requests: int,
) -> Segment:
    """Closed-loop load from ``lb_ns`` for ``duration`` s or ``max_requests`` requests.

    Each new connection goes to the next target (round robin): the LB's own pick in direct mode,
    always the one NodePort otherwise (kube-proxy then picks the pod).
    """
    seg = Segment(path=path, mix=mix, round=round_no)
    lock = threading.Lock()
    state = {"sent": 0, "rr": 0}
    request = _REQ_KEEP if mix == "keepalive" else _REQ_CLOSE
    per_conn = keepalive_requests if mix == "keepalive" else 1
    start = time.monotonic()
    deadline = start + duration

    def take() -> bool:
        with lock:
            if state["sent"] >= max_requests:
                return False
            state["sent"] += 1
            return True

    def worker() -> None:
        lat: list[int] = []
        pods: Counter[str] = Counter()
        srcs: Counter[str] = Counter()
        pairs: Counter[tuple[str, str]] = Counter()
        errors = 0
        with in_netns(lb_ns):
            while time.monotonic() < deadline:
                with lock:
                    target = targets[state["rr"] % len(targets)]
                    state["rr"] += 1
                sock: socket.socket | None = None
                try:
                    t0 = time.perf_counter_ns()
                    sock = _connect(*target)
                    for _ in range(per_conn):
                        if time.monotonic() >= deadline or not take():
                            break
                        if mix == "keepalive":
                            t0 = time.perf_counter_ns()
                        body = _exchange(sock, request)
                        lat.append(time.perf_counter_ns() - t0)
                        answer = json.loads(body)
                        pods[answer["pod"]] += 1
                        srcs[answer["src"]] += 1
                        pairs[(answer["pod"], answer["src"])] += 1
                    else:
                        continue
                    break  # budget spent
                except (OSError, ValueError, KeyError):
                    errors += 1
                finally:
                    if sock is not None:
                        sock.close()
        with lock:
            seg.latencies_ns.extend(lat)
            seg.pods.update(pods)
            seg.srcs.update(srcs)
            seg.pairs.update(pairs)
            seg.errors += errors

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + 10)
    seg.elapsed = time.monotonic() - start
    return seg
