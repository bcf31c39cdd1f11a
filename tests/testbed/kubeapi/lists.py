"""Lists: selectors, and paging as kube-apiserver pages (``limit`` and ``continue`` tokens)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from .errors import ApiError
from .routing import RequestInfo
from .selectors import parse_field_selector, parse_label_selector
from .store import Expired, Obj, Store

CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token "
    "results in an inconsistent list - objects that were created, modified, or deleted between "
    "the time the first chunk was returned and now may show up in the list."
)


def _list_key(obj: Obj) -> tuple[str, str]:
    meta = obj["metadata"]
    return (meta.get("namespace", ""), meta["name"])


def _encode_continue(rv: int, last: tuple[str, str]) -> str:
    start = f"{last[0]}/{last[1]}" if last[0] else last[1]
    token = {"v": "meta.k8s.io/v1", "rv": rv, "start": start + "\x00"}
    return base64.urlsafe_b64encode(json.dumps(token).encode()).decode()


def _decode_continue(cont: str) -> tuple[int, tuple[str, str]]:
    """(resourceVersion, the last key listed) of a continue token; 400 if it is not one."""
    try:
        token = json.loads(base64.urlsafe_b64decode(cont.encode()))
        rv, start = int(token["rv"]), str(token["start"]).rstrip("\x00")
        if token.get("v") != "meta.k8s.io/v1" or rv < 1:
            raise ValueError(cont)
    except (ValueError, TypeError, KeyError):
        raise ApiError(400, "continue key is not valid", "BadRequest") from None
    ns, _, name = start.rpartition("/")
    return rv, (ns, name)


def strip_list_item(obj: Obj) -> Obj:
    """A list's item: ``obj`` without ``kind`` and ``apiVersion`` (a shallow copy: ``obj``
    may be the store's own)."""
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


def matcher(info: RequestInfo) -> Callable[[Obj], bool]:
    assert info.resource is not None
    lm = parse_label_selector(info.query.get("labelSelector"))
    fm = parse_field_selector(info.query.get("fieldSelector"), info.resource)
    return lambda o: lm(o) and fm(o)


def list_page(store: Store, info: RequestInfo) -> dict[str, Any]:
    """A list, paged as kube-apiserver pages it: ``limit`` cuts it, ``metadata.continue``
    (``{"v", "rv", "start"}`` in base64, as the API server encodes it) resumes it from the
    first page's snapshot, and a token whose resourceVersion was compacted away is 410
    ``Expired``."""
    res = info.resource
    assert res is not None
    match = matcher(info)
    cont = info.query.get("continue")
    if cont:
        if info.query.get("resourceVersion"):
            raise ApiError(400, "specifying resource version is not allowed when using continue")
        rv, after = _decode_continue(cont)
        try:
            items = store.list_at(res.key, info.namespace, match, rv)
        except Expired:
            raise ApiError(410, CONTINUE_EXPIRED, "Expired") from None
        items = [o for o in items if _list_key(o) > after]
    else:
        items, rv = store.snapshot(res.key, info.namespace, match)
    meta: dict[str, Any] = {"resourceVersion": str(rv)}
    limit = int(info.query.get("limit") or 0)
    if limit > 0 and len(items) > limit:
        meta["continue"] = _encode_continue(rv, _list_key(items[limit - 1]))
        meta["remainingItemCount"] = len(items) - limit
        items = items[:limit]
    return {
        "kind": f"{res.kind}List",
        "apiVersion": res.api_version,
        "metadata": meta,
        "items": [strip_list_item(o) for o in items],
    }
