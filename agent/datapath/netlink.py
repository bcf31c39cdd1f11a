"""Netlink sockets opened inside a network namespace, and the dumps the inspector needs.

A socket belongs to the namespace it was created in, so :func:`open_in_netns` switches this
thread into the namespace (``setns``), creates the sockets and switches back at once; all
requests then run from the host namespace. Only the calling thread changes namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from agent.errors import DumpInterrupted, NamespaceGone, NetlinkError

from . import decode as d

CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
NETLINK_SOCK_DIAG = 4
RECV_BUF = 1 << 16
MAX_DUMP_RETRIES = 5

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(target_fd: int, home_fd: int) -> Iterator[None]:
    """Run the body in ``target_fd``'s namespace; always come back to ``home_fd``.

    Failing to come back would leave this thread in a pod's namespace: that is not
    recoverable, so it raises ``SystemExit`` instead of a catchable error.
    """
    setns(target_fd)
    try:
        yield
    finally:
        try:
            setns(home_fd)
        except OSError as exc:  # pragma: no cover - kernel refused to let us return
            raise SystemExit(f"cannot return to the host network namespace: {exc}") from exc


@contextlib.contextmanager
def inside(paths: Sequence[str], inode: int | None = None) -> Iterator[str]:
    """Run the body inside the namespace behind the first of ``paths`` that opens (this thread
    only; sockets created there stay in that namespace) and, with ``inode``, is still that
    namespace (a ``/proc/<pid>`` path may now belong to another process). Yields the path
    used; raises ``NamespaceGone`` when none leads to the namespace any more."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # never O_CREAT
            except OSError:
                continue
            if inode is not None and os.fstat(fd).st_ino != inode:
                os.close(fd)
                continue
            try:
                with entered(fd, home):
                    yield path
                return
            finally:
                os.close(fd)
    finally:
        os.close(home)
    raise NamespaceGone(f"no way into the namespace any more: {', '.join(paths)}")


class NetlinkSocket:
    """A blocking netlink socket with dump and single-request helpers."""

    def __init__(self, protocol: int) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def dump(self, build: Callable[[int], bytes], what: str) -> list[tuple[int, memoryview]]:
        """Send a dump request (``build(seq) -> bytes``) and collect (type, payload) pairs.

        A dump the kernel marks NLM_F_DUMP_INTR (the table changed under it) is retried up to
        ``MAX_DUMP_RETRIES`` times, then :class:`DumpInterrupted`.
        """
        for _attempt in range(MAX_DUMP_RETRIES):
            seq = self._next_seq()
            self.sock.send(build(seq))
            out: list[tuple[int, memoryview]] = []
            interrupted = False
            done = False
            while not done:
                data = self.sock.recv(RECV_BUF)
                if not data:
                    raise NetlinkError(errno.EIO, f"{what}: empty read")
                for mtype, flags, mseq, payload in d.messages(data):
                    if mseq != seq:
                        continue
                    if flags & d.NLM_F_DUMP_INTR:
                        interrupted = True
                    if mtype == d.NLMSG_DONE:
                        done = True
                        break
                    if mtype == d.NLMSG_ERROR:
                        code = -int(struct.unpack_from("=i", payload)[0])
                        if code == 0:
                            done = True
                            break
                        raise NetlinkError(code, what)
                    out.append((mtype, payload))
            if not interrupted:
                return out
        raise DumpInterrupted(f"netlink {what}: dump interrupted {MAX_DUMP_RETRIES} times")

    def call(self, data: bytes, what: str) -> tuple[int, memoryview]:
        """One request, one answer (not a dump)."""
        self.sock.send(data)
        seq = struct.unpack_from("=I", data, 8)[0]
        while True:
            buf = self.sock.recv(RECV_BUF)
            for mtype, _flags, mseq, payload in d.messages(buf):
                if mseq != seq:
                    continue
                if mtype == d.NLMSG_ERROR:
                    code = -int(struct.unpack_from("=i", payload)[0])
                    if code:
                        raise NetlinkError(code, what)
                return mtype, payload


def _tcp_req(family: int, states: int, seq: int) -> bytes:
    return d.tcp_diag_request(family, states, seq)


@dataclass(frozen=True, slots=True)
class RawDump:
    """Everything read from one namespace, undecoded (recorded as test fixtures)."""

    links: list[tuple[int, memoryview]]
    addrs: list[tuple[int, memoryview]]
    socks: list[tuple[int, memoryview]]
    host_nsid: int | None  # the id this namespace gives the host namespace (None: none)


class NetnsConnection:
    """A route and a sock_diag socket that live in one namespace."""

    compat_tcp = True  # class-wide: once the kernel refuses the compat dump, stop asking

    def __init__(self, route: NetlinkSocket, diag: NetlinkSocket) -> None:
        self.route = route
        self.diag = diag
        self.host_nsid: int | None = None

    @classmethod
    def open(cls, target_fd: int | None, home_fd: int) -> NetnsConnection:
        """Sockets in ``target_fd``'s namespace (``None``: the current one)."""
        if target_fd is None:
            return cls(NetlinkSocket(NETLINK_ROUTE), NetlinkSocket(NETLINK_SOCK_DIAG))
        try:
            with entered(target_fd, home_fd):
                route = NetlinkSocket(NETLINK_ROUTE)
                try:
                    diag = NetlinkSocket(NETLINK_SOCK_DIAG)
                except BaseException:
                    route.close()
                    raise
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT, errno.EBADF):
                raise NamespaceGone(f"cannot enter namespace: {exc}") from exc
            raise
        return cls(route, diag)

    def close(self) -> None:
        self.route.close()
        self.diag.close()

    def __enter__(self) -> NetnsConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def links(self) -> list[tuple[int, memoryview]]:
        return self.route.dump(d.link_dump_request, "link dump")

    def addrs(self) -> list[tuple[int, memoryview]]:
        return self.route.dump(d.addr_dump_request, "addr dump")

    def nsid_of(self, fd: int) -> int | None:
        """The id this namespace gives the namespace behind ``fd`` (None: not assigned)."""
        try:
            _mtype, payload = self.route.call(d.nsid_request(fd, self.route._next_seq()), "nsid")
        except NetlinkError:
            return None
        return d.decode_nsid(payload)

    def tcp(self, states: int) -> list[tuple[int, memoryview]]:
        """TCP sockets of both families: one compat dump, or two v2 dumps where it is refused."""
        if self.compat_tcp:
            try:
                return self.diag.dump(
                    functools.partial(d.tcp_diag_compat_request, states), "tcp diag"
                )
            except NetlinkError:
                self.compat_tcp = False
        out: list[tuple[int, memoryview]] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            out += self.diag.dump(functools.partial(_tcp_req, family, states), "tcp sock_diag")
        return out

    def activity(self) -> list[d.SockActivity]:
        """Established TCP sockets with their tcp_info (idle time, bytes received)."""
        build = functools.partial(d.tcp_diag_compat_request, 1 << d.TCP_ESTABLISHED, ext=d.EXT_INFO)
        return [d.decode_sock_activity(p) for _t, p in self.diag.dump(build, "tcp activity")]

    def read_all(self, host_fd: int | None) -> RawDump:
        states = (1 << d.TCP_LISTEN) | (1 << d.TCP_ESTABLISHED)
        if host_fd is not None and self.host_nsid is None:
            # An assigned nsid never changes for the life of the two namespaces.
            self.host_nsid = self.nsid_of(host_fd)
        return RawDump(
            links=self.links(),
            addrs=self.addrs(),
            socks=self.tcp(states),
            host_nsid=self.host_nsid if host_fd is not None else None,
        )
