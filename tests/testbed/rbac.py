"""The Kubernetes permissions the agent is granted: the same rules as ``daemonset/rbac.yaml``.

Tests give the agent a token limited to exactly these, so any request outside them is a 403 the
test catches (and a test checks the manifests grant the same).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from kubernetes import client

from tests.testbed.kubeapi import KubeAPIServer, Rule
from tests.testbed.kubeapi.process import KubeAPIProcess

AGENT_NAMESPACE = "podlb-system"
AGENT_TOKEN = "podlb-system:podlb-agent"

CLUSTER_RULES = [
    Rule(verbs={"get", "list", "watch"}, resources={"pods"}, api_groups={""}),
    Rule(verbs={"patch"}, resources={"pods/status"}, api_groups={""}),
    Rule(verbs={"get", "list", "watch"}, resources={"services"}, api_groups={""}),
    Rule(
        verbs={"get", "list", "watch"},
        resources={"endpointslices"},
        api_groups={"discovery.k8s.io"},
    ),
    Rule(verbs={"create", "patch"}, resources={"events"}, api_groups={"", "events.k8s.io"}),
]
NAMESPACE_RULES = [
    Rule(
        verbs={"get", "create", "update"},
        resources={"leases"},
        namespaces={AGENT_NAMESPACE},
        api_groups={"coordination.k8s.io"},
    ),
]
AGENT_RULES = CLUSTER_RULES + NAMESPACE_RULES


@contextlib.contextmanager
def agent_cluster(*namespaces: str) -> Iterator[KubeAPIServer]:
    """An API double with the agent's token, its namespace and ``namespaces`` created."""
    with KubeAPIServer(port=0) as api:
        api.add_token(AGENT_TOKEN, AGENT_RULES)
        _namespaces(api, namespaces)
        yield api


@contextlib.contextmanager
def agent_cluster_process(*namespaces: str) -> Iterator[KubeAPIProcess]:
    """The same in a process of its own (:mod:`tests.testbed.kubeapi.process`)."""
    with KubeAPIProcess({AGENT_TOKEN: AGENT_RULES}) as api:
        _namespaces(api, namespaces)
        yield api


def _namespaces(api: KubeAPIServer | KubeAPIProcess, namespaces: tuple[str, ...]) -> None:
    core = client.CoreV1Api(api.api_client())
    for ns in (AGENT_NAMESPACE, *namespaces):
        core.create_namespace({"metadata": {"name": ns}})
