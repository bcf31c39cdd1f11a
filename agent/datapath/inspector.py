"""The datapath inspector: one full scan of every pod network namespace on this host."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType

from agent.errors import NamespaceGone, NetlinkError, TransientError
from agent.model import (
    Interface,
    LinkKind,
    LinkRef,
    LinkStats,
    ListeningSocket,
    NetnsInfo,
    PodHint,
    Snapshot,
    TcpState,
)

from . import decode as d
from .discovery import Candidate, classify_oserror, current_inode, discover, pod_uid
from .netlink import NetnsConnection, RawDump, inside

log = logging.getLogger(__name__)

DEFAULT_NETNS_DIRS = ("/var/run/netns", "/run/netns")

_KINDS = {
    "veth": LinkKind.VETH,
    "ipvlan": LinkKind.IPVLAN,
    "ipvtap": LinkKind.IPVLAN,
    "macvlan": LinkKind.MACVLAN,
    "macvtap": LinkKind.MACVLAN,
    "tun": LinkKind.TUN,
}
ARPHRD_ETHER = 1
MIN_PER_WORKER = 16  # below this many namespaces per thread, one thread is faster
_DIAG_TYPES = (d.SOCK_DIAG_BY_FAMILY, d.TCPDIAG_GETSOCK)


def classify(link: d.RawLink) -> LinkKind:
    """The kind of a link from its netlink attributes (pure; see tests/unit)."""
    if link.ifi_type == d.ARPHRD_LOOPBACK:
        return LinkKind.LOOPBACK
    if link.info_kind is None:
        # No rtnl link kind: a physical (or paravirtual) NIC; in a pod that is an ENI.
        return LinkKind.ENI if link.ifi_type == ARPHRD_ETHER else LinkKind.OTHER
    return _KINDS.get(link.info_kind, LinkKind.OTHER)


def _is_pod_address(ip: str) -> bool:
    """Not loopback, not link-local (cheap prefix checks first: this runs for every address)."""
    if ip.startswith(("127.", "169.254.", "fe80:")) or ip == "::1":
        return False
    addr = ipaddress.ip_address(ip)
    return not (addr.is_loopback or addr.is_link_local)


@dataclass(frozen=True, slots=True)
class Decoder:
    """Which functions turn raw netlink payloads into records."""

    name: str
    link: Callable[[memoryview], d.RawLink]
    addr: Callable[[memoryview], d.RawAddr | None]
    sock: Callable[[memoryview], d.RawSock]

    @classmethod
    def from_module(cls, name: str, module: ModuleType) -> Decoder:
        return cls(name, module.decode_link, module.decode_addr, module.decode_sock)


FAST = Decoder.from_module("fast", d)


def decoder_named(name: str) -> Decoder:
    """``fast`` (our lean decoder) or ``pyroute2`` (the reference decoder)."""
    if name == "fast":
        return FAST
    if name == "pyroute2":
        from . import pyroute2_decode

        return Decoder.from_module("pyroute2", pyroute2_decode)
    raise ValueError(f"unknown netlink decoder {name!r} (expected fast or pyroute2)")


def build_interfaces(
    raw: RawDump, host_links: dict[int, d.RawLink] | None, decoder: Decoder = FAST
) -> tuple[Interface, ...]:
    """Decode one namespace's dumps into interfaces (pure: no I/O)."""
    links = [decoder.link(p) for t, p in raw.links if t == d.RTM_NEWLINK]
    by_index = {link.ifindex: link for link in links}
    addrs: dict[int, list[d.RawAddr]] = {}
    for t, p in raw.addrs:
        if t != d.RTM_NEWADDR:
            continue
        addr = decoder.addr(p)
        if addr is not None:
            addrs.setdefault(addr.ifindex, []).append(addr)
    out: list[Interface] = []
    for link in sorted(links, key=lambda x: x.ifindex):
        kind = classify(link)
        ref = _resolve(link, by_index, raw.host_nsid, host_links)
        own = sorted(addrs.get(link.ifindex, []), key=lambda a: (a.family != socket.AF_INET,))
        s = link.stats
        out.append(
            Interface(
                name=link.name,
                ifindex=link.ifindex,
                kind=kind,
                mode=link.info_mode,
                mac=link.mac,
                mtu=link.mtu,
                state=link.operstate,
                addresses=tuple(f"{a.address}/{a.prefixlen}" for a in own),
                peer=ref if kind is LinkKind.VETH else None,
                parent=ref if kind in (LinkKind.IPVLAN, LinkKind.MACVLAN) else None,
                stats=LinkStats(
                    rx_packets=s[0],
                    tx_packets=s[1],
                    rx_bytes=s[2],
                    tx_bytes=s[3],
                    rx_errors=s[4],
                    tx_errors=s[5],
                    rx_dropped=s[6],
                    tx_dropped=s[7],
                ),
                flags=link.flags,
            )
        )
    return tuple(out)


def _resolve(
    link: d.RawLink,
    local: dict[int, d.RawLink],
    host_nsid: int | None,
    host_links: dict[int, d.RawLink] | None,
) -> LinkRef | None:
    """The peer / parent of ``link``: by name when it lives here or in the host namespace."""
    if not link.link:
        return None
    if link.link_netnsid is None:
        other = local.get(link.link)
        return LinkRef(other.name if other else None, link.link)
    if host_links is not None and host_nsid is not None and link.link_netnsid == host_nsid:
        other = host_links.get(link.link)
        return LinkRef(other.name if other else None, link.link)
    return LinkRef(None, link.link)  # in a namespace we cannot name from here


def build_tcp(raw: RawDump, decoder: Decoder = FAST) -> TcpState:
    socks = [decoder.sock(p) for t, p in raw.socks if t in _DIAG_TYPES]
    listening = sorted(
        {ListeningSocket(s.src, s.sport) for s in socks if s.state == d.TCP_LISTEN},
        key=lambda s: (s.port, s.address),
    )
    ports = {s.port for s in listening}
    established: Counter[int] = Counter()
    outbound = 0
    for s in socks:
        if s.state != d.TCP_ESTABLISHED:
            continue
        if s.sport in ports:
            established[s.sport] += 1
        else:
            outbound += 1
    return TcpState(tuple(listening), dict(sorted(established.items())), outbound)


@dataclass(frozen=True, slots=True)
class InspectorConfig:
    proc_root: str = "/proc"
    netns_dirs: Sequence[str] = DEFAULT_NETNS_DIRS
    include_host: bool = False
    decoder: str = "fast"
    workers: int = 2  # scanner threads (each enters namespaces on its own)


class Inspector:
    """Scans every network namespace of the host.

    A scanning thread enters each namespace only for the few microseconds needed to open two
    netlink sockets there, then returns to its own namespace; ``setns`` affects that thread
    alone, so other threads of the process are never moved.
    """

    def __init__(self, config: InspectorConfig) -> None:
        self.config = config
        self.decoder = decoder_named(config.decoder)
        self._uids: dict[int, str] = {}  # namespace inode -> pod UID or ""; pruned every scan
        # Netlink sockets stay open from one scan to the next (opening them means entering
        # the namespace). A held socket keeps its namespace alive, so those of namespaces no
        # longer discovered are closed at the end of every scan.
        self._conns: dict[int, NetnsConnection] = {}
        self._conns_lock = threading.Lock()

    def close(self) -> None:
        with self._conns_lock:
            conns, self._conns = self._conns, {}
        for conn in conns.values():
            conn.close()

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def scan(self) -> Snapshot:
        started = time.time()
        t0 = time.perf_counter()
        skipped: Counter[str] = Counter()
        host_inode = current_inode()
        with NetnsConnection.open(None, -1) as host:
            # Only names are needed from the host's links (peers and parents).
            host_links = {
                link.ifindex: link for link in map(d.decode_link_name, host.links()) if link
            }
        candidates = discover(self.config.proc_root, self.config.netns_dirs, skipped)
        todo = [
            candidates[inode]
            for inode in sorted(candidates)
            if inode != host_inode or self.config.include_host
        ]
        # Most of a namespace's cost is the kernel walking the TCP hash table, during which
        # the GIL is released: a few threads overlap those walks with decoding.
        workers = max(1, min(self.config.workers, len(todo) // MIN_PER_WORKER))
        chunks = [todo[i::workers] for i in range(workers)]
        if workers == 1:
            results = [self._scan_chunk(chunks[0], host_links, host_inode)]
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="podlb-scan") as pool:
                results = list(
                    pool.map(lambda c: self._scan_chunk(c, host_links, host_inode), chunks)
                )
        namespaces: list[NetnsInfo] = []
        for infos, chunk_skipped in results:
            namespaces += infos
            skipped.update(chunk_skipped)
        namespaces.sort(key=lambda ns: ns.inode)
        # Inodes are reused once a namespace is freed: forget those not seen any more.
        for gone in set(self._uids) - set(candidates):
            del self._uids[gone]
        with self._conns_lock:
            stale = [self._conns.pop(i) for i in set(self._conns) - set(candidates)]
        for conn in stale:
            conn.close()
        return Snapshot(
            namespaces=tuple(namespaces),
            host_inode=host_inode,
            started_at=started,
            duration_s=time.perf_counter() - t0,
            skipped=dict(skipped),
        )

    def _scan_chunk(
        self, chunk: list[Candidate], host_links: dict[int, d.RawLink], host_inode: int
    ) -> tuple[list[NetnsInfo], Counter[str]]:
        """Scan some namespaces from the calling thread (which returns to its own namespace)."""
        skipped: Counter[str] = Counter()
        out: list[NetnsInfo] = []
        home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for cand in chunk:
                info = self._scan_one(cand, home_fd, host_links, host_inode, skipped)
                if info is not None:
                    out.append(info)
        finally:
            os.close(home_fd)
        return out, skipped

    def _scan_one(
        self,
        cand: Candidate,
        home_fd: int,
        host_links: dict[int, d.RawLink],
        host_inode: int,
        skipped: Counter[str],
    ) -> NetnsInfo | None:
        is_host = cand.inode == host_inode
        with self._conns_lock:
            conn = self._conns.get(cand.inode)
        path = cand.paths[0] if cand.paths else f"inode:{cand.inode}"
        try:
            if conn is None:
                conn, path = self._connect(cand, home_fd, is_host, skipped)
                if conn is None:
                    return None
                with self._conns_lock:
                    self._conns[cand.inode] = conn
            raw = conn.read_all(None if is_host else home_fd)
        except (NetlinkError, OSError, TransientError) as exc:
            self._drop(cand.inode)
            log.debug("namespace %s skipped: %s", path, exc)
            if isinstance(exc, NamespaceGone):
                skipped["vanished"] += 1
            elif isinstance(exc, TransientError):  # dump interrupted too often
                skipped["dump_interrupted"] += 1
            else:
                skipped["netlink_error"] += 1
            return None
        interfaces = build_interfaces(raw, None if is_host else host_links, self.decoder)
        ips = tuple(
            ip
            for iface in interfaces
            if iface.kind is not LinkKind.LOOPBACK
            for ip in iface.ips
            if _is_pod_address(ip)
        )
        # A namespace never changes pods: read the cgroup once per namespace, not per scan
        # ("" = its processes are in no pod's cgroup).
        cached = self._uids.get(cand.inode)
        if cached is None and cand.pids:
            cached = pod_uid(self.config.proc_root, cand.pids) or ""
            self._uids[cand.inode] = cached
        uid = cached or None
        hint = PodHint(uid, ips) if (uid or ips) and not is_host else None
        return NetnsInfo(
            inode=cand.inode,
            path=path,
            paths=tuple(cand.paths),
            pids=tuple(sorted(cand.pids)),
            pod=hint,
            interfaces=interfaces,
            tcp=build_tcp(raw, self.decoder),
        )

    def activity(self, paths: Sequence[str], inode: int | None = None) -> list[d.SockActivity]:
        """Established TCP sockets of one namespace with their idle times (the drain's view).

        Opens its own sockets (any thread may call it while scans run). Raises
        ``NamespaceGone`` when no path leads to the namespace any more.
        """
        with inside(paths, inode):
            conn = NetnsConnection.open(None, -1)
        with conn:
            return conn.activity()

    def _connect(
        self, cand: Candidate, home_fd: int, is_host: bool, skipped: Counter[str]
    ) -> tuple[NetnsConnection | None, str]:
        fd, path = self._open(cand, skipped)
        if fd is None or path is None:
            return None, ""
        try:
            return NetnsConnection.open(None if is_host else fd, home_fd), path
        finally:
            os.close(fd)

    def _drop(self, inode: int) -> None:
        with self._conns_lock:
            conn = self._conns.pop(inode, None)
        if conn is not None:
            conn.close()

    @staticmethod
    def _open(cand: Candidate, skipped: Counter[str]) -> tuple[int | None, str | None]:
        """Open the namespace through the first path that still leads to it."""
        last = "vanished"
        for path in cand.paths:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # never O_CREAT
            except OSError as exc:
                last = classify_oserror(exc)
                continue
            if os.fstat(fd).st_ino != cand.inode:  # pid reused or mount replaced meanwhile
                os.close(fd)
                last = "vanished"
                continue
            return fd, path
        skipped[last] += 1
        return None, None
