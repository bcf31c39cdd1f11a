"""Direct pod mode vs NodePort: latency, throughput, source IP and spread, on real namespaces.

Run (root)::

    .venv/bin/python -m bench.direct_vs_nodeport [--rounds 6] [--duration 1.5] [--json]

(run it with ``-m`` from the repository root: it is the package ``bench/direct_vs_nodeport/``
-- topology (the namespaces), podapp, kubeproxy (the rules), load, report, run -- and imports
``bench.`` and ``tests.`` modules.)

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

from bench.direct_vs_nodeport.topology import (
    LB_IP,
    list_bench_netns,
    node_ip,
    sweep_leftovers,
)

__all__ = ["LB_IP", "list_bench_netns", "node_ip", "sweep_leftovers"]
