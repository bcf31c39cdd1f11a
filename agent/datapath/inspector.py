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
from dataclasses import dataclass, field, replace
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


@dataclass
class _Tally:
    """What one scanning thread counted: namespaces skipped (gone, not namespaces) and those
    read with an error (their last good view kept), by reason."""

    skipped: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    stale: set[int] = field(default_factory=set)


class Inspector:
    """Scans every network namespace of the host.

    A scanning thread enters each namespace only for the few microseconds needed to open two
    netlink sockets there, then returns to its own namespace; ``setns`` affects that thread
    alone, so other threads of the process are never moved.

    Only a namespace that is really gone drops out of a scan: no bind mount or ``/proc`` path
    leads to it any more (it is not discovered, or no path opens). One that is still there but
    cannot be read this time (a netlink error, a dump interrupted ``MAX_DUMP_RETRIES`` times,
    a permission error) keeps its last good view, and the error is counted in
    ``Snapshot.errors`` and logged when it starts and when it ends.
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
        self._last: dict[int, NetnsInfo] = {}  # inode -> last good view; pruned every scan
        self._failing: set[int] = set()  # inodes whose last read failed (logged once)

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
        errors: Counter[str] = Counter()
        kept: set[int] = set()
        for infos, tally in results:
            namespaces += infos
            skipped.update(tally.skipped)
            errors.update(tally.errors)
            kept |= tally.stale
        namespaces.sort(key=lambda ns: ns.inode)
        # Inodes are reused once a namespace is freed: forget those not seen any more.
        for gone in set(self._uids) - set(candidates):
            del self._uids[gone]
        read = {ns.inode for ns in namespaces}
        for gone in set(self._last) - read:
            del self._last[gone]
        self._failing &= set(candidates)
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
            errors=dict(errors),
            stale=frozenset(kept),
        )

    def _scan_chunk(
        self, chunk: list[Candidate], host_links: dict[int, d.RawLink], host_inode: int
    ) -> tuple[list[NetnsInfo], _Tally]:
        """Scan some namespaces from the calling thread (which returns to its own namespace)."""
        tally = _Tally()
        out: list[NetnsInfo] = []
        home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for cand in chunk:
                info = self._scan_one(cand, home_fd, host_links, host_inode, tally)
                if info is not None:
                    out.append(info)
        finally:
            os.close(home_fd)
        return out, tally

    def _scan_one(
        self,
        cand: Candidate,
        home_fd: int,
        host_links: dict[int, d.RawLink],
        host_inode: int,
        tally: _Tally,
    ) -> NetnsInfo | None:
        is_host = cand.inode == host_inode
        with self._conns_lock:
            conn = self._conns.get(cand.inode)
        path = cand.paths[0] if cand.paths else f"inode:{cand.inode}"
        try:
            if conn is None:
                conn, path, why = self._connect(cand, home_fd, is_host)
                if conn is None:
                    if why == "vanished":  # no path leads to it any more: really gone
                        tally.skipped[why] += 1
                        return None
                    return self._unreadable(cand, path, why, f"cannot open: {why}", tally)
                with self._conns_lock:
                    self._conns[cand.inode] = conn
            raw = conn.read_all(None if is_host else home_fd)
        except NamespaceGone as exc:  # the kernel would not let us in: it is gone
            self._drop(cand.inode)
            log.debug("namespace %s skipped: %s", path, exc)
            tally.skipped["vanished"] += 1
            return None
        except (NetlinkError, OSError, TransientError) as exc:
            # The namespace is still there (it was discovered this scan): a failed read says
            # nothing about the pod. A fresh socket is opened next scan.
            self._drop(cand.inode)
            why = "dump_interrupted" if isinstance(exc, TransientError) else "netlink_error"
            return self._unreadable(cand, path, why, str(exc), tally)
        if cand.inode in self._failing:
            self._failing.discard(cand.inode)
            log.info("namespace %s: read again after errors", path)
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
        info = NetnsInfo(
            inode=cand.inode,
            path=path,
            paths=tuple(cand.paths),
            pids=tuple(sorted(cand.pids)),
            pod=hint,
            interfaces=interfaces,
            tcp=build_tcp(raw, self.decoder),
        )
        self._last[cand.inode] = info
        return info

    def _unreadable(
        self, cand: Candidate, path: str, why: str, detail: str, tally: _Tally
    ) -> NetnsInfo | None:
        """A namespace that exists but was not read: its last good view, counted and logged
        (a warning when the errors start, debug while they go on)."""
        tally.errors[why] += 1
        last = self._last.get(cand.inode)
        if cand.inode not in self._failing:
            self._failing.add(cand.inode)
            log.warning(
                "namespace %s not read (%s): %s", path, detail,
                "keeping its last good view" if last else "no earlier view to keep",
            )  # fmt: skip
        else:
            log.debug("namespace %s still not read: %s", path, detail)
        if last is None:
            return None
        tally.stale.add(cand.inode)
        return replace(last, paths=tuple(cand.paths), pids=tuple(sorted(cand.pids)))

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
        self, cand: Candidate, home_fd: int, is_host: bool
    ) -> tuple[NetnsConnection | None, str, str]:
        """Sockets in the namespace, the path used, and why not (``vanished``: no path
        leads to it any more)."""
        fd, path, why = self._open(cand)
        if fd is None or path is None:
            return None, cand.paths[0] if cand.paths else f"inode:{cand.inode}", why
        try:
            return NetnsConnection.open(None if is_host else fd, home_fd), path, ""
        finally:
            os.close(fd)

    def _drop(self, inode: int) -> None:
        with self._conns_lock:
            conn = self._conns.pop(inode, None)
        if conn is not None:
            conn.close()

    @staticmethod
    def _open(cand: Candidate) -> tuple[int | None, str | None, str]:
        """Open the namespace through the first path that still leads to it; else why not
        (``vanished`` when every path is gone or leads elsewhere now)."""
        whys: set[str] = set()
        for path in cand.paths:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # never O_CREAT
            except OSError as exc:
                whys.add(classify_oserror(exc))
                continue
            if os.fstat(fd).st_ino != cand.inode:  # pid reused or mount replaced meanwhile
                os.close(fd)
                whys.add("vanished")
                continue
            return fd, path, ""
        # Gone only when no path failed for another reason (permission, I/O error).
        return None, None, (sorted(whys - {"vanished"}) or ["vanished"])[0]
