"""Lean decoders for the few netlink messages the inspector reads.

Pure functions from raw netlink bytes to plain records. They decode only the attributes podlb
uses, which makes a full scan about ten times cheaper than decoding every attribute with
pyroute2's generic marshal (see ``bench/inspect.py``). ``pyroute2_decode`` decodes the same
bytes with pyroute2; the tests check both agree on real dumps and recorded fixtures.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

# netlink header and control messages
NLMSG_HDR = struct.Struct("=IHHII")
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300

# rtnetlink
RTM_GETLINK = 18
RTM_NEWLINK = 16
RTM_GETADDR = 22
RTM_NEWADDR = 20
RTM_NEWNSID = 88
RTM_GETNSID = 90
IFINFOMSG = struct.Struct("=BxHiII")
IFADDRMSG = struct.Struct("=BBBBI")
RTGENMSG = struct.Struct("=Bxxx")

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINK = 5
IFLA_OPERSTATE = 16
IFLA_LINKINFO = 18
IFLA_STATS64 = 23
IFLA_LINK_NETNSID = 37
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_MACVLAN_MODE = 1
IFLA_IPVLAN_MODE = 1
IFLA_TUN_TYPE = 3
IFA_ADDRESS = 1
IFA_LOCAL = 2
NETNSA_NSID = 1
NETNSA_FD = 3

ARPHRD_LOOPBACK = 772
STATS64 = struct.Struct("=8Q")  # the first 8 counters of rtnl_link_stats64

OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")
MACVLAN_MODES = {1: "private", 2: "vepa", 4: "bridge", 8: "passthru", 16: "source"}
IPVLAN_MODES = {0: "l2", 1: "l3", 2: "l3s"}
TUN_TYPES = {1: "tun", 2: "tap"}

# sock_diag
SOCK_DIAG_BY_FAMILY = 20
TCPDIAG_GETSOCK = 18  # the older inet_diag request: both address families in one dump
INET_DIAG_REQ_V2 = struct.Struct("=BBBxI")
INET_DIAG_SOCKID = struct.Struct(">HH16s16sI8s")  # ports big-endian; if/cookie opaque here
INET_DIAG_MSG = struct.Struct("=BBBB")
TCP_ESTABLISHED = 1
TCP_LISTEN = 10
INET_DIAG_INFO = 2  # response attribute: struct tcp_info
EXT_INFO = 1 << (INET_DIAG_INFO - 1)  # request bit asking for it
INET_DIAG_MSG_SIZE = 72
# struct tcp_info (linux/tcp.h): offsets of the two fields the drain reads.
TCPI_LAST_DATA_RECV = 52  # __u32, ms since the last data was received
TCPI_BYTES_RECEIVED = 128  # __u64 (Linux 4.6+)


@dataclass(frozen=True, slots=True)
class RawLink:
    ifindex: int
    ifi_type: int
    flags: int
    name: str
    mac: str | None
    mtu: int
    operstate: str
    link: int  # IFLA_LINK: peer / parent ifindex (0 = none)
    link_netnsid: int | None  # IFLA_LINK_NETNSID: where ``link`` lives (None = here)
    info_kind: str | None
    info_mode: str | None
    stats: tuple[
        int, ...
    ]  # rx_packets, tx_packets, rx_bytes, tx_bytes, rx_err, tx_err, rx_drop, tx_drop


@dataclass(frozen=True, slots=True)
class RawAddr:
    ifindex: int
    family: int
    prefixlen: int
    address: str


@dataclass(frozen=True, slots=True)
class RawSock:
    family: int
    state: int
    src: str
    sport: int
    dst: str
    dport: int
    inode: int


def request(msg_type: int, flags: int, body: bytes, seq: int) -> bytes:
    """A netlink request message (pid 0: the kernel fills in our port)."""
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), msg_type, flags, seq, 0) + body


def link_dump_request(seq: int) -> bytes:
    return request(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, IFINFOMSG.pack(0, 0, 0, 0, 0), seq)


def addr_dump_request(seq: int) -> bytes:
    return request(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, IFADDRMSG.pack(0, 0, 0, 0, 0), seq)


def nsid_request(fd: int, seq: int) -> bytes:
    """RTM_GETNSID: the id the receiving namespace gives the namespace behind ``fd``."""
    attr = struct.pack("=HHI", 8, NETNSA_FD, fd)
    return request(RTM_GETNSID, NLM_F_REQUEST, RTGENMSG.pack(socket.AF_UNSPEC) + attr, seq)


def tcp_diag_compat_request(states: int, seq: int, ext: int = 0) -> bytes:
    """TCPDIAG_GETSOCK (``struct inet_diag_req``): IPv4 and IPv6 TCP sockets in one dump.

    The kernel's TCP socket dump walks the whole established hash table (shared by every
    namespace unless ``net.ipv4.tcp_child_ehash_entries`` is set), once per request: one
    request for both families halves the cost of a scan.
    """
    body = INET_DIAG_MSG.pack(socket.AF_UNSPEC, 0, 0, ext)
    body += INET_DIAG_SOCKID.pack(0, 0, b"\0" * 16, b"\0" * 16, 0, b"\xff" * 8)
    body += struct.pack("=II", states, 0)
    return request(TCPDIAG_GETSOCK, NLM_F_REQUEST | NLM_F_DUMP, body, seq)


def tcp_diag_request(family: int, states: int, seq: int, ext: int = 0) -> bytes:
    body = INET_DIAG_REQ_V2.pack(family, socket.IPPROTO_TCP, ext, states)
    body += INET_DIAG_SOCKID.pack(0, 0, b"\0" * 16, b"\0" * 16, 0, b"\xff" * 8)
    return request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, body, seq)


def messages(data: bytes) -> Iterator[tuple[int, int, int, memoryview]]:
    """Split a buffer into (type, flags, seq, payload) tuples; a short message ends the walk."""
    view = memoryview(data)
    off = 0
    end = len(data)
    while off + NLMSG_HDR.size <= end:
        length, mtype, flags, seq, _pid = NLMSG_HDR.unpack_from(view, off)
        if length < NLMSG_HDR.size or off + length > end:
            break
        yield mtype, flags, seq, view[off + NLMSG_HDR.size : off + length]
        off += (length + 3) & ~3


def attrs(view: memoryview, offset: int = 0) -> Iterator[tuple[int, memoryview]]:
    """Walk netlink attributes (type without the NESTED / BYTEORDER bits, payload)."""
    end = len(view)
    off = offset
    while off + 4 <= end:
        alen, atype = struct.unpack_from("=HH", view, off)
        if alen < 4 or off + alen > end:
            break
        yield atype & 0x3FFF, view[off + 4 : off + alen]
        off += (alen + 3) & ~3


def _cstr(view: memoryview) -> str:
    raw = bytes(view)
    nul = raw.find(b"\0")
    return (raw if nul < 0 else raw[:nul]).decode("utf-8", "replace")


def _mac(view: memoryview) -> str:
    return ":".join(f"{b:02x}" for b in bytes(view))


def _u32(view: memoryview) -> int:
    return int(struct.unpack_from("=I", view)[0])


_NLA = struct.Struct("=HH")


def decode_link(payload: memoryview) -> RawLink:
    _family, ifi_type, ifindex, flags, _change = IFINFOMSG.unpack_from(payload)
    name = ""
    mac: str | None = None
    mtu = 0
    operstate = "unknown"
    link = 0
    netnsid: int | None = None
    kind: str | None = None
    mode: str | None = None
    stats: tuple[int, ...] = (0,) * 8
    info_data: memoryview | None = None
    # The attribute walk is inlined (not ``attrs()``): it is the hot loop of a scan.
    off = IFINFOMSG.size
    end = len(payload)
    unpack = _NLA.unpack_from
    while off + 4 <= end:
        alen, atype = unpack(payload, off)
        if alen < 4 or off + alen > end:
            break
        atype &= 0x3FFF
        if atype in _LINK_ATTRS:
            val = payload[off + 4 : off + alen]
            if atype == IFLA_IFNAME:
                name = _cstr(val)
            elif atype == IFLA_ADDRESS:
                mac = _mac(val)
            elif atype == IFLA_MTU:
                mtu = _u32(val)
            elif atype == IFLA_OPERSTATE:
                code = val[0]
                operstate = OPERSTATES[code] if code < len(OPERSTATES) else "unknown"
            elif atype == IFLA_LINK:
                link = _u32(val)
            elif atype == IFLA_LINK_NETNSID:
                netnsid = int(struct.unpack_from("=i", val)[0])
            elif atype == IFLA_STATS64:
                stats = STATS64.unpack_from(val)
            else:  # IFLA_LINKINFO
                for itype, ival in attrs(val):
                    if itype == IFLA_INFO_KIND:
                        kind = _cstr(ival)
                    elif itype == IFLA_INFO_DATA:
                        info_data = ival
        off += (alen + 3) & ~3
    if info_data is not None and kind is not None:
        mode = _info_mode(kind, info_data)
    return RawLink(
        ifindex=ifindex,
        ifi_type=ifi_type,
        flags=flags,
        name=name,
        mac=mac,
        mtu=mtu,
        operstate=operstate,
        link=link if link != ifindex else 0,
        link_netnsid=netnsid,
        info_kind=kind,
        info_mode=mode,
        stats=stats,
    )


def decode_link_name(item: tuple[int, memoryview]) -> RawLink | None:
    """Only ifindex and name of a link (what is needed of the host's links)."""
    mtype, payload = item
    if mtype != RTM_NEWLINK:
        return None
    _family, ifi_type, ifindex, flags, _change = IFINFOMSG.unpack_from(payload)
    for atype, val in attrs(payload, IFINFOMSG.size):
        if atype == IFLA_IFNAME:
            name = _cstr(val)
            break
    else:
        name = ""
    return RawLink(ifindex, ifi_type, flags, name, None, 0, "unknown", 0, None, None, None, ())


_LINK_ATTRS = frozenset(
    {
        IFLA_ADDRESS,
        IFLA_IFNAME,
        IFLA_MTU,
        IFLA_LINK,
        IFLA_OPERSTATE,
        IFLA_LINKINFO,
        IFLA_STATS64,
        IFLA_LINK_NETNSID,
    }
)


def _info_mode(kind: str, data: memoryview) -> str | None:
    for atype, val in attrs(data):
        if kind == "macvlan" and atype == IFLA_MACVLAN_MODE:
            code = _u32(val)
            return MACVLAN_MODES.get(code, str(code))
        if kind == "ipvlan" and atype == IFLA_IPVLAN_MODE:
            code = int(struct.unpack_from("=H", val)[0])
            return IPVLAN_MODES.get(code, str(code))
        if kind == "tun" and atype == IFLA_TUN_TYPE:
            return TUN_TYPES.get(val[0], str(val[0]))
    return None


def decode_addr(payload: memoryview) -> RawAddr | None:
    family, prefixlen, _flags, _scope, ifindex = IFADDRMSG.unpack_from(payload)
    address: str | None = None
    local: str | None = None
    for atype, val in attrs(payload, IFADDRMSG.size):
        if atype == IFA_ADDRESS:
            address = socket.inet_ntop(family, bytes(val))
        elif atype == IFA_LOCAL:
            local = socket.inet_ntop(family, bytes(val))
    # IPv4: IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on p2p links).
    chosen = local or address
    if chosen is None:
        return None
    return RawAddr(ifindex=ifindex, family=family, prefixlen=prefixlen, address=chosen)


def decode_nsid(payload: memoryview) -> int | None:
    for atype, val in attrs(payload, RTGENMSG.size):
        if atype == NETNSA_NSID:
            nsid = int(struct.unpack_from("=i", val)[0])
            return None if nsid < 0 else nsid
    return None


def decode_sock(payload: memoryview) -> RawSock:
    family, state, _timer, _retrans = INET_DIAG_MSG.unpack_from(payload)
    sport, dport, src, dst, _if, _cookie = INET_DIAG_SOCKID.unpack_from(payload, 4)
    inode = int(struct.unpack_from("=I", payload, 4 + INET_DIAG_SOCKID.size + 16)[0])
    alen = 4 if family == socket.AF_INET else 16
    return RawSock(
        family=family,
        state=state,
        src=socket.inet_ntop(family, src[:alen]),
        sport=sport,
        dst=socket.inet_ntop(family, dst[:alen]),
        dport=dport,
        inode=inode,
    )


@dataclass(frozen=True, slots=True)
class SockActivity:
    """An established socket and how recently its peer sent data (from tcp_info)."""

    sport: int
    dst: str
    dport: int
    inode: int
    idle_ms: int  # tcpi_last_data_recv
    bytes_received: int | None


def decode_sock_activity(payload: memoryview) -> SockActivity:
    sock = decode_sock(payload)
    idle_ms = 0
    received: int | None = None
    for atype, val in attrs(payload, INET_DIAG_MSG_SIZE):
        if atype == INET_DIAG_INFO:
            if len(val) >= TCPI_LAST_DATA_RECV + 4:
                idle_ms = int(struct.unpack_from("=I", val, TCPI_LAST_DATA_RECV)[0])
            if len(val) >= TCPI_BYTES_RECEIVED + 8:
                received = int(struct.unpack_from("=Q", val, TCPI_BYTES_RECEIVED)[0])
    return SockActivity(sock.sport, sock.dst, sock.dport, sock.inode, idle_ms, received)
