"""The resource routes: one function per verb over the store (get, list, create, update, patch,
delete, deletecollection; pods/binding), answering what kube-apiserver answers."""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Callable
from typing import Any

from .errors import ApiError, bad_request, conflict, not_found
from .lists import list_page, strip_list_item
from .patches import json_patch, merge_patch, strategic_merge_patch
from .resources import BY_KEY, Resource
from .routing import RequestInfo
from .store import RETURN_DELETED, Obj, Store

Answer = tuple[int, Any]


def body_json(raw: bytes) -> Any:
    if not raw:
        raise bad_request("the body of the request was empty")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"couldn't get version/kind; json parse error: {e}") from None


def _object(raw: bytes, res: Resource) -> Obj:
    body = body_json(raw)
    if not isinstance(body, dict):
        raise bad_request(f"the object provided is unrecognized (must be of type {res.kind})")
    return body


def _get(store: Store, info: RequestInfo, res: Resource, raw: bytes, ctype: str) -> Answer:
    obj = store.get(res.key, info.namespace, info.name or "")
    if obj is None:
        raise not_found(res.name, res.group, info.name or "")
    return 200, obj


def _list(store: Store, info: RequestInfo, res: Resource, raw: bytes, ctype: str) -> Answer:
    return 200, list_page(store, info)


def _create(store: Store, info: RequestInfo, res: Resource, raw: bytes, ctype: str) -> Answer:
    body = _object(raw, res)
    if info.subresource == "binding":
        return bind(store, info, body)
    if body.get("kind") and body["kind"] != res.kind:
        raise bad_request(
            f"the object provided is unrecognized (must be of type {res.kind}): "
            f"kind {body['kind']!r}"
        )
    if info.query.get("dryRun"):
        return 201, body
    return 201, store.create(res.key, body, info.namespace)


def _update(store: Store, info: RequestInfo, res: Resource, raw: bytes, ctype: str) -> Answer:
    body = _object(raw, res)
    ns = info.namespace
    meta = body.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise bad_request("metadata must be an object")
    if meta.get("name") and meta["name"] != info.name:
        raise bad_request(
            f"the name of the object ({meta['name']}) does not match the name on the "
            f"URL ({info.name})"
        )
    meta["name"] = info.name
    if ns and meta.get("namespace") and meta["namespace"] != ns:
        raise bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
        )
    if ns:
        meta["namespace"] = ns
    return 200, store.update(res.key, body, ns, info.subresource)


def _patch(store: Store, info: RequestInfo, res: Resource, raw: bytes, ctype: str) -> Answer:
    patch = body_json(raw)
    fn: Callable[[Obj], Obj]
    if ctype == "application/json-patch+json":
        if not isinstance(patch, list):
            raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        fn = lambda cur: json_patch(cur, patch)  # noqa: E731
    elif ctype == "application/merge-patch+json":
        fn = lambda cur: merge_patch(cur, patch)  # noqa: E731
    elif ctype == "application/strategic-merge-patch+json":
        if not isinstance(patch, dict):
            raise bad_request(
                "json: cannot unmarshal array into Go value of type map[string]interface {}"
            )
        fn = lambda cur: strategic_merge_patch(cur, patch)  # noqa: E731
    else:
        raise ApiError(
            415,
            f"the body of the request was in an unknown format - accepted media types "
            f"include: application/json-patch+json, application/merge-patch+json, "
            f"application/strategic-merge-patch+json (got {ctype!r})",
            "UnsupportedMediaType",
        )
    return 200, store.mutate(res.key, info.namespace, info.name or "", fn, info.subresource)


def _delete(store: Store, info: RequestInfo, res: Resource, raw: bytes, ctype: str) -> Answer:
    opts: dict[str, Any] = {}
    if raw.strip():
        opts = body_json(raw)
        if not isinstance(opts, dict):
            raise bad_request("DeleteOptions must be an object")
    elif "gracePeriodSeconds" in info.query:
        opts["gracePeriodSeconds"] = info.query["gracePeriodSeconds"]
    grace = opts.get("gracePeriodSeconds")
    try:
        grace_i = None if grace is None else int(grace)
    except (TypeError, ValueError):
        raise bad_request(f"invalid gracePeriodSeconds {grace!r}") from None
    obj, gone = store.delete(
        res.key, info.namespace, info.name or "", grace_i, opts.get("preconditions")
    )
    if gone and res.key not in RETURN_DELETED:
        details: dict[str, Any] = {
            "name": info.name,
            "kind": res.name,
            "uid": obj["metadata"]["uid"],
        }
        if res.group:
            details["group"] = res.group
        return 200, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }
    return 200, obj


def _delete_collection(
    store: Store, info: RequestInfo, res: Resource, raw: bytes, ctype: str
) -> Answer:
    items = list_page(store, info)["items"]
    out = []
    for it in items:
        m = it["metadata"]
        with contextlib.suppress(ApiError):
            out.append(store.delete(res.key, m.get("namespace"), m["name"])[0])
    return 200, {
        "kind": f"{res.kind}List",
        "apiVersion": res.api_version,
        "metadata": {},
        "items": [strip_list_item(o) for o in out],
    }


_ROUTES: dict[str, Callable[[Store, RequestInfo, Resource, bytes, str], Answer]] = {
    "get": _get,
    "list": _list,
    "create": _create,
    "update": _update,
    "patch": _patch,
    "delete": _delete,
    "deletecollection": _delete_collection,
}


def route(store: Store, info: RequestInfo, raw: bytes, content_type: str) -> Answer:
    """(code, body) of a resource request other than a watch; ``content_type`` without
    parameters, lower case."""
    res = info.resource
    assert res is not None
    fn = _ROUTES.get(info.verb)
    if fn is None:
        raise ApiError(
            405,
            "the server does not allow this method on the requested resource",
            "MethodNotAllowed",
            {},
        )
    return fn(store, info, res, raw, content_type)


def bind(store: Store, info: RequestInfo, body: Obj) -> Answer:
    """``pods/binding``: the one way to set ``spec.nodeName`` (and PodScheduled)."""
    target = body.get("target") or {}
    node = target.get("name")
    if not node:
        raise ApiError(422, 'Binding "" is invalid: target.name: Required value', "Invalid")
    name = info.name or ""

    def assign(cur: Obj) -> Obj:
        spec = cur.setdefault("spec", {})
        if spec.get("nodeName"):
            raise conflict(
                "pods", "", name, f'pod {name} is already assigned to node "{spec["nodeName"]}"'
            )
        spec["nodeName"] = node
        return cur

    store_obj = store.get("pods", info.namespace, name)
    if store_obj is None:
        raise not_found("pods", "", name)
    # the binding subresource is the one way to set spec.nodeName
    with store.lock:
        cur = store._objs["pods"].get((info.namespace or "", name))
        if cur is None:
            raise not_found("pods", "", name)
        new = assign(copy.deepcopy(cur))
        conds = [
            c
            for c in (new.get("status") or {}).get("conditions") or []
            if c.get("type") != "PodScheduled"
        ]
        conds.append(
            {
                "type": "PodScheduled",
                "status": "True",
                "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "lastProbeTime": None,
            }
        )
        new.setdefault("status", {})["conditions"] = conds
        new["metadata"]["generation"] = int(cur["metadata"].get("generation") or 1) + 1
        store._commit("MODIFIED", BY_KEY["pods"], new, cur)
    store._drain()
    return 201, {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": 201,
    }
