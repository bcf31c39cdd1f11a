"""The bench's topology: the lb, node and pod namespaces, their links, routes and kube-proxy
rules, the pod apps and the optional HAProxy; :meth:`Testbed.close` and
:func:`sweep_leftovers` remove them (see the package docstring for the picture)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.direct_vs_nodeport.kubeproxy import NODE_PORT, POD_PORT, kube_proxy_rules
from bench.direct_vs_nodeport.load import get_once
from tests.testbed.netns import in_netns, ip, ip_batch

REPO = Path(__file__).resolve().parents[2]

NODE_IP = "10.246.0.1"  # node 1; node k is 10.246.0.k
LB_IP = "10.246.0.100"
LINK_PREFIX = 24
TAG_RE = re.compile(r"^dvn(\d+)x[0-9a-f]{4}-")


def _netns_exec(ns: str, *argv: str, stdin: str | None = None) -> None:
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{ns}: {' '.join(argv)}: {proc.stderr.strip()[:2000]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _delete_netns(ns: str) -> None:
    """Kill what still runs in ``ns`` (by pid) and delete it."""
    pids = ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    ip("netns", "del", ns, check=False)


def list_bench_netns(tag: str | None = None) -> list[str]:
    """Namespaces of this bench (of one run when ``tag`` is given)."""
    out = ip("netns", "list", check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    if tag is not None:
        return [n for n in names if n.startswith(f"{tag}-")]
    return [n for n in names if TAG_RE.match(n)]


def sweep_leftovers(*, include_alive: bool = False) -> list[str]:
    """Remove namespaces left by bench runs whose process is gone; returns their names."""
    removed = []
    for ns in list_bench_netns():
        m = TAG_RE.match(ns)
        if m and (include_alive or not _pid_alive(int(m.group(1)))):
            _delete_netns(ns)
            removed.append(ns)
    return removed


def node_ip(k: int) -> str:
    """Address of node ``k`` (1-based) on the VPC segment."""
    return f"10.246.0.{k}"


@dataclass
class PodInfo:
    name: str  # short name, e.g. pod1 (what the app answers)
    ns: str
    ip: str
    node: int  # 1-based index of the node it runs on


@dataclass
class Testbed:
    """The namespaces and processes of one run; :meth:`close` removes all of them."""

    tag: str
    pods: list[PodInfo] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    tempdirs: list[Path] = field(default_factory=list)

    @property
    def lb(self) -> str:
        return f"{self.tag}-lb"

    nodes: int = 1

    def node_ns(self, k: int) -> str:
        return f"{self.tag}-node{k}"

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        for ns in self.namespaces:
            _delete_netns(ns)
        for ns in list_bench_netns(self.tag):  # created but not yet recorded
            _delete_netns(ns)
        for d in self.tempdirs:
            shutil.rmtree(d, ignore_errors=True)


def cpu_split() -> tuple[set[int], set[int]] | None:
    """(LB side, pods) CPU sets: the first allowed CPU for the LB side, the rest for the pods."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None
    return {allowed[0]}, set(allowed[1:])


def build_testbed(
    tb: Testbed,
    n_pods: int,
    extra_services: int = 0,
    *,
    haproxy: bool = False,
    pod_cpus: set[int] | None = None,
    lb_cpus: set[int] | None = None,
) -> None:
    """Create lb, node and pod namespaces, kube-proxy rules, and start the pod apps.

    With ``haproxy``, also an HAProxy (``mode tcp``, like a cloud L4 LB: one backend connection
    per client connection) in the lb namespace: frontend 127.0.0.1:18001 round robin over the
    pod IPs, 127.0.0.1:18002 to the NodePort.
    """
    tb.pods = []
    for i in range(1, n_pods + 1):
        k = (i - 1) % tb.nodes + 1  # pods spread over the nodes
        tb.pods.append(
            PodInfo(name=f"pod{i}", ns=f"{tb.tag}-pod{i}", ip=f"10.245.{k}.{10 + i}", node=k)
        )
    node_names = [tb.node_ns(k) for k in range(1, tb.nodes + 1)]
    all_ns = [tb.lb, *node_names, *(p.ns for p in tb.pods)]
    tb.namespaces = list(all_ns)
    ip_batch([f"netns add {ns}" for ns in all_ns])
    # The lb namespace holds the "VPC": a bridge with the LB's address, one veth to each node.
    lb = ["link set lo up", "link add vpc type bridge", f"addr add {LB_IP}/{LINK_PREFIX} dev vpc"]
    lb.append("link set vpc up")
    for k, ns in enumerate(node_names, start=1):
        lb += [
            f"link add n{k} type veth peer name eth0 netns {ns}",
            f"link set n{k} master vpc",
            f"link set n{k} up",
            f"route add 10.245.{k}.0/24 via {node_ip(k)} dev vpc",  # pod IPs are routable
        ]
    ip_batch(lb, netns=tb.lb)
    for k, ns in enumerate(node_names, start=1):
        node = [
            "link set lo up",
            f"addr add {node_ip(k)}/{LINK_PREFIX} dev eth0",
            "link set eth0 up",
            # The "VPC router"; also what proxy ARP needs (a route to 169.254.1.1 off the pod
            # link).
            f"route add default via {LB_IP} dev eth0",
        ]
        node += [
            f"route add 10.245.{j}.0/24 via {node_ip(j)} dev eth0"
            for j in range(1, tb.nodes + 1)
            if j != k
        ]
        for i, pod in enumerate(tb.pods, start=1):
            if pod.node == k:
                node += [
                    f"link add vpod{i} type veth peer name eth0 netns {pod.ns}",
                    f"link set vpod{i} up",
                    f"route add {pod.ip}/32 dev vpod{i}",
                ]
        ip_batch(node, netns=ns)
        # Forwarding and proxy ARP inside the node namespace only; the host is not touched.
        knobs = ["net.ipv4.ip_forward=1"]
        for i, pod in enumerate(tb.pods, start=1):  # proxy ARP at once, as Calico sets it
            if pod.node == k:
                knobs += [
                    f"net.ipv4.conf.vpod{i}.proxy_arp=1",
                    f"net.ipv4.neigh.vpod{i}.proxy_delay=0",
                ]
        _netns_exec(ns, "sysctl", "-q", "-w", *knobs)
    for pod in tb.pods:  # the Calico layout: /32 and a default via a link-local gateway
        ip_batch(
            [
                "link set lo up",
                f"addr add {pod.ip}/32 dev eth0",
                "link set eth0 up",
                "route add 169.254.1.1 dev eth0 scope link",
                "route add default via 169.254.1.1 dev eth0",
            ],
            netns=pod.ns,
        )
    # Many short connections from one client: a wide port range and TIME_WAIT reuse.
    _netns_exec(
        tb.lb,
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ip_local_port_range=1024 65000",
        "net.ipv4.tcp_tw_reuse=1",
    )
    # Every node has the same rules with every endpoint, as kube-proxy writes them.
    rules = kube_proxy_rules([p.ip for p in tb.pods], extra_services=extra_services)
    for ns in node_names:
        _netns_exec(ns, "iptables-restore", stdin=rules)
    for pod in tb.pods:
        argv = [sys.executable, "-m", "bench.direct_vs_nodeport", "--serve-pod", pod.name]
        if pod_cpus:
            argv += ["--cpus", ",".join(map(str, sorted(pod_cpus)))]
        tb.procs.append(
            subprocess.Popen(
                ["ip", "netns", "exec", pod.ns, *argv, "--port", str(POD_PORT)],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    if haproxy:
        tb.procs.append(_start_haproxy(tb, lb_cpus))
    _wait_ready(tb, haproxy=haproxy)


HAPROXY_DIRECT = ("127.0.0.1", 18001)
HAPROXY_NODEPORT = ("127.0.0.1", 18002)


def haproxy_config(pods: Sequence[PodInfo], nodes: int) -> str:
    servers = "\n".join(f"  server {p.name} {p.ip}:{POD_PORT}" for p in pods)
    node_servers = "\n".join(
        f"  server node{k} {node_ip(k)}:{NODE_PORT}" for k in range(1, nodes + 1)
    )
    return f"""global
  maxconn 4000
  nbthread 1
defaults
  mode tcp
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend direct
  bind {HAPROXY_DIRECT[0]}:{HAPROXY_DIRECT[1]}
  default_backend direct
backend direct
  balance roundrobin
{servers}
frontend nodeport
  bind {HAPROXY_NODEPORT[0]}:{HAPROXY_NODEPORT[1]}
  default_backend nodeport
backend nodeport
  balance roundrobin
{node_servers}
"""


def _start_haproxy(tb: Testbed, cpus: set[int] | None = None) -> subprocess.Popen[bytes]:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        raise RuntimeError("--via haproxy needs the haproxy binary (Debian package haproxy)")
    cfg = Path(tempfile.mkdtemp(prefix=f"{tb.tag}-")) / "haproxy.cfg"
    cfg.write_text(haproxy_config(tb.pods, tb.nodes))
    tb.tempdirs.append(cfg.parent)
    proc = subprocess.Popen(
        ["ip", "netns", "exec", tb.lb, haproxy, "-db", "-f", str(cfg)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if cpus:  # ip netns exec execs haproxy: same pid
        with contextlib.suppress(OSError):
            os.sched_setaffinity(proc.pid, cpus)
    return proc


def _wait_ready(tb: Testbed, timeout: float = 10.0, *, haproxy: bool = False) -> None:
    deadline = time.monotonic() + timeout
    for pod in tb.pods:
        while True:
            try:
                with in_netns(tb.lb):
                    get_once(pod.ip, POD_PORT)
                break
            except OSError as exc:
                for proc in tb.procs:
                    if proc.poll() is not None:
                        err = proc.stderr.read().decode() if proc.stderr else ""
                        msg = f"a testbed process exited: {err.strip()[-2000:]}"
                        raise RuntimeError(msg) from exc
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{pod.name} ({pod.ip}) not reachable: {exc}") from exc
                time.sleep(0.05)
    checks = [(node_ip(k), NODE_PORT) for k in range(1, tb.nodes + 1)]
    if haproxy:
        checks += [HAPROXY_DIRECT, HAPROXY_NODEPORT]
    for host, port in checks:
        while True:
            try:
                with in_netns(tb.lb):
                    get_once(host, port)
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{host}:{port} not answering: {exc}") from exc
                time.sleep(0.05)
