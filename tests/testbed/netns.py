"""Real pod-like network namespaces for tests, benchmarks and the demo.

A "pod" here is a named network namespace (``ip netns add``) with one link named ``eth0``:

* ``veth``: a veth pair, the host side named ``<prefix>…`` with proxy ARP, the pod side with the
  pod IP/32, a default route via 169.254.1.1 and a host route ``podIP/32 dev <host side>``
  (the Calico layout), so the host reaches the pod on its IP;
* ``macvlan``: a macvlan (bridge mode) on a parent link the caller owns;
* ``tap``: a tap device moved into the namespace and renamed ``eth0`` (stands in for an ENI).

Everything created is tracked by a :class:`NetnsPool` and removed on ``close()`` even when a test
fails. Names carry a per-pool prefix so concurrent runs never collide. Only addresses inside
namespaces made here are used.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
# A kernel-wide lock is not needed: setns only affects the calling thread.


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip`` with ``args``; raise with stderr on failure when ``check``."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def ip_batch(lines: Sequence[str], netns: str | None = None) -> None:
    """Run many ``ip`` commands in one process (``ip -batch -``); far faster than one per fork.

    A batch cannot switch namespaces per line: ``netns`` runs the whole batch in one namespace.
    """
    if not lines:
        return
    prefix = ["-n", netns] if netns else []
    proc = subprocess.run(
        ["ip", *prefix, "-force", "-batch", "-"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ip -batch: {proc.stderr.strip()[:2000]}")


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body of the ``with`` in the named namespace (this thread only)."""
    host = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(host)
    finally:
        os.close(target)
        os.close(host)


def socket_in_netns(name: str, family: int, type_: int) -> socket.socket:
    """A socket created inside the named namespace (it stays bound to that namespace)."""
    with in_netns(name):
        return socket.socket(family, type_)


@dataclass
class Pod:
    """One pod-like namespace."""

    name: str  # the namespace name (``ip netns``)
    ip: str  # the pod IP (without prefix length)
    kind: str  # veth | macvlan | tap
    host_if: str | None = None  # host side of the veth
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a process inside the namespace; it is killed when the pool closes."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            ["ip", "netns", "exec", self.name, *argv], **kwargs
        )
        self.procs.append(proc)
        return proc

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True, check=True
        )


class NetnsPool:
    """Creates pod namespaces and removes every one of them on :meth:`close`.

    ``prefix`` must be short (host link names have 15 characters); a random tag is added.
    ``subnet`` is where pod IPs are taken from, one /32 each.
    """

    def __init__(self, prefix: str = "plt", subnet: str = "10.244.0.0/16") -> None:
        self.tag = f"{prefix}{secrets.token_hex(2)}"
        self._hosts = ipaddress.ip_network(subnet).hosts()
        self._lock = threading.Lock()
        self._seq = 0
        self.pods: dict[str, Pod] = {}
        self._host_links: list[str] = []

    # -- naming -------------------------------------------------------------------------
    def _next(self) -> tuple[int, str]:
        with self._lock:
            self._seq += 1
            return self._seq, str(next(self._hosts))

    def ns_name(self, seq: int) -> str:
        return f"{self.tag}-p{seq}"

    # -- creation -----------------------------------------------------------------------
    def add_veth(self, ip_addr: str | None = None, *, up: bool = True) -> Pod:
        return self.add_many_veth(1, ips=[ip_addr] if ip_addr else None, up=up)[0]

    def add_many_veth(
        self, count: int, *, ips: Sequence[str] | None = None, up: bool = True
    ) -> list[Pod]:
        """Create ``count`` veth pods with one ``ip -batch`` (fast enough for 200 pods)."""
        pods: list[Pod] = []
        host_lines: list[str] = []
        routes: list[str] = []
        for i in range(count):
            seq, auto_ip = self._next()
            addr = ips[i] if ips else auto_ip
            name = self.ns_name(seq)
            host_if = f"{self.tag}v{seq}"
            host_lines += [
                f"netns add {name}",
                f"link add {host_if} type veth peer name eth0 netns {name}",
                f"link set {host_if} up",
            ]
            routes.append(f"route add {addr}/32 dev {host_if}")
            pods.append(Pod(name=name, ip=addr, kind="veth", host_if=host_if))
        with self._lock:
            for pod in pods:
                self.pods[pod.name] = pod
        ip_batch(host_lines)
        for pod in pods:
            lines = [
                "link set lo up",
                f"addr add {pod.ip}/32 dev eth0",
                f"link set eth0 {'up' if up else 'down'}",
            ]
            if up:
                lines += [
                    "route add 169.254.1.1 dev eth0 scope link",
                    "route add default via 169.254.1.1 dev eth0",
                ]
            ip_batch(lines, netns=pod.name)
            # Proxy ARP answers the pod's ARP for 169.254.1.1; the kernel only proxies on a
            # device with forwarding on (per device, the host's ip_forward stays as it is).
            for knob in ("proxy_arp", "forwarding"):
                with open(f"/proc/sys/net/ipv4/conf/{pod.host_if}/{knob}", "w") as f:
                    f.write("1")
            # Answer proxy ARP at once (default: a random delay up to 0.8 s), like Calico;
            # otherwise a new pod's first reply waits for ARP and skews start-up timings.
            with open(f"/proc/sys/net/ipv4/neigh/{pod.host_if}/proxy_delay", "w") as f:
                f.write("0")
        ip_batch(routes)
        return pods

    def add_parent(self, name_suffix: str = "br") -> str:
        """A host bridge to hang macvlans on (the bridge has no address, carries no traffic)."""
        link = f"{self.tag}{name_suffix}"
        ip("link", "add", link, "type", "bridge")
        ip("link", "set", link, "up")
        self._host_links.append(link)
        return link

    def add_macvlan(self, parent: str, mode: str = "bridge") -> Pod:
        seq, addr = self._next()
        name = self.ns_name(seq)
        tmp = f"{self.tag}m{seq}"
        pod = Pod(name=name, ip=addr, kind="macvlan")
        self.pods[name] = pod
        ip_batch(
            [
                f"netns add {name}",
                f"link add {tmp} link {parent} type macvlan mode {mode}",
                f"link set {tmp} netns {name}",
            ]
        )
        ip_batch(self._pod_side(tmp, addr), netns=name)
        return pod

    def add_tap(self) -> Pod:
        """A tap moved into the pod as ``eth0``: a NIC without a veth peer, like an ENI."""
        seq, addr = self._next()
        name = self.ns_name(seq)
        tmp = f"{self.tag}t{seq}"
        pod = Pod(name=name, ip=addr, kind="tap")
        self.pods[name] = pod
        ip_batch(
            [f"netns add {name}", f"tuntap add dev {tmp} mode tap", f"link set {tmp} netns {name}"]
        )
        ip_batch(self._pod_side(tmp, addr), netns=name)
        return pod

    @staticmethod
    def _pod_side(link: str, addr: str) -> list[str]:
        return [
            f"link set {link} name eth0",
            "link set lo up",
            f"addr add {addr}/32 dev eth0",
            "link set eth0 up",
        ]

    # -- removal ------------------------------------------------------------------------
    def remove(self, name: str) -> None:
        pod = self.pods.pop(name, None)
        if pod is None:
            return
        for proc in pod.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        lines = [f"netns del {name}"]
        if pod.host_if:
            lines.insert(0, f"link del {pod.host_if}")
        with contextlib.suppress(RuntimeError):
            ip_batch(lines)

    def close(self) -> None:
        for name in list(self.pods):
            self.remove(name)
        for link in self._host_links:
            ip("link", "del", link, check=False)
        self._host_links.clear()
        # Anything left behind by a crash mid-creation.
        out = ip("netns", "list", check=False).stdout
        for line in out.splitlines():
            ns = line.split()[0] if line.strip() else ""
            if ns.startswith(f"{self.tag}-"):
                ip("netns", "del", ns, check=False)

    def __enter__(self) -> NetnsPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
