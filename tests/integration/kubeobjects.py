"""The smallest API objects the integration tests create on the API testbed."""

from __future__ import annotations

from typing import Any


def pod(name: str, namespace: str = "default", node: str = "n1") -> dict[str, Any]:
    """A pod bound to ``node``: one container, nothing else (the testbed fills the rest)."""
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
    }
