"""Discovery: ``/version``, ``/api``, ``/apis`` and the resource lists, from resources.py."""

from __future__ import annotations

from typing import Any

from .resources import GROUPS, RESOURCES


def discovery(path: str, host: str, port: int) -> Any:
    """The non-resource document at ``path`` (version, API groups, resource lists), or None."""
    if path == "/version":
        return {
            "major": "1",
            "minor": "34",
            "gitVersion": "v1.34.0-podlb-testbed",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.24.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        }
    if path == "/api":
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{host}:{port}"}
            ],
        }
    if path == "/apis":
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [_group_doc(g) for g in GROUPS],
        }
    if path == "/api/v1":
        return _resource_list("", "v1")
    parts = path.strip("/").split("/")
    if parts[0] == "apis" and len(parts) == 2 and parts[1] in GROUPS:
        return {"kind": "APIGroup", "apiVersion": "v1", **_group_doc(parts[1])}
    if parts[0] == "apis" and len(parts) == 3 and parts[2] in GROUPS.get(parts[1], []):
        return _resource_list(parts[1], parts[2])
    return None


def _group_doc(group: str) -> dict[str, Any]:
    versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in GROUPS[group]]
    return {"name": group, "versions": versions, "preferredVersion": versions[0]}


def _resource_list(group: str, version: str) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for r in RESOURCES:
        if r.group != group or r.version != version:
            continue
        out.append(
            {
                "name": r.name,
                "singularName": r.singular,
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": list(r.verbs),
                "shortNames": list(r.short_names),
                "storageVersionHash": "",
            }
        )
        for sub in r.subresources:
            if sub == "binding":
                out.append(
                    {
                        "name": f"{r.name}/binding",
                        "singularName": "",
                        "namespaced": True,
                        "kind": "Binding",
                        "verbs": ["create"],
                    }
                )
            else:
                out.append(
                    {
                        "name": f"{r.name}/{sub}",
                        "singularName": "",
                        "namespaced": r.namespaced,
                        "kind": r.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}
