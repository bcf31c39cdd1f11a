"""Direct pod mode vs NodePort: latency, throughput, source IP and spread, on real namespaces.

Run (root)::

    .venv/bin/python -m bench.direct_vs_nodeport [--rounds 6] [--duration 1.5] [--json]

(run it with ``-m`` from the repository root, not as ``bench/direct_vs_nodeport.py``: a script
puts ``bench/`` first on ``sys.path`` and a ``bench/inspect.py`` would shadow the stdlib.)

The testbed is built entirely in network namespaces this bench creates (names
``dvn<pid>x<hex>-…``) and removed on exit, on failure and on SIGTERM/SIGINT/SIGHUP; leftovers of a
bench whose process is gone are swept at start::

    lb ns: bridge "vpc" 10.246.0.100/24 ──veth── eth0 10.246.0.k/24  node k ns (k = 1..--nodes;
    route 10.245.k.0/24 via 10.246.0.k                 ip_forward=1 here only)
    (pod IPs are routable, as on a VPC)                vpodN ──veth── pod ns eth0 10.245.k.x/32
                                                       route podIP/32 dev vpodN, proxy ARP
                                                       iptables nat: what kube-proxy (iptables
                                                       mode) writes for a NodePort, all pods

* path ``direct``: the LB connects to ``podIP:8080`` itself (round robin over the pods, one pick
  per connection) — direct pod mode;
* path ``nodeport``: the LB connects to ``10.246.0.k:30080`` (round robin over the nodes); the
  node runs KUBE-SERVICES -> KUBE-NODEPORTS -> KUBE-EXT-… (KUBE-MARK-MASQ) -> KUBE-SVC-…
  (``-m statistic --mode random --probability``) -> KUBE-SEP-… (DNAT to a pod, maybe on another
  node) and masquerades marked packets in KUBE-POSTROUTING, like kube-proxy with
  ``externalTrafficPolicy: Cluster``;
* ``--via haproxy``: an HAProxy (``mode tcp``) in the lb namespace is the LB instead, the
  client talks to it on loopback.

The pods run a tiny threaded HTTP/1.1 server (no DNS) answering ``{"pod", "src"}``: its name and
the client address it sees. The LB side is a plain socket HTTP client run from the lb namespace,
closed loop, in two mixes: ``keepalive`` (``--keepalive-requests`` requests per connection) and
``newconn`` (one request per connection, ``Connection: close``; latency includes the connect).
Rounds alternate the path order (A B B A, then B A A B, …, each half ``--duration`` / 2 seconds
or ``--max-requests`` requests) so drift and machine noise cancel; the report gives pooled
percentiles, the direct/NodePort ratios and the p50 ratio of each round (its spread is the
noise). By default the LB side runs on the first CPU and the pods on the others (``--no-pin``).
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import hashlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import FrameType
from typing import Any

from tests.testbed.netns import in_netns, ip, ip_batch

REPO = Path(__file__).resolve().parents[1]

NODE_IP = "10.246.0.1"  # node 1; node k is 10.246.0.k
LB_IP = "10.246.0.100"
LINK_PREFIX = 24
POD_CIDR = "10.245.0.0/16"
POD_PORT = 8080
NODE_PORT = 30080
CLUSTER_IP = "10.96.245.10"  # the Service's ClusterIP (only in the rules, never used)
SERVICE_PORT = 80
SERVICE_PORT_NAME = "bench/web:http"  # namespace/name:portname, as kube-proxy hashes it
MASQ_MARK = "0x4000"
PATHS = ("direct", "nodeport")
MIXES = ("keepalive", "newconn")
STALL_MS = 200  # the minimum TCP retransmission timeout
TAG_RE = re.compile(r"^dvn(\d+)x[0-9a-f]{4}-")


# -- the pod app ----------------------------------------------------------------------------


class _PodHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    pod_name = "pod"

    def do_GET(self) -> None:
        body = json.dumps({"pod": self.pod_name, "src": self.client_address[0]}).encode()
        conn = "close" if self.close_connection else "keep-alive"
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: {conn}\r\n\r\n"
        ).encode()
        self.wfile.write(head + body)  # one write: no Nagle / delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _PodServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def server_bind(self) -> None:
        # Not HTTPServer.server_bind: that calls socket.getfqdn (reverse DNS).
        socketserver.TCPServer.server_bind(self)


def serve_pod(name: str, port: int, cpus: set[int] | None = None) -> None:
    """Run the pod app forever (inside the pod namespace), on ``cpus`` when given."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    handler = type("Handler", (_PodHandler,), {"pod_name": name})
    with _PodServer(("0.0.0.0", port), handler) as server:
        server.serve_forever(poll_interval=0.5)


# -- kube-proxy (iptables mode) rules -------------------------------------------------------


def _hash16(text: str) -> str:
    """kube-proxy's chain-name hash: base32(sha256(text))[:16]."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def kube_proxy_rules(
    pod_ips: Sequence[str], *, node_port: int = NODE_PORT, extra_services: int = 0
) -> str:
    """``iptables-restore`` input reproducing kube-proxy's NodePort rules for one Service.

    Same chains, matches, probabilities and masquerade marking as kube-proxy (1.28+ layout,
    ``externalTrafficPolicy: Cluster``, ``--cluster-cidr`` = the pod CIDR). ``extra_services``
    adds that many other ClusterIP Services ahead of the NodePort jump in KUBE-SERVICES, as
    in a bigger cluster (iptables mode walks KUBE-SERVICES linearly for each new connection).
    """
    proto = "tcp"
    svc = f"KUBE-SVC-{_hash16(SERVICE_PORT_NAME + proto)}"
    ext = f"KUBE-EXT-{_hash16(SERVICE_PORT_NAME + proto)}"
    endpoints = [f"{pod_ip}:{POD_PORT}" for pod_ip in pod_ips]
    seps = [f"KUBE-SEP-{_hash16(SERVICE_PORT_NAME + proto + ep)}" for ep in endpoints]
    c = f'-m comment --comment "{SERVICE_PORT_NAME}"'
    chains = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", svc, ext]
    chains += seps
    rules = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT"'
        " -j MASQUERADE --random-fully",
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
    ]
    for i in range(extra_services):
        # Other Services: a ClusterIP match each (never hit by this traffic, only walked).
        rules.append(
            f"-A KUBE-SERVICES -d 10.96.{100 + i // 250}.{1 + i % 250}/32 -p tcp"
            f' -m comment --comment "bench/other-{i}:http cluster IP" -m tcp --dport 80'
            f" -j KUBE-MARK-MASQ"
        )
    rules += [
        f"-A KUBE-SERVICES -d {CLUSTER_IP}/32 -p tcp"
        f' -m comment --comment "{SERVICE_PORT_NAME} cluster IP"'
        f" -m tcp --dport {SERVICE_PORT} -j {svc}",
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be'
        ' the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS',
        f"-A KUBE-NODEPORTS -p tcp {c} -m tcp --dport {node_port} -j {ext}",
        f'-A {ext} -m comment --comment "masquerade traffic for {SERVICE_PORT_NAME} external'
        f' destinations" -j KUBE-MARK-MASQ',
        f"-A {ext} -j {svc}",
        f"-A {svc} ! -s {POD_CIDR} -d {CLUSTER_IP}/32 -p tcp"
        f' -m comment --comment "{SERVICE_PORT_NAME} cluster IP"'
        f" -m tcp --dport {SERVICE_PORT} -j KUBE-MARK-MASQ",
    ]
    n = len(endpoints)
    for i, (ep, sep) in enumerate(zip(endpoints, seps, strict=True)):
        cmt = f'-m comment --comment "{SERVICE_PORT_NAME} -> {ep}"'
        if i < n - 1:
            prob = f"{1.0 / (n - i):0.10f}"
            rules.append(f"-A {svc} {cmt} -m statistic --mode random --probability {prob} -j {sep}")
        else:
            rules.append(f"-A {svc} {cmt} -j {sep}")
    for ep, sep in zip(endpoints, seps, strict=True):
        pod_ip = ep.split(":")[0]
        rules.append(f"-A {sep} -s {pod_ip}/32 {c} -j KUBE-MARK-MASQ")
        rules.append(f"-A {sep} -p tcp {c} -m tcp -j DNAT --to-destination {ep}")
    nat = ["*nat", *(f":{ch} - [0:0]" for ch in chains), *rules, "COMMIT"]
    flt = [
        "*filter",
        ":KUBE-FORWARD - [0:0]",
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules"'
        f" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule"'
        " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "COMMIT",
    ]
    return "\n".join(nat + flt) + "\n"


# -- the testbed ----------------------------------------------------------------------------


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


# -- the LB side: a plain HTTP/1.1 client ---------------------------------------------------

_REQ_KEEP = b"GET / HTTP/1.1\r\nHost: web\r\n\r\n"
_REQ_CLOSE = b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"


def _connect(host: str, port: int, timeout: float = 2.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send one request, return the body of the response (Content-Length framing)."""
    sock.sendall(request)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed before the response head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"bad response: {head[:80]!r}")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed in the body")
        body += chunk
    return body


def get_once(host: str, port: int) -> dict[str, str]:
    """One request on a new connection (run it inside the client namespace)."""
    with _connect(host, port) as sock:
        return dict(json.loads(_exchange(sock, _REQ_CLOSE)))


@dataclass
class Segment:
    """What one (round, mix, path) run of the load measured."""

    path: str
    mix: str
    round: int
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    pods: Counter[str] = field(default_factory=Counter)
    srcs: Counter[str] = field(default_factory=Counter)
    pairs: Counter[tuple[str, str]] = field(default_factory=Counter)  # (pod, source seen)


def run_segment(
    lb_ns: str,
    targets: Sequence[tuple[str, int]],
    *,
    path: str,
    mix: str,
    round_no: int,
    duration: float,
    max_requests: int,
    concurrency: int,
    keepalive_requests: int,
) -> Segment:
    """Closed-loop load from ``lb_ns`` for ``duration`` s or ``max_requests`` requests.

    Each new connection goes to the next target (round robin): the LB's own pick in direct mode,
    always the one NodePort otherwise (kube-proxy then picks the pod).
    """
    seg = Segment(path=path, mix=mix, round=round_no)
    lock = threading.Lock()
    state = {"sent": 0, "rr": 0}
    request = _REQ_KEEP if mix == "keepalive" else _REQ_CLOSE
    per_conn = keepalive_requests if mix == "keepalive" else 1
    start = time.monotonic()
    deadline = start + duration

    def take() -> bool:
        with lock:
            if state["sent"] >= max_requests:
                return False
            state["sent"] += 1
            return True

    def worker() -> None:
        lat: list[int] = []
        pods: Counter[str] = Counter()
        srcs: Counter[str] = Counter()
        pairs: Counter[tuple[str, str]] = Counter()
        errors = 0
        with in_netns(lb_ns):
            while time.monotonic() < deadline:
                with lock:
                    target = targets[state["rr"] % len(targets)]
                    state["rr"] += 1
                sock: socket.socket | None = None
                try:
                    t0 = time.perf_counter_ns()
                    sock = _connect(*target)
                    for _ in range(per_conn):
                        if time.monotonic() >= deadline or not take():
                            break
                        if mix == "keepalive":
                            t0 = time.perf_counter_ns()
                        body = _exchange(sock, request)
                        lat.append(time.perf_counter_ns() - t0)
                        answer = json.loads(body)
                        pods[answer["pod"]] += 1
                        srcs[answer["src"]] += 1
                        pairs[(answer["pod"], answer["src"])] += 1
                    else:
                        continue
                    break  # budget spent
                except (OSError, ValueError, KeyError):
                    errors += 1
                finally:
                    if sock is not None:
                        sock.close()
        with lock:
            seg.latencies_ns.extend(lat)
            seg.pods.update(pods)
            seg.srcs.update(srcs)
            seg.pairs.update(pairs)
            seg.errors += errors

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + 10)
    seg.elapsed = time.monotonic() - start
    return seg


# -- statistics and report ------------------------------------------------------------------


def percentile(sorted_values: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    idx = max(0, math.ceil(q * len(sorted_values)) - 1)
    return float(sorted_values[idx])


def _stats(segments: Sequence[Segment], pod_node: dict[str, str]) -> dict[str, Any]:
    lat = sorted(v for s in segments for v in s.latencies_ns)
    elapsed = sum(s.elapsed for s in segments)
    pods: Counter[str] = Counter()
    srcs: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    for s in segments:
        pods.update(s.pods)
        srcs.update(s.srcs)
        pairs.update(s.pairs)
    # After SNAT the pod sees the node that took the connection: another node = one more hop.
    nodes = set(pod_node.values())
    cross = sum(n for (pod, src), n in pairs.items() if src in nodes and src != pod_node.get(pod))
    return {
        "requests": len(lat),
        "errors": sum(s.errors for s in segments),
        "seconds": round(elapsed, 3),
        "p50_us": round(percentile(lat, 0.50) / 1000, 1),
        "p90_us": round(percentile(lat, 0.90) / 1000, 1),
        "p99_us": round(percentile(lat, 0.99) / 1000, 1),
        "mean_us": round(sum(lat) / len(lat) / 1000, 1) if lat else 0.0,
        "max_ms": round(lat[-1] / 1e6, 1) if lat else 0.0,
        # Requests slower than STALL_MS: a lost SYN / segment waiting for a retransmission.
        "stalls": len(lat) - bisect.bisect_left(lat, STALL_MS * 1_000_000),
        "rps": round(len(lat) / elapsed, 1) if elapsed else 0.0,
        "pods": dict(sorted(pods.items())),
        "src_ips": dict(srcs.most_common()),
        "cross_node_pct": round(100 * cross / len(lat), 1) if lat else 0.0,
    }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def summarize(
    segments: Sequence[Segment], rounds_done: int, pod_node: dict[str, str]
) -> dict[str, Any]:
    """Pooled figures per (mix, path), direct/NodePort ratios, and per-round p50 ratios."""
    out: dict[str, Any] = {}
    for mix in MIXES:
        segs = [s for s in segments if s.mix == mix]
        if not segs:
            continue
        per_path = {p: _stats([s for s in segs if s.path == p], pod_node) for p in PATHS}
        d, n = per_path["direct"], per_path["nodeport"]
        round_ratios = []
        for r in range(rounds_done):
            by = {s.path: sorted(s.latencies_ns) for s in segs if s.round == r}
            if all(by.get(p) for p in PATHS):
                round_ratios.append(
                    _ratio(percentile(by["direct"], 0.5), percentile(by["nodeport"], 0.5))
                )
        chrono = [x for x in round_ratios if x is not None]
        rr = sorted(chrono)
        out[mix] = {
            **per_path,
            "ratio_direct_over_nodeport": {
                "p50": _ratio(d["p50_us"], n["p50_us"]),
                "p90": _ratio(d["p90_us"], n["p90_us"]),
                "p99": _ratio(d["p99_us"], n["p99_us"]),
                "mean": _ratio(d["mean_us"], n["mean_us"]),
                "rps": _ratio(d["rps"], n["rps"]),
                "p50_per_round": chrono,  # in run order
                "p50_round_median": rr[len(rr) // 2] if rr else None,
            },
        }
    return out


def _spread(pods: dict[str, int]) -> str:
    total = sum(pods.values()) or 1
    return " ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(pods.items()))


def format_report(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        f"direct pod mode vs NodePort (kube-proxy iptables rules) — {cfg['pods']} pods on"
        f" {cfg['nodes']} node(s),"
        f" {result['rounds_done']} rounds x {cfg['duration']} s per mix and path,"
        f" concurrency {cfg['concurrency']}, keep-alive {cfg['keepalive_requests']} req/conn,"
        f" CPUs LB side {cfg['cpus_lb']} / pods {cfg['cpus_pods']},"
        f" {cfg['extra_services']} other Services in KUBE-SERVICES, LB = {cfg['via']}",
        f"machine: {result['machine']['cpus']} CPUs, kernel {result['machine']['kernel']},"
        f" {result['machine']['iptables']}",
        "",
        f"{'mix':<10} {'path':<9} {'requests':>8} {'err':>4} {'p50 µs':>8} {'p90 µs':>8}"
        f" {'p99 µs':>8} {'mean µs':>8} {'req/s':>8} {'stalls':>6} {'x-node':>6}"
        f"  {'source IP seen by pod':<38}"
        " spread over pods",
    ]
    src_label = {LB_IP: "LB"}
    src_label.update({ip_: f"node{k}" for k, ip_ in enumerate(result["addresses"]["nodes"], 1)})
    for mix, m in result["mixes"].items():
        for path in PATHS:
            s = m[path]
            srcs = ",".join(f"{ip_} ({src_label.get(ip_, '?')})" for ip_ in sorted(s["src_ips"]))
            lines.append(
                f"{mix:<10} {path:<9} {s['requests']:>8} {s['errors']:>4} {s['p50_us']:>8}"
                f" {s['p90_us']:>8} {s['p99_us']:>8} {s['mean_us']:>8} {s['rps']:>8}"
                f" {s['stalls']:>6} {s['cross_node_pct']:>5}%"
                f"  {srcs:<38} {_spread(s['pods'])}"
            )
        r = m["ratio_direct_over_nodeport"]
        lines.append(
            f"{mix:<10} {'d/n':<9} {'':>8} {'':>4} {r['p50']!s:>8} {r['p90']!s:>8}"
            f" {r['p99']!s:>8} {r['mean']!s:>8} {r['rps']!s:>8} {'':>6} {'':>6}"
            "  p50 ratio by round (run order): "
            + " ".join(f"{x:.2f}" for x in r["p50_per_round"])
            + f" (median {r['p50_round_median']})"
        )
    lines.append("")
    lines.append(
        f"total {result['seconds_total']} s (setup {result['seconds_setup']} s);"
        f" the pod sees {LB_IP} = the LB (preserved) or a node address (SNAT);"
        " x-node = requests a node forwarded to a pod on another node;"
        f" stalls = requests over {STALL_MS} ms (a TCP retransmission)"
    )
    return "\n".join(lines)


# -- driver ---------------------------------------------------------------------------------


@dataclass
class Config:
    rounds: int = 6
    duration: float = 1.5
    pods: int = 3
    nodes: int = 1
    concurrency: int = 1
    keepalive_requests: int = 100
    max_requests: int = 200_000
    mixes: tuple[str, ...] = MIXES
    extra_services: int = 0
    warmup: float = 0.3
    via: str = "client"  # client | haproxy
    pin: bool = True  # LB side (client, HAProxy) on one CPU, the pods on the others
    max_total: float = 120.0


def _machine() -> dict[str, Any]:
    ipt = subprocess.run(["iptables", "-V"], capture_output=True, text=True, check=False)
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "iptables": ipt.stdout.strip(),
    }


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM / SIGHUP raise SystemExit in the main thread, so ``finally`` cleans up."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_bench(cfg: Config, log: Any = None) -> dict[str, Any]:
    """Build the testbed, run the alternated rounds, clean up; return the result document."""
    t_start = time.monotonic()
    sweep_leftovers()
    tb = Testbed(tag=f"dvn{os.getpid()}x{secrets.token_hex(2)}", nodes=cfg.nodes)
    segments: list[Segment] = []
    rounds_done = 0
    split = cpu_split() if cfg.pin else None
    lb_cpus, pod_cpus = split if split else (None, None)
    old_affinity = os.sched_getaffinity(0)
    with _signals_raise():
        try:
            if lb_cpus:  # this process is the client; its worker threads inherit it
                os.sched_setaffinity(0, lb_cpus)
            build_testbed(
                tb,
                cfg.pods,
                cfg.extra_services,
                haproxy=cfg.via == "haproxy",
                pod_cpus=pod_cpus,
                lb_cpus=lb_cpus,
            )
            t_setup = time.monotonic() - t_start
            targets = {
                "direct": [(p.ip, POD_PORT) for p in tb.pods],
                "nodeport": [(node_ip(k), NODE_PORT) for k in range(1, cfg.nodes + 1)],
            }
            if cfg.via == "haproxy":
                targets = {"direct": [HAPROXY_DIRECT], "nodeport": [HAPROXY_NODEPORT]}

            def segment(path: str, mix: str, rnd: int, duration: float) -> Segment:
                return run_segment(
                    tb.lb,
                    targets[path],
                    path=path,
                    mix=mix,
                    round_no=rnd,
                    duration=duration,
                    max_requests=cfg.max_requests,
                    concurrency=cfg.concurrency,
                    keepalive_requests=cfg.keepalive_requests,
                )

            for mix in cfg.mixes:  # warm-up, not counted
                for path in PATHS:
                    segment(path, mix, -1, cfg.warmup)
            for rnd in range(cfg.rounds):
                if time.monotonic() - t_start > cfg.max_total:
                    break
                # A B B A in even rounds, B A A B in odd ones: a drift within a round and
                # the order of the paths both cancel.
                order = PATHS if rnd % 2 == 0 else PATHS[::-1]
                for mix in cfg.mixes:
                    for path in (*order, *order[::-1]):
                        segments.append(segment(path, mix, rnd, cfg.duration / 2))
                rounds_done += 1
                if log:
                    log(f"round {rnd + 1}/{cfg.rounds} done")
        finally:
            tb.close()
            os.sched_setaffinity(0, old_affinity)
    left = list_bench_netns(tb.tag)
    return {
        "tag": tb.tag,
        "config": {
            "rounds": cfg.rounds,
            "duration": cfg.duration,
            "pods": cfg.pods,
            "nodes": cfg.nodes,
            "concurrency": cfg.concurrency,
            "keepalive_requests": cfg.keepalive_requests,
            "max_requests": cfg.max_requests,
            "extra_services": cfg.extra_services,
            "via": cfg.via,
            "cpus_lb": sorted(lb_cpus) if lb_cpus else None,
            "cpus_pods": sorted(pod_cpus) if pod_cpus else None,
        },
        "machine": _machine(),
        "addresses": {
            "lb": LB_IP,
            "nodes": [node_ip(k) for k in range(1, cfg.nodes + 1)],
            "pods": {p.name: {"ip": p.ip, "node": node_ip(p.node)} for p in tb.pods},
        },
        "rounds_done": rounds_done,
        "mixes": summarize(segments, rounds_done, {p.name: node_ip(p.node) for p in tb.pods}),
        "seconds_setup": round(t_setup, 2),
        "seconds_total": round(time.monotonic() - t_start, 2),
        "leftover_netns": left,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.direct_vs_nodeport", description=__doc__)
    ap.add_argument("--rounds", type=int, default=6, help="alternated rounds (default 6)")
    ap.add_argument(
        "--duration", type=float, default=1.5, help="seconds per mix and path per round"
    )
    ap.add_argument("--pods", type=int, default=3, help="pod namespaces (>= 2)")
    ap.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="node namespaces (pods spread over them; the NodePort is used on each, so"
        " kube-proxy sends some connections to a pod on another node: the extra hop)",
    )
    ap.add_argument("--concurrency", type=int, default=1, help="client connections in parallel")
    ap.add_argument("--keepalive-requests", type=int, default=100, help="requests per conn")
    ap.add_argument("--max-requests", type=int, default=200_000, help="cap per segment")
    ap.add_argument("--mix", choices=[*MIXES, "both"], default="both")
    ap.add_argument(
        "--extra-services", type=int, default=0, help="other Services walked in KUBE-SERVICES"
    )
    ap.add_argument(
        "--via",
        choices=["client", "haproxy"],
        default="client",
        help="the LB: the bench's own client (picks the pod itself in direct mode) or an"
        " HAProxy in mode tcp in the lb namespace, the client talking to it on loopback",
    )
    ap.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the LB side to the first CPU and the pods to the others",
    )
    ap.add_argument("--json", action="store_true", help="print the JSON document only")
    ap.add_argument("--cleanup", action="store_true", help="remove leftover bench namespaces")
    ap.add_argument("--serve-pod", metavar="NAME", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=POD_PORT, help=argparse.SUPPRESS)
    ap.add_argument("--cpus", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_pod:
        cpus = {int(c) for c in args.cpus.split(",") if c}
        serve_pod(args.serve_pod, args.port, cpus or None)
        return 0
    if os.geteuid() != 0:
        print("needs root (creates network namespaces)", file=sys.stderr)
        return 2
    if args.cleanup:
        for ns in sweep_leftovers():
            print(f"removed {ns}")
        return 0
    if not 1 <= args.nodes <= 9 or args.nodes > args.pods:
        ap.error("need 1 <= --nodes <= min(9, --pods)")
    if args.pods < 2 or args.rounds < 1 or args.duration <= 0 or args.concurrency < 1:
        ap.error("need --pods >= 2, --rounds >= 1, --duration > 0, --concurrency >= 1")
    cfg = Config(
        rounds=args.rounds,
        duration=args.duration,
        pods=args.pods,
        nodes=args.nodes,
        concurrency=args.concurrency,
        keepalive_requests=args.keepalive_requests,
        max_requests=args.max_requests,
        mixes=MIXES if args.mix == "both" else (args.mix,),
        extra_services=args.extra_services,
        warmup=min(0.3, args.duration),
        via=args.via,
        pin=args.pin,
    )
    log = None if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    result = run_bench(cfg, log=log)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 1 if result["leftover_netns"] else 0


if __name__ == "__main__":
    sys.exit(main())
