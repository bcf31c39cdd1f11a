"""A slow LB in front of HAProxy's Runtime API: every connection that changes something
(``add``, ``set``, ``del``, ``enable``, ``disable`` …) waits ``delay_s`` before its commands go
through; reads (``show …``) pass at once. Models what real load balancers have and local
HAProxy does not: changes that take time to reach the data plane (cloud LB APIs take seconds),
so a pod's termination and the LB's reaction really race.

``python -m tests.testbed.slowlb UPSTREAM LISTEN DELAY`` serves the same from a process of its
own (:class:`SlowRuntimeProcess`), as a cloud LB's API is served from elsewhere: in the
interpreter of a simulated kubelet of 300 pods, its threads waited for the CPU and the GIL
behind the kubelet's, and podlb's 2 s reads through it timed out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.testbed.kubeapi.process import stop_process


class SlowRuntimeProxy:
    """Listens on a unix socket (``socket_path``: a temporary one unless given; it appears once
    the proxy listens), or on ``127.0.0.1:tcp_port`` when given (or ``tcp_host:tcp_port``);
    ``delay_s`` may be changed while it runs."""

    def __init__(
        self,
        upstream: str,
        delay_s: float,
        *,
        tcp_port: int | None = None,
        tcp_host: str = "127.0.0.1",
        socket_path: str | None = None,
    ) -> None:
        self.upstream = upstream
        self.delay_s = delay_s
        self._dir = "" if socket_path else tempfile.mkdtemp(prefix="slowlb-")
        self.socket_path = socket_path or os.path.join(self._dir, "runtime.sock")
        if tcp_port is None:
            self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._srv.bind(self.socket_path + ".tmp")
            self._srv.listen(64)
            os.replace(self.socket_path + ".tmp", self.socket_path)
        else:
            self._srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._srv.bind((tcp_host, tcp_port))
            self._srv.listen(64)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="slowlb")

    def __enter__(self) -> SlowRuntimeProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._srv.close()
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
            if self._dir:
                os.rmdir(self._dir)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            try:
                first = client.recv(65536)
                if not first:
                    return
                if _mutates(first):
                    time.sleep(self.delay_s)
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as up:
                    up.connect(self.upstream)
                    up.sendall(first)
                    pump = threading.Thread(target=_pipe, args=(client, up), daemon=True)
                    pump.start()
                    _pipe(up, client)
                    pump.join(timeout=1)
            except OSError:
                return


def _mutates(data: bytes) -> bool:
    """Whether the connection's first commands change anything (reads start with "show")."""
    commands = [c.strip() for c in data.replace(b";", b"\n").split(b"\n") if c.strip()]
    return any(not c.startswith((b"show ", b"prompt", b"help", b"quit")) for c in commands)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


class SlowRuntimeProcess:
    """:class:`SlowRuntimeProxy` on a unix socket, served by a process of its own
    (``socket_path``; ``delay_s`` is fixed for its life)."""

    def __init__(self, upstream: str, delay_s: float) -> None:
        self.upstream = upstream
        self.delay_s = delay_s
        self._dir = tempfile.mkdtemp(prefix="slowlb-")
        self.socket_path = os.path.join(self._dir, "runtime.sock")
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SlowRuntimeProcess:
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        argv = [sys.executable, "-m", "tests.testbed.slowlb", self.upstream, self.socket_path,
                str(self.delay_s)]  # fmt: skip
        self._proc = subprocess.Popen(argv, cwd=root, env=env, start_new_session=True)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket_path):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"the slow LB proxy did not start: {argv}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, 5)
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)


def main(argv: list[str]) -> int:
    """``UPSTREAM LISTEN DELAY``: serve until SIGTERM."""
    if len(argv) != 3:
        print("usage: python -m tests.testbed.slowlb UPSTREAM LISTEN DELAY", file=sys.stderr)
        return 2
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with SlowRuntimeProxy(argv[0], float(argv[2]), socket_path=argv[1]):
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
