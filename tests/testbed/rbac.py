"""The Kubernetes permissions the agent is granted: the same rules as ``daemonset/rbac.yaml``.

Tests give the agent a token limited to exactly these, so any request outside them is a 403 the
test catches (and a test checks the manifests grant the same).
"""

from __future__ import annotations

from tests.testbed.kubeapi import Rule

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
