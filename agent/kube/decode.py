"""API answers as bytes to the model: one list page, or one watch event.

An informer hands the raw body of each answer to a :class:`Decoder`. :class:`JsonDecoder`
parses it with ``json.loads`` and converts each object (a dict) with a function of
``convert.py``; the leader's pods have a faster decoder of their own (``leader_pods.py``)
that never builds the dicts.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from agent.errors import TransientError

T = TypeVar("T")
Key = tuple[str, str]  # (namespace, name)


@dataclass(slots=True)
class Page(Generic[T]):
    """One page of a list: its objects by key, the list's resourceVersion and the token of
    the next page ("" on the last)."""

    items: list[tuple[Key, T]] = field(default_factory=list)
    resource_version: str = ""
    next: str = ""


@dataclass(slots=True)
class Event(Generic[T]):
    """One watch event. ``item`` is set for ADDED and MODIFIED (and DELETED when the decoder
    converts it); ``error`` is the Status object of an ERROR event."""

    type: str
    key: Key = ("", "")
    resource_version: str = ""
    item: T | None = None
    error: dict[str, Any] | None = None


class Decoder(ABC, Generic[T]):
    """Turns the body of a list answer or one line of a watch stream into the model. Bad
    input raises :class:`TransientError` (the informer retries after a backoff)."""

    resource = ""

    @abstractmethod
    def page(self, data: bytes | bytearray) -> Page[T]: ...

    @abstractmethod
    def event(self, line: str | bytes) -> Event[T] | None:
        """The event of one line; None for a line that holds no object."""


class JsonDecoder(Decoder[T]):
    """``json.loads``, then ``convert`` on each object (a dict as the API server sent it)."""

    def __init__(self, convert: Callable[[dict[str, Any]], T], resource: str = "") -> None:
        self.convert = convert
        self.resource = resource

    def page(self, data: bytes | bytearray) -> Page[T]:
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise TransientError(f"list {self.resource}: unparsable response") from exc
        if not isinstance(body, dict):
            raise TransientError(f"list {self.resource}: not a list object")
        meta = body.get("metadata") or {}
        page: Page[T] = Page(
            resource_version=meta.get("resourceVersion", ""), next=meta.get("continue") or ""
        )
        for obj in body.get("items") or []:
            page.items.append((object_key(obj), self.convert(obj)))
        return page

    def event(self, line: str | bytes) -> Event[T] | None:
        raw = json.loads(line)
        if not isinstance(raw, dict):
            return None
        return self.event_of(raw)

    def event_of(self, raw: dict[str, Any]) -> Event[T]:
        """The event of a watch event already parsed into a dict."""
        etype = str(raw.get("type") or "")
        obj = raw.get("object") or {}
        if etype == "ERROR":
            return Event(etype, error=obj if isinstance(obj, dict) else {})
        rv = (obj.get("metadata") or {}).get("resourceVersion") or ""
        if etype not in ("ADDED", "MODIFIED"):  # DELETED, BOOKMARK, unknown: no object needed
            return Event(etype, object_key(obj), rv)
        return Event(etype, object_key(obj), rv, self.convert(obj))


def object_key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace", ""), meta.get("name", ""))
