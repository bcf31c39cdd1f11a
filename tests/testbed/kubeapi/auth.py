"""Who may do what: bearer tokens map to a user and RBAC-like :class:`Rule` s; a request no
rule allows is answered 403 as kube-apiserver words it (:func:`forbidden`)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from .errors import ApiError
from .routing import RequestInfo


@dataclass
class Rule:
    """An RBAC-like rule. ``None`` namespaces = all namespaces and cluster scope; ``None``
    api_groups = any group. Resources may name subresources ("pods/status"); "*" matches all."""

    verbs: Collection[str]
    resources: Collection[str]
    namespaces: Collection[str] | None = None
    api_groups: Collection[str] | None = None

    def allows(self, info: RequestInfo) -> bool:
        if "*" not in self.verbs and info.verb not in self.verbs:
            return False
        res = info.resource.name if info.resource else ""
        full = f"{res}/{info.subresource}" if info.subresource else res
        if "*" not in self.resources and full not in self.resources:
            return False
        group = info.resource.group if info.resource else ""
        if (
            self.api_groups is not None
            and "*" not in self.api_groups
            and (group not in self.api_groups)
        ):
            return False
        return self.namespaces is None or bool(info.namespace and info.namespace in self.namespaces)


def forbidden(user: str, info: RequestInfo) -> ApiError:
    res = info.resource
    assert res is not None
    full = f"{res.name}/{info.subresource}" if info.subresource else res.name
    what = f"{res.name}.{res.group}" if res.group else res.name
    if info.name:
        what += f' "{info.name}"'
    scope = f'in the namespace "{info.namespace}"' if info.namespace else "at the cluster scope"
    msg = (
        f'{what} is forbidden: User "{user}" cannot {info.verb} resource "{full}" in API group '
        f'"{res.group}" {scope}'
    )
    details: dict[str, Any] = {"kind": res.name}
    if info.name:
        details["name"] = info.name
    if res.group:
        details["group"] = res.group
    return ApiError(403, msg, "Forbidden", details)
