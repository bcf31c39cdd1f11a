"""The load generator against a local app, a closed port, a resetting server and HAProxy."""

from __future__ import annotations

import errno
import http.client
import http.server
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from tests.testbed.appproc import spawn_local
from tests.testbed.haproxy import HAProxy, free_port, supports_dynamic_servers
from tests.testbed.load import (
    ERROR_KINDS,
    ERROR_MEANINGS,
    LoadGenerator,
    LoadResult,
    classify,
    percentile,
    run_load,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def apps() -> Iterator[list[int]]:
    ports = [free_port(), free_port()]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, port in enumerate(ports):
            procs.append(spawn_local(port, f"pod-{i}"))
        yield ports
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_percentile() -> None:
    values = [float(x) for x in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([3.0], 90) == 3.0
    assert percentile([], 50) == 0.0


def test_bounded_by_count_both_modes(apps: list[int]) -> None:
    url = f"http://127.0.0.1:{apps[0]}/"
    for mode in ("new", "keepalive"):
        res = run_load(url, mode=mode, concurrency=3, count=60)
        assert isinstance(res, LoadResult)
        assert res.requests == 60 and res.ok == 60 and res.errors_total == 0, res.summary()
        assert res.by_pod == {"pod-0": 60}
        assert 0 < res.p50_ms <= res.p90_ms <= res.p99_ms <= res.max_ms
        assert "60 req" in res.summary()
        with pytest.raises(AttributeError):
            res.ok = 1  # type: ignore[misc]


def test_bounded_by_duration_with_rate(apps: list[int]) -> None:
    t0 = time.monotonic()
    res = run_load(f"http://127.0.0.1:{apps[1]}/", mode="keepalive", duration=0.5, rate=100)
    took = time.monotonic() - t0
    assert 0.45 <= took < 1.5
    assert 35 <= res.requests <= 55, res.summary()
    assert res.errors_total == 0
    assert res.first_seen["pod-1"] < 0.1 and res.last_seen["pod-1"] > 0.35


def test_background_stop_early(apps: list[int]) -> None:
    with LoadGenerator(f"http://127.0.0.1:{apps[0]}/", duration=30, concurrency=2) as gen:
        time.sleep(0.2)
    res = gen.result()
    assert res.duration_s < 2 and res.ok > 0 and res.errors_total == 0


def test_refused_and_timeout(apps: list[int]) -> None:
    closed = free_port()
    before = time.time()
    res = run_load(f"http://127.0.0.1:{closed}/", count=5, concurrency=1)
    assert res.errors["refused"] == 5 and res.ok == 0
    assert [e[1] for e in res.error_events] == ["refused"] * 5
    # each failure's wall-clock time (to find it in the agents' logs): started_at + its time
    assert before <= res.started_at <= res.started_at + res.error_events[-1][0] <= time.time()
    from bench.rolling_update import failed_requests
    from tests.testbed.rollout import ScenarioResult

    lines = failed_requests([ScenarioResult("podlb", 1, 1.0, new_conn=res)], most=2)
    stamp = time.strftime("%H:%M:%S", time.localtime(res.started_at + res.error_events[0][0]))
    assert lines[0] == "podlb: failed new connection requests (first 2):" and len(lines) == 3
    assert lines[1].startswith(f"  {stamp}.") and " refused: " in lines[1]
    res = run_load(f"http://127.0.0.1:{apps[0]}/?delay_ms=500", count=2, timeout=0.1)
    assert res.errors["timeout"] == 2, res.summary()


def test_reset() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            c.recv(1024)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()  # RST

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        res = run_load(f"http://127.0.0.1:{srv.getsockname()[1]}/", count=4, concurrency=1)
        assert res.errors["reset"] == 4, res.summary()
    finally:
        stop.set()
        t.join(2)
        srv.close()


@pytest.mark.haproxy
@pytest.mark.skipif(not supports_dynamic_servers(), reason="needs haproxy >= 2.4")
def test_5xx_and_spread_through_haproxy(apps: list[int]) -> None:
    with HAProxy(server_options="") as lb:
        res = run_load(lb.url, count=10, concurrency=2)
        assert res.errors["5xx"] == 10 and res.status_codes == {503: 10}
        for i, port in enumerate(apps):
            lb.add_server("be", f"s{i}", "127.0.0.1", port)
        res = run_load(lb.url, mode="keepalive", count=100, concurrency=4)
        assert res.ok == 100, res.summary()
        assert set(res.by_pod) == {"pod-0", "pod-1"}
        assert min(res.by_pod.values()) >= 30


def test_needs_a_bound() -> None:
    with pytest.raises(ValueError):
        LoadGenerator("http://127.0.0.1:1/")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "refused"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "unreachable"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "unreachable"),
        (TimeoutError("timed out"), "timeout"),
        (http.client.RemoteDisconnected("closed"), "reset"),
        (http.client.IncompleteRead(b""), "reset"),
        (BrokenPipeError(errno.EPIPE, "pipe"), "reset"),
        (ValueError("odd"), "other"),
    ],
)
def test_classify_names_the_cause(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind
    assert set(ERROR_MEANINGS) == set(ERROR_KINDS)


def test_4xx_is_its_own_kind() -> None:
    class Deny(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(403)

        def log_message(self, format: str, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Deny)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        res = run_load(f"http://127.0.0.1:{srv.server_address[1]}/", count=3, concurrency=1)
        assert res.errors["4xx"] == 3 and res.errors["other"] == 0, res.summary()
    finally:
        srv.shutdown()
        srv.server_close()
