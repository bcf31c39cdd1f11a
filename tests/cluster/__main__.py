"""``python -m tests.cluster``: a real single-node cluster with podlb deployed, until Ctrl-C.

Builds the images (cached), starts the cluster and HAProxy on the node, applies
``tests/cluster/overlay`` (``daemonset/`` with the image and the LB ConfigMap changed), prints
the kubeconfig to use, and waits. Ctrl-C or SIGTERM removes everything it created.
"""

from __future__ import annotations

import signal
import sys
import threading

from tests.cluster.cluster import running_cluster
from tests.cluster.images import agent_image, app_image, pause_image
from tests.cluster.podlb import APP_NS, BACKENDS, Podlb, node_haproxy


def main() -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("building images (cached after the first run) ...", file=sys.stderr, flush=True)
    images = (pause_image(), agent_image(), app_image())
    with running_cluster(images) as cluster, node_haproxy() as lb:
        podlb = Podlb(cluster)
        podlb.install()
        fronts = ", ".join(f"{be} -> {lb.url(be)}" for be in BACKENDS)
        print(f"""cluster up in {cluster.up_seconds:.1f} s; podlb is running.
  export KUBECONFIG={cluster.admin_kubeconfig}
  kubectl -n podlb-system get pods,lease
  kubectl apply -f YOUR-APP.yaml   # namespace {APP_NS}: HAProxy has a backend per test Service
HAProxy frontends: {fronts}
Ctrl-C removes the cluster and everything it created.""", flush=True)  # fmt: skip
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
