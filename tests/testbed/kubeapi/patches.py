"""JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch."""

from __future__ import annotations

import copy
from typing import Any

from .errors import ApiError, bad_request

# patchMergeKey by (parent field, field); parent "*" = any parent.
_MERGE_KEYS: dict[tuple[str, str], str] = {
    ("spec", "containers"): "name",
    ("spec", "initContainers"): "name",
    ("spec", "ephemeralContainers"): "name",
    ("spec", "volumes"): "name",
    ("spec", "imagePullSecrets"): "name",
    ("spec", "hostAliases"): "ip",
    ("spec", "ports"): "port",  # Service ports
    ("spec", "resourceClaims"): "name",
    ("containers", "ports"): "containerPort",
    ("initContainers", "ports"): "containerPort",
    ("containers", "env"): "name",
    ("initContainers", "env"): "name",
    ("containers", "volumeMounts"): "mountPath",
    ("initContainers", "volumeMounts"): "mountPath",
    ("containers", "volumeDevices"): "devicePath",
    ("status", "conditions"): "type",
    ("status", "podIPs"): "ip",
    ("status", "hostIPs"): "ip",
    ("status", "addresses"): "type",  # Node
    ("metadata", "ownerReferences"): "uid",
}
# lists of primitives with patchStrategy=merge
_MERGE_PRIMITIVES: set[tuple[str, str]] = {("metadata", "finalizers")}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def strategic_merge_patch(target: Any, patch: Any, parent: str = "", name: str = "") -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        out = {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        return out
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    orders: dict[str, list[Any]] = {}
    for k, v in patch.items():
        if k.startswith("$setElementOrder/"):
            orders[k.split("/", 1)[1]] = v
            continue
        if k.startswith("$deleteFromPrimitiveList/"):
            fld = k.split("/", 1)[1]
            if isinstance(result.get(fld), list) and isinstance(v, list):
                result[fld] = [x for x in result[fld] if x not in v]
            continue
        if k.startswith("$") or k == "$patch":
            continue
        if v is None:
            result.pop(k, None)
        elif isinstance(v, dict):
            merged = strategic_merge_patch(result.get(k), v, name, k)
            if merged is None:
                result.pop(k, None)
            else:
                result[k] = merged
        elif isinstance(v, list):
            result[k] = _merge_list(result.get(k), v, name, k)
        else:
            result[k] = v
    for fld, order in orders.items():
        key = _MERGE_KEYS.get((name, fld))
        items = result.get(fld)
        if not isinstance(items, list) or not isinstance(order, list):
            continue

        def pos(item: Any, key: str | None = key, order: list[Any] = order) -> int:
            for i, o in enumerate(order):
                if (
                    key
                    and isinstance(o, dict)
                    and isinstance(item, dict)
                    and o.get(key) == item.get(key)
                ) or o == item:
                    return i
            return len(order)

        result[fld] = sorted(items, key=pos)
    return result


def _merge_list(target: Any, patch: list[Any], parent: str, name: str) -> list[Any]:
    if (parent, name) in _MERGE_PRIMITIVES:
        base = list(target) if isinstance(target, list) else []
        for item in patch:
            if item not in base:
                base.append(item)
        return base
    key = _MERGE_KEYS.get((parent, name))
    if key is None:
        # replace, but honour a lone {"$patch": "replace"} / "delete" directive
        return [copy.deepcopy(x) for x in patch if not (isinstance(x, dict) and "$patch" in x)]
    base = [copy.deepcopy(x) for x in target] if isinstance(target, list) else []
    if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
        return [copy.deepcopy(x) for x in patch if not (isinstance(x, dict) and "$patch" in x)]
    for item in patch:
        if not isinstance(item, dict):
            base.append(copy.deepcopy(item))
            continue
        if key not in item:
            raise bad_request(f"map: {item} does not contain declared merge key: {key}")
        idx = next(
            (i for i, x in enumerate(base) if isinstance(x, dict) and x.get(key) == item[key]),
            None,
        )
        if item.get("$patch") == "delete":
            if idx is not None:
                base.pop(idx)
            continue
        if idx is None:
            base.append(strategic_merge_patch({}, item, parent, name))
        else:
            base[idx] = strategic_merge_patch(base[idx], item, parent, name)
    return base


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _parse_pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, f"invalid JSON pointer: {path!r}")
    return [_unescape(t) for t in path[1:].split("/")]


def _walk(doc: Any, tokens: list[str], op: str, path: str) -> Any:
    cur = doc
    for t in tokens:
        if isinstance(cur, dict):
            if t not in cur:
                raise ApiError(422, f'{op} operation does not apply: doc is missing path: "{path}"')
            cur = cur[t]
        elif isinstance(cur, list):
            try:
                cur = cur[int(t)]
            except (ValueError, IndexError):
                raise ApiError(
                    422, f'{op} operation does not apply: doc is missing path: "{path}"'
                ) from None
        else:
            raise ApiError(422, f'{op} operation does not apply: doc is missing path: "{path}"')
    return cur


def _get(doc: Any, path: str, op: str) -> Any:
    return _walk(doc, _parse_pointer(path), op, path)


def _add(doc: Any, path: str, value: Any, op: str = "add") -> Any:
    tokens = _parse_pointer(path)
    if not tokens:
        return copy.deepcopy(value)
    parent = _walk(doc, tokens[:-1], op, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        if last == "-":
            parent.append(copy.deepcopy(value))
        else:
            try:
                i = int(last)
            except ValueError:
                raise ApiError(
                    422, f'{op} operation does not apply: doc is missing path: "{path}"'
                ) from None
            if i < 0 or i > len(parent):
                raise ApiError(422, f'add operation does not apply: doc is missing path: "{path}"')
            parent.insert(i, copy.deepcopy(value))
    else:
        raise ApiError(422, f'{op} operation does not apply: doc is missing path: "{path}"')
    return doc


def _remove(doc: Any, path: str, op: str = "remove") -> tuple[Any, Any]:
    tokens = _parse_pointer(path)
    if not tokens:
        raise ApiError(422, "remove operation does not apply: cannot remove the whole document")
    parent = _walk(doc, tokens[:-1], op, path)
    last = tokens[-1]
    try:
        if isinstance(parent, dict):
            return doc, parent.pop(last)
        if isinstance(parent, list):
            return doc, parent.pop(int(last))
    except (KeyError, ValueError, IndexError):
        pass
    raise ApiError(422, f'{op} operation does not apply: doc is missing path: "{path}"')


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902; a failed ``test`` or a missing path is a 422 like the API server answers."""
    if not isinstance(ops, list):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op:
            raise bad_request(f"invalid JSON patch operation: {op!r}")
        kind = op["op"]
        path = op.get("path")
        if not isinstance(path, str):
            raise ApiError(422, f"{kind} operation: missing path")
        if kind == "add":
            doc = _add(doc, path, op.get("value"))
        elif kind == "remove":
            doc, _ = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path, "replace")
            doc, _ = _remove(doc, path, "replace")
            doc = _add(doc, path, op.get("value"), "replace")
        elif kind == "test":
            if _get(doc, path, "test") != op.get("value"):
                raise ApiError(422, f"testing value {path} failed: test failed")
        elif kind == "move":
            doc, value = _remove(doc, op.get("from", ""), "move")
            doc = _add(doc, path, value, "move")
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, op.get("from", ""), "copy")), "copy")
        else:
            raise bad_request(f"Unexpected kind: {kind}")
    return doc
