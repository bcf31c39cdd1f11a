"""The lean netlink decoder against messages encoded by pyroute2 (an independent encoder).

IPVLAN and ENI links cannot be created on the development kernel, so their classification is
pinned here from netlink attributes; ``tests/integration/test_inspect.py`` has the real thing.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from agent.datapath import decode as d
from agent.datapath import pyroute2_decode as p
from agent.datapath.inspector import build_interfaces, build_tcp, classify
from agent.datapath.netlink import RawDump
from agent.model import LinkKind


def encode_link(
    index: int,
    name: str,
    kind: str | None = None,
    data: list[tuple[str, Any]] | None = None,
    *,
    ifi_type: int = 1,
    link: int | None = None,
    netnsid: int | None = None,
    operstate: str = "UP",
) -> memoryview:
    msg = ifinfmsg()
    msg["index"] = index
    msg["ifi_type"] = ifi_type
    msg["flags"] = 0x10043
    attrs: list[tuple[str, Any]] = [
        ("IFLA_IFNAME", name),
        ("IFLA_MTU", 1500),
        ("IFLA_ADDRESS", f"02:00:00:00:00:{index:02x}"),
        ("IFLA_OPERSTATE", operstate),
    ]
    if link is not None:
        attrs.append(("IFLA_LINK", link))
    if netnsid is not None:
        attrs.append(("IFLA_LINK_NETNSID", netnsid))
    if kind is not None:
        info: list[tuple[str, Any]] = [("IFLA_INFO_KIND", kind)]
        if data:
            info.append(("IFLA_INFO_DATA", {"attrs": data}))
        attrs.append(("IFLA_LINKINFO", {"attrs": info}))
    msg["attrs"] = attrs
    msg.encode()
    return memoryview(bytes(msg.data))[d.NLMSG_HDR.size :]


def encode_addr(index: int, family: int, address: str, prefixlen: int) -> memoryview:
    msg = ifaddrmsg()
    msg["index"] = index
    msg["family"] = family
    msg["prefixlen"] = prefixlen
    attrs = [("IFA_ADDRESS", address)]
    if family == socket.AF_INET:
        attrs.append(("IFA_LOCAL", address))
    msg["attrs"] = attrs
    msg.encode()
    return memoryview(bytes(msg.data))[d.NLMSG_HDR.size :]


@pytest.mark.parametrize(
    ("kind", "data", "ifi_type", "expected_kind", "expected_mode"),
    [
        ("veth", None, 1, LinkKind.VETH, None),
        ("ipvlan", [("IFLA_IPVLAN_MODE", 0)], 1, LinkKind.IPVLAN, "l2"),
        ("ipvlan", [("IFLA_IPVLAN_MODE", 1)], 1, LinkKind.IPVLAN, "l3"),
        ("ipvlan", [("IFLA_IPVLAN_MODE", 2)], 1, LinkKind.IPVLAN, "l3s"),
        ("macvlan", [("IFLA_MACVLAN_MODE", 4)], 1, LinkKind.MACVLAN, "bridge"),
        ("macvlan", [("IFLA_MACVLAN_MODE", 8)], 1, LinkKind.MACVLAN, "passthru"),
        (None, None, 1, LinkKind.ENI, None),  # a NIC moved into the pod: no link kind
        (None, None, 772, LinkKind.LOOPBACK, None),
        ("bridge", None, 1, LinkKind.OTHER, None),
        (None, None, 65534, LinkKind.OTHER, None),  # ARPHRD_NONE without a kind
    ],
)
def test_classify_from_attributes(
    kind: str | None,
    data: list[tuple[str, Any]] | None,
    ifi_type: int,
    expected_kind: LinkKind,
    expected_mode: str | None,
) -> None:
    payload = encode_link(3, "eth0", kind, data, ifi_type=ifi_type)
    raw = d.decode_link(payload)
    assert classify(raw) is expected_kind
    assert raw.info_mode == expected_mode
    assert raw == p.decode_link(payload)  # both decoders agree


def test_link_basics_and_stats_are_64_bit() -> None:
    msg = ifinfmsg()
    msg["index"] = 7
    msg["ifi_type"] = 1
    big = 2**40 + 5
    stats = dict.fromkeys(
        [
            "rx_packets",
            "tx_packets",
            "rx_bytes",
            "tx_bytes",
            "rx_errors",
            "tx_errors",
            "rx_dropped",
            "tx_dropped",
            "multicast",
            "collisions",
            "rx_length_errors",
            "rx_over_errors",
            "rx_crc_errors",
            "rx_frame_errors",
            "rx_fifo_errors",
            "rx_missed_errors",
            "tx_aborted_errors",
            "tx_carrier_errors",
            "tx_fifo_errors",
            "tx_heartbeat_errors",
            "tx_window_errors",
            "rx_compressed",
            "tx_compressed",
        ],
        0,
    )
    stats["rx_bytes"] = big
    stats["tx_dropped"] = 3
    msg["attrs"] = [("IFLA_IFNAME", "eni7"), ("IFLA_MTU", 9001), ("IFLA_STATS64", stats)]
    msg.encode()
    payload = memoryview(bytes(msg.data))[d.NLMSG_HDR.size :]
    raw = d.decode_link(payload)
    assert raw.name == "eni7"
    assert raw.mtu == 9001
    assert raw.stats[2] == big
    assert raw.stats[7] == 3
    assert raw == p.decode_link(payload)


def test_veth_peer_and_ipvlan_parent_resolved_in_host_namespace() -> None:
    host_links = {
        2: d.decode_link(encode_link(2, "ens5")),
        41: d.decode_link(encode_link(41, "cali1234", "veth", link=2, netnsid=5)),
    }
    raw = RawDump(
        links=[
            (d.RTM_NEWLINK, encode_link(1, "lo", ifi_type=772)),
            (d.RTM_NEWLINK, encode_link(2, "eth0", "veth", link=41, netnsid=0)),
            (
                d.RTM_NEWLINK,
                encode_link(3, "ipv0", "ipvlan", [("IFLA_IPVLAN_MODE", 1)], link=2, netnsid=0),
            ),
            (d.RTM_NEWLINK, encode_link(4, "other0", "veth", link=9, netnsid=7)),
        ],
        addrs=[
            (d.RTM_NEWADDR, encode_addr(2, socket.AF_INET6, "fd00::5", 128)),
            (d.RTM_NEWADDR, encode_addr(2, socket.AF_INET, "10.1.2.3", 32)),
        ],
        socks=[],
        host_nsid=0,
    )
    lo, eth0, ipv0, other = build_interfaces(raw, host_links)
    assert lo.kind is LinkKind.LOOPBACK and lo.peer is None
    assert eth0.peer is not None and (eth0.peer.name, eth0.peer.ifindex) == ("cali1234", 41)
    assert eth0.addresses == ("10.1.2.3/32", "fd00::5/128")  # IPv4 first
    assert ipv0.kind is LinkKind.IPVLAN and ipv0.mode == "l3"
    assert ipv0.parent is not None and ipv0.parent.name == "ens5"
    # A peer in a namespace other than the host: index known, name not.
    assert other.peer is not None and (other.peer.name, other.peer.ifindex) == (None, 9)


def _diag(family: int, state: int, src: str, sport: int, dst: str, dport: int) -> memoryview:
    alen = 4 if family == socket.AF_INET else 16
    sock_id = d.INET_DIAG_SOCKID.pack(
        sport,
        dport,
        socket.inet_pton(family, src).ljust(16, b"\0")[:16] if alen else b"",
        socket.inet_pton(family, dst).ljust(16, b"\0")[:16],
        0,
        b"\0" * 8,
    )
    body = d.INET_DIAG_MSG.pack(family, state, 0, 0) + sock_id + struct.pack("=5I", 0, 0, 0, 0, 99)
    return memoryview(body)


def test_tcp_counts_established_per_listening_port() -> None:
    a4, a6 = socket.AF_INET, socket.AF_INET6
    L, E = d.TCP_LISTEN, d.TCP_ESTABLISHED
    socks = [
        _diag(a4, L, "0.0.0.0", 8080, "0.0.0.0", 0),
        _diag(a6, L, "::", 9090, "::", 0),
        _diag(a4, E, "10.0.0.5", 8080, "10.0.0.9", 40001),
        _diag(a4, E, "10.0.0.5", 8080, "10.0.0.9", 40002),
        _diag(a6, E, "fd00::5", 9090, "fd00::9", 40003),
        _diag(a4, E, "10.0.0.5", 51000, "10.0.0.1", 443),  # outbound
    ]
    raw = RawDump(
        links=[], addrs=[], socks=[(d.SOCK_DIAG_BY_FAMILY, s) for s in socks], host_nsid=None
    )
    tcp = build_tcp(raw)
    assert [(s.address, s.port) for s in tcp.listening] == [("0.0.0.0", 8080), ("::", 9090)]
    assert tcp.established == {8080: 2, 9090: 1}
    assert tcp.outbound == 1
    for s in socks:
        assert d.decode_sock(s) == p.decode_sock(s)


def test_messages_stops_on_truncated_input() -> None:
    good = d.request(d.NLMSG_DONE, 0, b"\0\0\0\0", 7)
    truncated = d.NLMSG_HDR.pack(100, 16, 0, 8, 0) + b"\0" * 10
    out = list(d.messages(good + truncated))
    assert [(t, seq) for t, _f, seq, _p in out] == [(d.NLMSG_DONE, 7)]
