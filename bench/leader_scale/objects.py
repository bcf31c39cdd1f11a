"""The cluster's objects as a Deployment and its kubelet make them: the pods' plan, their
manifests (the size a Deployment's pods really have), statuses and patches, and the direct
Services."""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from typing import Any

GATE = "podlb.io/lb-ready"
NAMESPACES = 10
PER_NODE = 110
ENV = (4, 1, 0)  # plain env vars of the three containers (besides the downward-API ones)


def now_rfc3339(offset: float = 0.0) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset))


def _hex(seed: str, n: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:n]


# -- objects ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PodPlan:
    namespace: str
    name: str
    node: str
    app: str
    rs: str  # the fake ReplicaSet's name
    ip: str
    backend: bool
    probe: bool = False  # created not ContainersReady; turned ready during the churn


def env_vars(app: str, container: str, n: int, refs: int = 5) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {
            "name": "POD_NAME",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
        },
        {
            "name": "POD_NAMESPACE",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
        },
        {
            "name": "POD_IP",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}},
        },
        {
            "name": "NODE_NAME",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}},
        },
        {
            "name": "GOMAXPROCS",
            "valueFrom": {
                "resourceFieldRef": {
                    "containerName": container,
                    "divisor": "0",
                    "resource": "limits.cpu",
                }
            },
        },
    ][:refs]
    for i in range(n):
        out.append({"name": f"{container.upper()}_SETTING_{i}", "value": f"{app}-value-{i:04d}"})
    return out


def probe(path: str, port: str, period: int, failure: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port, "scheme": "HTTP"},
        "periodSeconds": period,
        "failureThreshold": failure,
        "timeoutSeconds": 1,
        "successThreshold": 1,
    }


def pod_manifest(p: PodPlan, port: int) -> dict[str, Any]:
    """A pod as a ReplicaSet creates it from a typical Deployment's template."""
    labels = {
        "app": p.app,
        "pod-template-hash": p.rs.rsplit("-", 1)[1],
        "app.kubernetes.io/name": p.app,
        "app.kubernetes.io/instance": f"{p.app}-prod",
        "app.kubernetes.io/version": "1.24.3",
        "app.kubernetes.io/part-of": "shop",
        "bench.podlb.io/role": "backend" if p.backend else "other",
    }
    mounts = [
        {"name": "config", "mountPath": "/etc/app", "readOnly": True},
        {"name": "tls", "mountPath": "/etc/tls", "readOnly": True},
        {"name": "cache", "mountPath": "/var/cache/app"},
    ]
    containers = [
        {
            "name": "app",
            "image": f"registry.example.com/shop/{p.app}:1.24.3",
            "imagePullPolicy": "IfNotPresent",
            "args": ["--config=/etc/app/config.yaml", "--listen=:8080", "--metrics=:9090"],
            "ports": [
                {"name": "http", "containerPort": port, "protocol": "TCP"},
                {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
            ],
            "env": env_vars(p.app, "app", ENV[0]),
            "resources": {
                "requests": {"cpu": "250m", "memory": "256Mi"},
                "limits": {"cpu": "1", "memory": "512Mi"},
            },
            "volumeMounts": mounts,
            "livenessProbe": probe("/livez", "http", 10, 3),
            "readinessProbe": probe("/readyz", "http", 5, 3),
            "startupProbe": probe("/livez", "http", 2, 30),
            "lifecycle": {"preStop": {"httpGet": {"path": "/v1/drain", "port": 9809}}},
        },
        {
            "name": "proxy",
            "image": "registry.example.com/mesh/proxy:1.29.1",
            "args": ["proxy", "sidecar", "--log-level=warning", "--concurrency=2"],
            "ports": [{"name": "proxy-admin", "containerPort": 15000, "protocol": "TCP"}],
            "env": env_vars(p.app, "proxy", ENV[1], 3),
            "resources": {
                "requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"cpu": "500m", "memory": "256Mi"},
            },
            "readinessProbe": probe("/healthz/ready", "proxy-admin", 2, 30),
            "volumeMounts": [{"name": "tls", "mountPath": "/etc/tls", "readOnly": True}],
        },
        {
            "name": "logs",
            "image": "registry.example.com/ops/log-shipper:2.2.0",
            "env": env_vars(p.app, "logs", ENV[2], 2),
            "resources": {
                "requests": {"cpu": "20m", "memory": "32Mi"},
                "limits": {"cpu": "100m", "memory": "64Mi"},
            },
            "volumeMounts": [{"name": "cache", "mountPath": "/var/cache/app", "readOnly": True}],
        },
    ]
    spec: dict[str, Any] = {
        "nodeName": p.node,
        "containers": containers,
        "volumes": [
            {"name": "config", "configMap": {"name": f"{p.app}-config", "defaultMode": 420}},
            {"name": "tls", "secret": {"secretName": f"{p.app}-tls", "defaultMode": 420}},
            {"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
        "terminationGracePeriodSeconds": 60,
        "securityContext": {"fsGroup": 1000},
    }
    if p.backend:
        spec["readinessGates"] = [{"conditionType": GATE}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": p.name,
            "generateName": f"{p.rs}-",
            "namespace": p.namespace,
            "labels": labels,
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
                "checksum/config": _hex(p.app + "config", 64),
                "kubectl.kubernetes.io/restartedAt": "2024-05-02T09:14:11Z",
            },
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": p.rs,
                    "uid": f"{_hex(p.rs, 8)}-0000-4000-8000-{_hex(p.rs + 'u', 12)}",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def lb_ready_condition(p: PodPlan, port: int) -> dict[str, Any]:
    """``podlb.io/lb-ready`` as the leader writes it for a backend in rotation."""
    pool = f"{p.namespace}.{p.app}.http"
    return {
        "type": GATE,
        "status": "True",
        "reason": "Healthy",
        "message": f"{pool}/{p.ip}_{port}: in rotation, LB health checks pass",
        "lastTransitionTime": now_rfc3339(-300),
    }


def pod_status(
    p: PodPlan, ready: bool, restarts: int = 0, admitted_on: int | None = None
) -> dict[str, Any]:
    """What the kubelet writes once the pod runs (strategic merge on ``pods/status``); with
    ``admitted_on`` (the serving port), a backend also as a converged leader left it."""
    started = now_rfc3339(-600)
    status = "True" if ready else "False"
    reason = (
        {}
        if ready
        else {"reason": "ContainersNotReady", "message": "containers with unready status: [app]"}
    )
    conditions = [
        {
            "type": "Initialized",
            "status": "True",
            "lastProbeTime": None,
            "lastTransitionTime": started,
        },
        {
            "type": "ContainersReady",
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": now_rfc3339(),
            **reason,
        },
        {
            "type": "PodScheduled",
            "status": "True",
            "lastProbeTime": None,
            "lastTransitionTime": started,
        },
    ]
    if admitted_on is not None:
        conditions.append(lb_ready_condition(p, admitted_on))
    if not p.backend or not ready or admitted_on is not None:  # gated: Ready once lb-ready is
        conditions.append(
            {
                "type": "Ready",
                "status": status,
                "lastProbeTime": None,
                "lastTransitionTime": now_rfc3339(),
                **reason,
            }
        )
    else:
        conditions.append(
            {
                "type": "Ready",
                "status": "False",
                "lastProbeTime": None,
                "lastTransitionTime": now_rfc3339(),
                "reason": "ReadinessGatesNotReady",
                "message": f'corresponding condition of pod readiness gate "{GATE}" '
                "does not exist.",
            }
        )
    images = {
        "app": f"registry.example.com/shop/{p.app}:1.24.3",
        "proxy": "registry.example.com/mesh/proxy:1.29.1",
        "logs": "registry.example.com/ops/log-shipper:2.2.0",
    }
    containers = [
        {
            "name": name,
            "image": image,
            "imageID": f"{image.rsplit(':', 1)[0]}@sha256:{_hex(image, 64)}",
            "containerID": f"containerd://{_hex(p.name + name + str(restarts), 64)}",
            "ready": ready or name != "app",
            "started": True,
            "restartCount": restarts,
            "state": {"running": {"startedAt": started}},
            "lastState": {}
            if not restarts
            else {
                "terminated": {
                    "exitCode": 137,
                    "reason": "OOMKilled",
                    "startedAt": started,
                    "finishedAt": now_rfc3339(),
                    "containerID": f"containerd://{_hex(p.name + name + str(restarts - 1), 64)}",
                }
            },
        }
        for name, image in images.items()
    ]
    return {
        "status": {
            "phase": "Running",
            "conditions": conditions,
            "hostIP": "10.0.0.1",
            "hostIPs": [{"ip": "10.0.0.1"}],
            "podIP": p.ip,
            "podIPs": [{"ip": p.ip}],
            "startTime": started,
            "containerStatuses": containers,
        }
    }


def conditions_patch(ready: bool, gated: bool) -> dict[str, Any]:
    """The kubelet's write when a container's readiness probe flips."""
    status = "True" if ready else "False"
    reason = (
        {}
        if ready
        else {"reason": "ContainersNotReady", "message": "containers with unready status: [app]"}
    )
    conds = [
        {"type": "ContainersReady", "status": status, "lastTransitionTime": now_rfc3339(), **reason}
    ]
    if not ready or not gated:
        conds.append(
            {"type": "Ready", "status": status, "lastTransitionTime": now_rfc3339(), **reason}
        )
    return {"status": {"conditions": conds}}


def plan_pods(pods: int, services: int, per_service: int, probe_services: int) -> list[PodPlan]:
    """Backends and other pods over fake nodes of 110; the two agents' nodes (node-0000, the
    leader's, and node-0001) hold no backend."""
    backends = services * per_service
    if backends > pods - 2 * PER_NODE:
        raise SystemExit(f"--pods {pods} leaves no room for {backends} backends + 2 agent nodes")
    if max(backends, pods - backends) > 250 * 256:
        raise SystemExit("more pods than addresses in 198.18.0.0/15")
    plans: list[PodPlan] = []
    rng = random.Random(7)
    others = pods - backends
    items: list[tuple[bool, int, int]] = [
        (True, s, r) for s in range(services) for r in range(per_service)
    ]
    items += [(False, o // 10, o % 10) for o in range(others)]
    agent_items = [x for x in items if not x[0]][: 2 * PER_NODE]
    rest = items[: len(items) - others] + [x for x in items if not x[0]][2 * PER_NODE :]
    rng.shuffle(rest)
    ordered = agent_items + rest
    for i, (backend, group, replica) in enumerate(ordered):
        node = f"node-{i // PER_NODE:04d}"
        ns = f"bench-{group % NAMESPACES}"
        app = f"svc-{group:04d}" if backend else f"app-{group:04d}"
        rs = f"{app}-{_hex(app, 10)}"
        name = f"{rs}-{_hex(f'{app}{replica}', 5)}"
        if backend:
            n = group * per_service + replica
            ip = f"198.18.{n // 250}.{n % 250 + 1}"
        else:
            n = group * 10 + replica
            ip = f"198.19.{n // 250}.{n % 250 + 1}"
        probe_pod = backend and group >= services - probe_services
        plans.append(PodPlan(ns, name, node, app, rs, ip, backend, probe_pod))
    return plans


def service_manifest(i: int) -> dict[str, Any]:
    app = f"svc-{i:04d}"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": app,
            "namespace": f"bench-{i % NAMESPACES}",
            "annotations": {"podlb.io/direct": "true"},
        },
        # Headless: the control plane's Service range has no room for 1,000 ClusterIPs, and
        # podlb.io/direct counts on any type.
        "spec": {
            "clusterIP": "None",
            "selector": {"app": app},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }
