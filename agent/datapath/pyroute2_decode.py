"""The same records as :mod:`.decode`, decoded by pyroute2's generic netlink marshal.

This is the reference decoder: slower (it decodes every attribute), but maintained by the
pyroute2 project against the kernel headers. ``--netlink-decoder pyroute2`` selects it, the
tests check that both decoders agree on real dumps, and ``bench/inspect.py`` reports both.
"""

from __future__ import annotations

import socket
from typing import Any

from pyroute2.netlink.diag import inet_diag_msg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from . import decode as d

_STATS_ORDER = (
    "rx_packets",
    "tx_packets",
    "rx_bytes",
    "tx_bytes",
    "rx_errors",
    "tx_errors",
    "rx_dropped",
    "tx_dropped",
)


def _wrap(msg_type: int, payload: memoryview) -> bytes:
    return d.NLMSG_HDR.pack(d.NLMSG_HDR.size + len(payload), msg_type, 0, 0, 0) + bytes(payload)


def _decoded(cls: Any, msg_type: int, payload: memoryview) -> Any:
    msg = cls(_wrap(msg_type, payload))
    msg.decode()
    return msg


def decode_link(payload: memoryview) -> d.RawLink:
    msg = _decoded(ifinfmsg, d.RTM_NEWLINK, payload)
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    mode: str | None = None
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    if data is not None and not isinstance(data, (str, bytes)):
        if kind == "macvlan":
            raw_mode = data.get_attr("IFLA_MACVLAN_MODE")
            mode = raw_mode if isinstance(raw_mode, str) or raw_mode is None else None
            if isinstance(raw_mode, int):
                mode = d.MACVLAN_MODES.get(raw_mode, str(raw_mode))
        elif kind == "ipvlan":
            code = data.get_attr("IFLA_IPVLAN_MODE")
            mode = d.IPVLAN_MODES.get(code, str(code)) if code is not None else None
        elif kind == "tun":
            code = data.get_attr("IFLA_TUN_TYPE")
            mode = d.TUN_TYPES.get(code, str(code)) if code is not None else None
    stats64 = msg.get_attr("IFLA_STATS64")
    stats = tuple(int(stats64[k]) for k in _STATS_ORDER) if stats64 else (0,) * 8
    link = msg.get_attr("IFLA_LINK") or 0
    return d.RawLink(
        ifindex=msg["index"],
        ifi_type=msg["ifi_type"],
        flags=msg["flags"],
        name=msg.get_attr("IFLA_IFNAME") or "",
        mac=msg.get_attr("IFLA_ADDRESS"),
        mtu=msg.get_attr("IFLA_MTU") or 0,
        operstate=(msg.get_attr("IFLA_OPERSTATE") or "unknown").lower(),
        link=link if link != msg["index"] else 0,
        link_netnsid=msg.get_attr("IFLA_LINK_NETNSID"),
        info_kind=kind,
        info_mode=mode,
        stats=stats,
    )


def decode_addr(payload: memoryview) -> d.RawAddr | None:
    msg = _decoded(ifaddrmsg, d.RTM_NEWADDR, payload)
    chosen = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    if chosen is None:
        return None
    return d.RawAddr(msg["index"], msg["family"], msg["prefixlen"], chosen)


def decode_sock(payload: memoryview) -> d.RawSock:
    msg = _decoded(inet_diag_msg, d.SOCK_DIAG_BY_FAMILY, payload)
    family = msg["idiag_family"]
    return d.RawSock(
        family=family,
        state=msg["idiag_state"],
        src=_norm(family, msg["idiag_src"]),
        sport=msg["idiag_sport"],
        dst=_norm(family, msg["idiag_dst"]),
        dport=msg["idiag_dport"],
        inode=msg["idiag_inode"],
    )


def _norm(family: int, addr: str) -> str:
    return socket.inet_ntop(family, socket.inet_pton(family, addr))
