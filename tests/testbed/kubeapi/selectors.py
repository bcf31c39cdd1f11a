"""Label and field selectors, parsed like apimachinery does."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import bad_request
from .resources import Resource

Obj = dict[str, Any]
Matcher = Callable[[Obj], bool]

_KEY_RE = re.compile(
    r"^([a-zA-Z0-9]([-a-zA-Z0-9.]*[a-zA-Z0-9])?/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$"
)
_VALUE_RE = re.compile(r"^(([a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?)?)$")


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts: list[str] = []
    depth = 0
    cur = ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def _check_key(key: str, whole: str) -> None:
    if not _KEY_RE.match(key) or len(key.split("/")[-1]) > 63:
        raise bad_request(
            f'unable to parse requirement: values[0][{key}]: Invalid value: "{key}": '
            f"name part must consist of alphanumeric characters, '-', '_' or '.'"
            if key
            else f"unable to parse requirement: found '{whole}', expected: identifier"
        )


def _check_value(value: str) -> None:
    if not _VALUE_RE.match(value) or len(value) > 63:
        raise bad_request(f'unable to parse requirement: invalid label value: "{value}"')


def parse_label_selector(text: str | None) -> Matcher:
    if not text or not text.strip():
        return lambda _o: True
    reqs: list[Callable[[dict[str, str]], bool]] = []
    for raw in _split_top(text):
        term = raw.strip()
        if not term:
            raise bad_request(
                f"unable to parse requirement: found '', expected: identifier in {text!r}"
            )
        m = re.match(r"^(\S+)\s+(in|notin)\s*\((.*)\)$", term)
        if m:
            key, op, vals = m.group(1), m.group(2), m.group(3)
            _check_key(key, term)
            values = {v.strip() for v in vals.split(",")} - {""} if vals.strip() else set()
            for v in values:
                _check_value(v)
            if op == "in":
                if not values:
                    raise bad_request(
                        "unable to parse requirement: for 'in', 'notin' operators, "
                        "values set can't be empty"
                    )
                reqs.append(lambda lb, k=key, vs=values: k in lb and lb[k] in vs)
            else:
                reqs.append(lambda lb, k=key, vs=values: k not in lb or lb[k] not in vs)
            continue
        m = re.match(r"^([^=!<>\s]+)\s*(==|=|!=|<|>)\s*(\S*)$", term)
        if m:
            key, op, val = m.group(1), m.group(2), m.group(3)
            _check_key(key, term)
            if op in ("<", ">"):
                try:
                    num = int(val)
                except ValueError:
                    raise bad_request(
                        "unable to parse requirement: for 'Gt', 'Lt' operators, "
                        "the value must be an integer"
                    ) from None

                def cmp(lb: dict[str, str], k: str = key, n: int = num, o: str = op) -> bool:
                    try:
                        have = int(lb[k])
                    except (KeyError, ValueError):
                        return False
                    return have > n if o == ">" else have < n

                reqs.append(cmp)
                continue
            _check_value(val)
            if op == "!=":
                reqs.append(lambda lb, k=key, v=val: lb.get(k) != v)
            else:
                reqs.append(lambda lb, k=key, v=val: k in lb and lb[k] == v)
            continue
        if term.startswith("!"):
            key = term[1:].strip()
            _check_key(key, term)
            reqs.append(lambda lb, k=key: k not in lb)
            continue
        _check_key(term, term)
        reqs.append(lambda lb, k=term: k in lb)

    def match(obj: Obj) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r(labels) for r in reqs)

    return match


def field_value(obj: Obj, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if isinstance(cur, dict) and path == "source":  # core Event: source.component
        return str(cur.get("component", ""))
    return str(cur)


def parse_field_selector(text: str | None, resource: Resource) -> Matcher:
    if not text or not text.strip():
        return lambda _o: True
    allowed = {"metadata.name", "metadata.namespace", *resource.fields}
    reqs: list[tuple[str, str, bool]] = []  # (field, value, equal)
    for raw in text.split(","):
        term = raw.strip()
        m = re.match(r"^([^=!]+?)\s*(==|=|!=)\s*(.*)$", term)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        fld, op, val = m.group(1).strip(), m.group(2), m.group(3).strip()
        if fld not in allowed:
            raise bad_request(f"field label not supported: {fld}")
        reqs.append((fld, val, op != "!="))

    def match(obj: Obj) -> bool:
        for fld, val, equal in reqs:
            have = field_value(obj, fld)
            if (have == val) != equal:
                return False
        return True

    return match
