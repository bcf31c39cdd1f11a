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
    reqs: list[tuple[str, str, Any]] = []
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
                reqs.append(("in", key, values))
            else:
                reqs.append(("notin", key, values))
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

                reqs.append((op, key, num))
                continue
            _check_value(val)
            if op == "!=":
                reqs.append(("!=", key, val))
            else:
                reqs.append(("=", key, val))
            continue
        if term.startswith("!"):
            key = term[1:].strip()
            _check_key(key, term)
            reqs.append(("!", key, None))
            continue
        _check_key(term, term)
        reqs.append(("exists", term, None))

    def match(obj: Obj) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(_requirement(labels, *r) for r in reqs)

    return match


def _requirement(labels: dict[str, str], op: str, key: str, arg: Any) -> bool:
    if op == "in":
        return key in labels and labels[key] in arg
    if op == "notin":
        return key not in labels or labels[key] not in arg
    if op == "!=":
        return bool(labels.get(key) != arg)
    if op == "=":
        return key in labels and labels[key] == arg
    if op == "!":
        return key not in labels
    if op == "exists":
        return key in labels
    try:
        have = int(labels[key])
    except (KeyError, ValueError):
        return False
    return bool(have > arg if op == ">" else have < arg)


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
