"""The slow LB in front of a Runtime API: changes wait, reads pass, in-process or not."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testbed.slowlb import SlowRuntimeProcess, SlowRuntimeProxy


@contextlib.contextmanager
def upstream(path: Path) -> Iterator[None]:
    """A unix socket server answering each connection's bytes with ``ok <bytes>``."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"ok " + conn.recv(1024))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield
    finally:
        srv.close()


def ask(path: str, cmd: bytes) -> tuple[bytes, float]:
    t0 = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(cmd)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(1024):
            answer += chunk
    return answer, time.monotonic() - t0


@pytest.mark.parametrize("where", ["thread", "process"])
def test_changes_wait_reads_pass(tmp_path: Path, where: str) -> None:
    up = tmp_path / "haproxy.sock"
    proxy: contextlib.AbstractContextManager[SlowRuntimeProxy | SlowRuntimeProcess] = (
        SlowRuntimeProxy(str(up), 0.5, socket_path=str(tmp_path / "slow.sock"))
        if where == "thread"
        else SlowRuntimeProcess(str(up), 0.5)
    )
    with upstream(up), proxy as slow:
        answer, took = ask(slow.socket_path, b"show servers state\n")
        assert answer == b"ok show servers state\n" and took < 0.4
        answer, took = ask(slow.socket_path, b"set server web/a state ready\n")
        assert answer == b"ok set server web/a state ready\n" and took >= 0.5
        path = slow.socket_path
    assert not Path(path).exists()
