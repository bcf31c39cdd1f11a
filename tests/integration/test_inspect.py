"""The inspector on real namespaces, links and sockets of this machine."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.datapath import Inspector, InspectorConfig
from agent.datapath import inspector as inspector_mod
from agent.datapath.netlink import NetnsConnection
from agent.errors import DumpInterrupted, NetlinkError
from agent.model import LinkKind, NetnsInfo, Snapshot
from tests.testbed.netns import NetnsPool, Pod, ip, socket_in_netns

pytestmark = pytest.mark.netns


def scan(**kwargs: object) -> Snapshot:
    return Inspector(InspectorConfig(**kwargs)).scan()  # type: ignore[arg-type]


def ns_of(snap: Snapshot, pod: Pod) -> NetnsInfo:
    for ns in snap.namespaces:
        if pod.path in ns.paths or f"/var{pod.path}" in ns.paths:
            return ns
    raise AssertionError(f"{pod.name} not found in scan")


@pytest.fixture
def server(netns_pool: NetnsPool) -> Iterator[tuple[Pod, socket.socket]]:
    pod = netns_pool.add_veth()
    srv = socket_in_netns(pod.name, socket.AF_INET, socket.SOCK_STREAM)
    srv.bind((pod.ip, 8080))
    srv.listen(64)
    try:
        yield pod, srv
    finally:
        srv.close()


def test_veth_pod_interfaces_peer_and_addresses(netns_pool: NetnsPool) -> None:
    pod = netns_pool.add_veth()
    ns = ns_of(scan(), pod)
    eth0 = next(i for i in ns.interfaces if i.name == "eth0")
    assert eth0.kind is LinkKind.VETH
    assert eth0.state == "up" and eth0.is_up
    assert f"{pod.ip}/32" in eth0.addresses
    assert eth0.peer is not None and eth0.peer.name == pod.host_if
    host_index = int(Path(f"/sys/class/net/{pod.host_if}/ifindex").read_text())
    assert eth0.peer.ifindex == host_index
    assert eth0.mtu == 1500 and eth0.mac and len(eth0.mac) == 17
    assert ns.pod is not None and ns.pod.ips == (pod.ip,) and ns.pod.uid is None
    lo = next(i for i in ns.interfaces if i.name == "lo")
    assert lo.kind is LinkKind.LOOPBACK


def test_macvlan_and_tap_pods(netns_pool: NetnsPool) -> None:
    parent = netns_pool.add_parent()
    mac = netns_pool.add_macvlan(parent, mode="bridge")
    tap = netns_pool.add_tap()
    snap = scan()
    m = next(i for i in ns_of(snap, mac).interfaces if i.name == "eth0")
    assert (m.kind, m.mode) == (LinkKind.MACVLAN, "bridge")
    assert m.parent is not None and m.parent.name == parent
    t = next(i for i in ns_of(snap, tap).interfaces if i.name == "eth0")
    assert (t.kind, t.mode) == (LinkKind.TUN, "tap")
    assert t.peer is None and t.parent is None


def test_link_down_is_reported(netns_pool: NetnsPool) -> None:
    pod = netns_pool.add_veth()
    ip("-n", pod.name, "link", "set", "eth0", "down")
    eth0 = next(i for i in ns_of(scan(), pod).interfaces if i.name == "eth0")
    assert eth0.state == "down" and not eth0.is_up


def test_listening_and_established_counts_are_exact(server: tuple[Pod, socket.socket]) -> None:
    pod, srv = server
    clients = [socket.create_connection((pod.ip, 8080), timeout=2) for _ in range(5)]
    accepted = [srv.accept()[0] for _ in clients]
    try:
        ns = ns_of(scan(), pod)
        assert [(s.address, s.port) for s in ns.tcp.listening] == [(pod.ip, 8080)]
        assert ns.tcp.established == {8080: 5}
        for conn in accepted[:3]:
            conn.close()
        for c in clients[:3]:
            c.close()
        ns = ns_of(scan(), pod)
        assert ns.tcp.established == {8080: 2}
    finally:
        for s in clients + accepted:
            s.close()


def test_ipv6_listener(netns_pool: NetnsPool) -> None:
    pod = netns_pool.add_veth()
    srv = socket_in_netns(pod.name, socket.AF_INET6, socket.SOCK_STREAM)
    try:
        srv.bind(("::", 9090))
        srv.listen()
        ns = ns_of(scan(), pod)
        assert ("::", 9090) in [(s.address, s.port) for s in ns.tcp.listening]
    finally:
        srv.close()


def test_counters_move_with_traffic(server: tuple[Pod, socket.socket]) -> None:
    pod, srv = server
    before = next(i for i in ns_of(scan(), pod).interfaces if i.name == "eth0").stats
    with socket.create_connection((pod.ip, 8080), timeout=2) as c:
        conn, _ = srv.accept()
        with conn:
            c.sendall(b"x" * 100_000)
            got = 0
            while got < 100_000:
                got += len(conn.recv(65536))
    after = next(i for i in ns_of(scan(), pod).interfaces if i.name == "eth0").stats
    assert after.rx_bytes - before.rx_bytes >= 100_000
    assert after.rx_packets > before.rx_packets and after.tx_packets > before.tx_packets


def test_namespace_deleted_during_scan_is_skipped_and_counted(
    netns_pool: NetnsPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep, doomed = netns_pool.add_many_veth(2)
    real_discover = inspector_mod.discover

    def discover_then_delete(*args: object, **kwargs: object) -> object:
        found = real_discover(*args, **kwargs)  # type: ignore[arg-type]
        netns_pool.remove(doomed.name)  # gone after discovery, before it is opened
        return found

    monkeypatch.setattr(inspector_mod, "discover", discover_then_delete)
    snap = scan()
    assert snap.skipped.get("vanished", 0) >= 1
    assert ns_of(snap, keep).pod is not None
    assert all(doomed.path not in ns.paths for ns in snap.namespaces)


def test_pod_uid_from_cgroup_and_proc_root(netns_pool: NetnsPool, tmp_path: Path) -> None:
    """A fixture /proc: one pid whose ns/net leads to a real pod namespace, in a kubepods cgroup."""
    pod = netns_pool.add_veth()
    proc = tmp_path / "proc"
    (proc / "4242" / "ns").mkdir(parents=True)
    (proc / "4242" / "ns" / "net").symlink_to(pod.path)
    uid = "11111111-2222-3333-4444-555555555555"
    (proc / "4242" / "cgroup").write_text(
        f"0::/kubepods.slice/kubepods-pod{uid.replace('-', '_')}.slice/cri-containerd-x.scope\n"
    )
    snap = scan(proc_root=str(proc), netns_dirs=())
    [ns] = [n for n in snap.namespaces if n.pids == (4242,)]
    assert ns.pod is not None and ns.pod.uid == uid and ns.pod.ips == (pod.ip,)
    assert ns.path == str(proc / "4242" / "ns" / "net")


def test_not_a_namespace_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "stale").write_text("")  # a netns file whose bind mount is gone
    snap = scan(netns_dirs=(str(tmp_path),))
    assert snap.skipped.get("not_a_namespace") == 1


def test_host_namespace_only_when_asked() -> None:
    host = os.stat("/proc/self/ns/net").st_ino
    assert all(ns.inode != host for ns in scan().namespaces)
    assert any(ns.inode == host for ns in scan(include_host=True).namespaces)


def test_both_decoders_agree_on_real_namespaces(server: tuple[Pod, socket.socket]) -> None:
    pod, _srv = server
    fast = ns_of(scan(decoder="fast"), pod)
    ref = ns_of(scan(decoder="pyroute2"), pod)
    strip = [
        (i.name, i.kind, i.mode, i.mac, i.mtu, i.state, i.addresses, i.peer)
        for i in fast.interfaces
    ]
    assert strip == [
        (i.name, i.kind, i.mode, i.mac, i.mtu, i.state, i.addresses, i.peer) for i in ref.interfaces
    ]
    assert fast.tcp == ref.tcp


def ipvlan_supported() -> bool:
    """Whether this kernel can create an ipvlan link (the probe link is removed at once)."""
    if os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["ip", "link", "add", "plipvlchk", "link", "lo", "type", "ipvlan"], capture_output=True
    )
    subprocess.run(["ip", "link", "del", "plipvlchk"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(
    not ipvlan_supported(),
    reason="this kernel cannot create ipvlan links (`ip link add ... type ipvlan` fails)",
)
def test_real_ipvlan(netns_pool: NetnsPool) -> None:  # pragma: no cover - kernel dependent
    parent = netns_pool.add_parent()
    pod = netns_pool.add_veth()
    ip("link", "add", f"{netns_pool.tag}i", "link", parent, "type", "ipvlan", "mode", "l3")
    ip("link", "set", f"{netns_pool.tag}i", "netns", pod.name)
    iface = next(i for i in ns_of(scan(), pod).interfaces if i.name == f"{netns_pool.tag}i")
    assert (iface.kind, iface.mode) == (LinkKind.IPVLAN, "l3")
    assert iface.parent is not None and iface.parent.name == parent


# -- the command -------------------------------------------------------------------------


def run_cli(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60, **kwargs
    )


def test_inspect_json_schema(server: tuple[Pod, socket.socket]) -> None:
    pod, _ = server
    out = run_cli("inspect", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["schema"] == "podlb.io/inspect/v1"
    assert set(doc) >= {"host", "scanned_at", "duration_ms", "skipped", "namespaces"}
    [ns] = [
        n for n in doc["namespaces"] if pod.path in n["paths"] or f"/var{pod.path}" in n["paths"]
    ]
    assert set(ns) >= {"inode", "path", "pids", "pod", "interfaces", "tcp"}
    eth0 = next(i for i in ns["interfaces"] if i["name"] == "eth0")
    assert set(eth0) == {
        "name", "ifindex", "kind", "mode", "mac", "mtu", "state",
        "addresses", "peer", "parent", "stats",
    }  # fmt: skip
    assert eth0["kind"] == "veth" and eth0["peer"]["name"] == pod.host_if
    assert set(eth0["stats"]) == {
        "rx_bytes", "tx_bytes", "rx_packets", "tx_packets",
        "rx_errors", "tx_errors", "rx_dropped", "tx_dropped",
    }  # fmt: skip
    assert ns["tcp"]["listening"] == [{"address": pod.ip, "port": 8080}]
    assert ns["pod"] == {"uid": None, "ips": [pod.ip]}


def test_inspect_table(server: tuple[Pod, socket.socket]) -> None:
    pod, _ = server
    out = run_cli("inspect")
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if pod.name in x)
    assert "veth" in line and pod.host_if in line and "listen 8080(0)" in line


def test_inspect_without_privileges_exits_2() -> None:
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         sys.executable, "-m", "agent", "inspect"],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert out.returncode == 2
    assert "CAP_SYS_ADMIN" in out.stderr and "CAP_SYS_PTRACE" not in out.stderr


def test_version_and_help() -> None:
    out = run_cli("version", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["version"]
    for cmd in ("version", "inspect"):
        helped = run_cli(cmd, "--help")
        assert helped.returncode == 0 and "usage: podlb-agent" in helped.stdout


def test_transient_netlink_error_keeps_the_last_good_view(
    netns_pool: NetnsPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 6: a netlink error or an interrupted dump is no proof that a namespace is gone:
    the last good view stays (and the error is counted); only a namespace whose bind mount and
    /proc entries are gone drops out."""
    pod = netns_pool.add_veth()
    failing: list[Exception] = []
    real_read_all = NetnsConnection.read_all

    def read_all(self: NetnsConnection, host_fd: int | None) -> object:
        if failing and host_fd is not None:  # every pod namespace, not the host's
            raise failing[0]
        return real_read_all(self, host_fd)

    monkeypatch.setattr(NetnsConnection, "read_all", read_all)
    with Inspector(InspectorConfig()) as insp:
        good = ns_of(insp.scan(), pod)
        for exc in (NetlinkError(errno.ENOBUFS, "link dump"), DumpInterrupted("addr dump")):
            failing[:] = [exc]
            snap = insp.scan()
            kept = ns_of(snap, pod)
            assert (kept.interfaces, kept.tcp) == (good.interfaces, good.tcp)
            assert kept.inode in snap.stale
            assert sum(snap.errors.values()) >= 1, snap.errors
        assert set(snap.errors) == {"dump_interrupted"}
        failing.clear()
        assert ns_of(insp.scan(), pod).inode == good.inode  # read again for real
        failing[:] = [NetlinkError(errno.EIO, "link dump")]
        netns_pool.remove(pod.name)  # really gone: no bind mount, no process
        snap = insp.scan()
        assert all(pod.path not in ns.paths for ns in snap.namespaces)
