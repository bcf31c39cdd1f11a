"""What a request asks: the path and method read as kube-apiserver reads them (verb, resource,
subresource, namespace, name), and the record kept of each request."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import ApiError
from .resources import BY_GV, Resource

NAMESPACE_SUBRESOURCES = {"status", "finalize"}
NON_RESOURCE_OK = {"/healthz", "/livez", "/readyz"}


class RecordedRequest(NamedTuple):
    verb: str
    resource: str
    subresource: str | None
    namespace: str | None
    name: str | None
    code: int
    user: str = ""  # who made it ("" when unauthenticated)


@dataclass
class RequestInfo:
    method: str
    path: str
    query: dict[str, str]
    verb: str = ""
    resource: Resource | None = None
    subresource: str | None = None
    namespace: str | None = None
    name: str | None = None
    discovery: Any = None  # a non-resource document to serve
    user: str = ""  # set once the bearer token is known


def parse_request(method: str, raw_path: str) -> RequestInfo:
    parsed = urllib.parse.urlsplit(raw_path)
    query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query).items()}
    path = parsed.path.rstrip("/") or "/"
    info = RequestInfo(method, path, query)
    parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif parts[0] == "apis" and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        rest = []
        group = version = ""
    if not rest:
        info.verb = method.lower()
        return info
    ns: str | None = None
    if (
        rest[0] == "namespaces"
        and len(rest) >= 3
        and not (len(rest) == 3 and rest[2] in NAMESPACE_SUBRESOURCES)
    ):
        ns, rest = rest[1], rest[2:]
    res = BY_GV.get((group, version, rest[0]))
    if res is None:
        raise ApiError(404, "the server could not find the requested resource", "NotFound", {})
    info.resource = res
    info.namespace = ns
    if len(rest) >= 2:
        info.name = rest[1]
    if len(rest) >= 3:
        info.subresource = rest[2]
    if len(rest) > 3 or (info.subresource and info.subresource not in res.subresources):
        raise ApiError(404, "the server could not find the requested resource", "NotFound", {})
    if not res.namespaced and ns:
        raise ApiError(404, "the server could not find the requested resource", "NotFound", {})
    if res.namespaced and info.name and not ns:
        raise ApiError(404, "the server could not find the requested resource", "NotFound", {})
    watch = query.get("watch", "").lower() in ("true", "1")
    if method == "GET":
        info.verb = "watch" if watch else ("get" if info.name else "list")
    elif method == "POST":
        info.verb = "create"
    elif method == "PUT":
        info.verb = "update"
    elif method == "PATCH":
        info.verb = "patch"
    elif method == "DELETE":
        info.verb = "delete" if info.name else "deletecollection"
    else:
        info.verb = method.lower()
    if method in ("PUT", "PATCH") and not info.name:
        raise ApiError(
            405,
            "the server does not allow this method on the requested resource",
            "MethodNotAllowed",
            {},
        )
    if method == "POST" and info.name and info.subresource != "binding":
        raise ApiError(
            405,
            "the server does not allow this method on the requested resource",
            "MethodNotAllowed",
            {},
        )
    return info
