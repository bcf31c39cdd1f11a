"""What every benchmark does first."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path


def prepare(needs: str) -> bool:
    """Make SIGTERM run the clean-up (namespaces, HAProxy, agent processes: it becomes
    SystemExit, so every ``with`` and ``finally`` runs) and check for root. False, with a
    message, when not root."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if os.geteuid() != 0:
        print(f"needs root ({needs})", file=sys.stderr)
        return False
    return True


def check_sink(port: int, stop: threading.Event) -> socket.socket:
    """Accept and close every connection to *:port (HAProxy's TCP health checks of many
    servers, all answered by this one listener)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(4096)
    srv.settimeout(0.2)

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.close()

    threading.Thread(target=loop, daemon=True, name="check-sink").start()
    return srv


CHILD_EHASH = "/proc/sys/net/ipv4/tcp_child_ehash_entries"


@contextlib.contextmanager
def child_ehash(entries: int) -> Iterator[None]:
    """Namespaces created inside get a TCP hash table of their own (Linux >= 6.1).

    By default every namespace shares the host's established-socket hash (here 262144
    buckets), and each sock_diag dump walks all of it, whatever the namespace holds: that walk
    is about half of a scan. The sysctl is restored on exit; it only affects namespaces
    created while it is set.
    """
    if entries <= 0:
        yield
        return
    old = Path(CHILD_EHASH).read_text().strip()
    Path(CHILD_EHASH).write_text(str(entries))
    try:
        yield
    finally:
        Path(CHILD_EHASH).write_text(old)


def log_clock(t: float) -> str:
    """Wall-clock time ``t`` as the agents' text logs print it (local, ``HH:MM:SS.mmm``), to
    find a benchmark's sample or failure in them."""
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"
