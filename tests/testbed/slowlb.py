"""A slow LB in front of HAProxy's Runtime API: every connection that changes something
(``add``, ``set``, ``del``, ``enable``, ``disable`` …) waits ``delay_s`` before its commands go
through; reads (``show …``) pass at once. Models what real load balancers have and local
HAProxy does not: changes that take time to reach the data plane (cloud LB APIs take seconds),
so a pod's termination and the LB's reaction really race.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time


class SlowRuntimeProxy:
    """Listens on a unix socket (``socket_path``), or on ``127.0.0.1:tcp_port`` when given
    (or ``tcp_host:tcp_port``); ``delay_s`` may be changed while it runs."""

    def __init__(
        self,
        upstream: str,
        delay_s: float,
        *,
        tcp_port: int | None = None,
        tcp_host: str = "127.0.0.1",
    ) -> None:
        self.upstream = upstream
        self.delay_s = delay_s
        self._dir = tempfile.mkdtemp(prefix="slowlb-")
        self.socket_path = os.path.join(self._dir, "runtime.sock")
        if tcp_port is None:
            self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._srv.bind(self.socket_path)
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
