"""The HAProxy testbed: a real haproxy, Runtime API, dynamic servers, traffic to a netns pod."""

from __future__ import annotations

import http.client
import os
import socket
from collections.abc import Iterator

import pytest

from tests.testbed.appproc import spawn_in_pod
from tests.testbed.haproxy import HAProxy, haproxy_version, supports_dynamic_servers
from tests.testbed.netns import NetnsPool

pytestmark = [
    pytest.mark.haproxy,
    pytest.mark.skipif(
        not supports_dynamic_servers(),
        reason=f"needs haproxy >= 2.4 for dynamic servers (found {haproxy_version()})",
    ),
    pytest.mark.timeout(60),
]


def get(port: int, path: str = "/") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


@pytest.fixture
def pool() -> Iterator[NetnsPool]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    p = NetnsPool(prefix="tha")
    try:
        yield p
    finally:
        p.close()


def test_version_is_parsed() -> None:
    v = haproxy_version()
    assert v is not None and v >= (2, 4, 0)


def test_start_runtime_and_cleanup() -> None:
    lb = HAProxy(["be", "other"], tcp_runtime=True)
    tmp = lb.config_path.parent
    with lb:
        assert lb.running
        assert "Pid:" in lb.runtime("show info")
        assert "Pid:" in lb.runtime("show info", tcp=True)
        assert "expose-fd listeners" in lb.config()
        # Empty backend: the frontend answers 503.
        assert get(lb.port)[0] == 503
        assert lb.servers("be") == {}
        pid = lb.proc.pid if lb.proc else 0
    assert not lb.running
    assert not tmp.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_cleanup_on_failure() -> None:
    lb = HAProxy()
    with pytest.raises(ZeroDivisionError), lb:
        proc = lb.proc
        _ = 1 / 0
    assert proc is not None and proc.poll() is not None
    assert not lb.config_path.exists()


def test_dynamic_server_traffic_reaches_pod(pool: NetnsPool) -> None:
    pod = pool.add_veth()
    spawn_in_pod(pod, 8080, "pod-a")
    with HAProxy(["be"], server_options="check inter 200ms fall 2 rise 1") as lb:
        out = lb.runtime(f"add server be/s1 {pod.ip}:8080 check inter 200ms fall 2 rise 1")
        assert "New server registered" in out
        lb.runtime("enable health be/s1")
        lb.runtime("enable server be/s1")
        lb.wait_status("be", "s1", "UP", timeout=5)
        assert get(lb.port) == (200, "pod-a")
        assert lb.servers("be")["s1"]["addr"] == f"{pod.ip}:8080"


def test_health_check_marks_dead_server_down_and_restart(pool: NetnsPool) -> None:
    pods = pool.add_many_veth(2)
    procs = [spawn_in_pod(p, 8080, f"pod-{i}") for i, p in enumerate(pods)]
    with HAProxy(server_options="check inter 200ms fall 2 rise 1") as lb:
        for i, p in enumerate(pods):
            lb.add_server("be", f"s{i}", p.ip, 8080)
        for i in range(2):
            lb.wait_status("be", f"s{i}", "UP", timeout=5)
        assert {get(lb.port)[1] for _ in range(4)} == {"pod-0", "pod-1"}
        procs[1].kill()
        procs[1].wait()
        lb.wait_status("be", "s1", "DOWN", timeout=5)
        assert {get(lb.port)[1] for _ in range(4)} == {"pod-0"}
        lb.del_server("be", "s1")
        assert set(lb.servers("be")) == {"s0"}

        port = lb.port
        lb.restart()  # same ports, servers gone
        assert lb.port == port
        assert lb.servers("be") == {}
        assert get(port)[0] == 503


def test_frontend_port_given() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with HAProxy(frontends={"a": port, "b": 0}, backends=["a", "b"]) as lb:
        assert lb.ports["a"] == port
        assert get(lb.ports["b"])[0] == 503
