"""The NodePort rules kube-proxy (iptables mode) writes, as ``iptables-restore`` input."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

POD_PORT = 8080
NODE_PORT = 30080
POD_CIDR = "10.245.0.0/16"
CLUSTER_IP = "10.96.245.10"  # the Service's ClusterIP (only in the rules, never used)
SERVICE_PORT = 80
SERVICE_PORT_NAME = "bench/web:http"  # namespace/name:portname, as kube-proxy hashes it
MASQ_MARK = "0x4000"


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
