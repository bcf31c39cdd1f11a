"""Benchmark: the leader and a node agent at cluster scale, against a real kube-apiserver (the
package: ``objects`` the pods and Services, ``procs`` the API and the agents' processes,
``backends`` the timed pods, ``run`` the run, ``report`` the table).

A :class:`tests.cluster.cluster.ControlPlane` (etcd, kube-apiserver and the
kube-controller-manager's EndpointSlice, namespace, service-account and pod-GC controllers on
127.0.0.1; no node, no kubelet) holds ``--pods`` pods bound to fake Nodes (110 per node) that
look like a Deployment's: three containers with env, probes, resources and volume mounts, an
owner reference, the API server's own defaults and ``managedFields`` from a create by the
controller manager and status patches by the kubelet (the stored size is printed). Their
statuses are patched as a kubelet would (pod IP, start time, container statuses,
``Initialized``, ``ContainersReady``, ``Ready``). ``--services`` headless Services with
``podlb.io/direct: "true"`` select ``--per-service`` pods each (10,000 backends by default);
the other pods belong to no direct Service. Pod IPs are in 198.18.0.0/15 (the benchmarking
range), routed to this host's loopback for the run (the API server refuses loopback endpoint
addresses), where one listener accepts HAProxy's TCP health checks for all of them.

One agent (``python -m agent run --lb haproxy``, the image's Python settings) leads and drives a
real HAProxy with one backend per Service; a second agent does its node's work for a node of
110 pods, watches every Service and stays a Lease candidate. The agents' nodes host no backend
(the fake nodes have no pod namespaces: the node agent would rightly report the pods
``datapath-ready=False``). By default the leader takes over a converged cluster (a failover:
the LB and every backend's ``lb-ready`` as a previous leader left them) and "first
convergence" is its start until its first full round, which must change nothing; with
``--fresh`` the LB is empty and no pod has ``lb-ready`` yet, and it is the start until every
server is UP (the ``lb-ready`` writes are timed apart).

Then churn, for ``--churn-s`` seconds: ``--churn`` backends a second turn not ContainersReady
and back 5 s later, ``--noise`` status writes a second on other pods (a container restart),
and the pods of ``--probe-services`` Services, created not ContainersReady, turn ready one a
second; ContainersReady -> ``lb-ready=True`` is timed on each (p50 / p99). The bench plays the
kubelet's part of the readiness gate (Ready once ``lb-ready`` is True). Then, at rest: API
requests per second (``podlb_kube_requests_total``) and CPU of both agents; their RSS peak and
steady (VmHWM / VmRSS).

    .venv/bin/python -m bench.leader_scale [--pods 30000] [--services 1000]
        [--per-service 10] [--threads 8] [--churn 2] [--noise 20] [--churn-s 60]
        [--window 30] [--status-rate 100] [--fresh] [--baseline DIR] [--json]

``--baseline DIR`` first measures the agents of another checkout (``git archive <commit> | tar
-x -C DIR``) on the same cluster, then this one's, and prints both. Setting up 30,000 pods takes
about 15 minutes on a 2-core machine (printed).
"""
