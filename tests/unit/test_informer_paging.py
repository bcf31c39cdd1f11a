"""The informer lists in pages, never without a limit, and keeps one copy of its cache."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from agent.clock import FakeClock
from agent.kube.calls import Calls
from agent.kube.informer import Informer

Obj = dict[str, Any]


class InstantClock(FakeClock):
    """Waits take no real time; each one is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, event: threading.Event, timeout: float) -> bool:
        self.waits.append(timeout)
        self.advance(timeout)
        return event.is_set()


class FakeResponse:
    """What the client returns with ``_preload_content=False``: a body, or an empty stream."""

    def __init__(self, body: bytes = b"") -> None:
        self.data = body

    def stream(self, amt: int | None = None, decode_content: bool = False) -> Any:
        return iter([self.data] if self.data else [])

    def release_conn(self) -> None:
        pass


class PagedList:
    """A ``list_*`` function serving ``objects`` in pages as kube-apiserver does (``limit``,
    ``metadata.continue``, one resourceVersion for every page); a watch ends the run."""

    def __init__(self, objects: list[Obj], stop: threading.Event, expire: int = 0) -> None:
        self.objects = objects
        self.stop = stop
        self.expire = expire  # continued pages to answer 410 Expired
        self.rv = 100
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kw: Any) -> FakeResponse:
        self.calls.append(kw)
        if kw.get("watch"):
            self.stop.set()
            return FakeResponse()
        limit = kw["limit"]  # KeyError: a list without a limit
        start = int(kw.get("_continue") or 0)
        if start and self.expire:
            self.expire -= 1
            raise ApiException(status=410, reason="Expired")
        page = self.objects[start : start + limit]
        meta: Obj = {"resourceVersion": str(self.rv)}
        if start + limit < len(self.objects):
            meta["continue"] = str(start + limit)
        self.rv += 1  # later pages still say the first page's (the snapshot's) version
        return FakeResponse(json.dumps({"metadata": meta, "items": page}).encode())

    def lists(self) -> list[dict[str, Any]]:
        return [c for c in self.calls if not c.get("watch")]


def objects(n: int, version: str = "a") -> list[Obj]:
    return [{"metadata": {"namespace": "ns", "name": f"o{i:05d}"}, "v": version} for i in range(n)]


def informer(fake: PagedList, page_size: int, changed: list[tuple[str, str]]) -> Informer[str]:
    return Informer(
        "pods",
        fake,
        lambda obj: f"{obj['metadata']['name']}/{obj['v']}",
        Calls(),
        InstantClock(),
        on_change=changed.append,
        page_size=page_size,
    )


def test_lists_in_pages_and_never_without_a_limit() -> None:
    stop = threading.Event()
    fake = PagedList(objects(1234), stop)
    changed: list[tuple[str, str]] = []
    inf = informer(fake, 100, changed)
    inf.run(stop)
    lists = fake.lists()
    assert len(lists) == 13
    assert all(c["limit"] == 100 for c in lists)
    assert [c.get("_continue") for c in lists] == [None, *(str(100 * i) for i in range(1, 13))]
    assert len(inf) == 1234 and len(changed) == 1234
    # The list's resourceVersion is the first page's: the watch resumes from the snapshot.
    assert inf.resource_version == "100"
    watch = [c for c in fake.calls if c.get("watch")]
    assert watch[0]["resource_version"] == "100" and "limit" not in watch[0]


def test_a_relist_updates_in_place_and_reports_only_what_changed() -> None:
    stop = threading.Event()
    fake = PagedList(objects(250), stop)
    changed: list[tuple[str, str]] = []
    inf = informer(fake, 100, changed)
    inf.run(stop)
    changed.clear()
    now = objects(260)
    now[7]["v"] = "b"
    del now[42]
    fake.objects = now
    stop.clear()
    inf.run(stop)
    assert sorted(changed) == sorted(
        [("ns", "o00007"), ("ns", "o00042")] + [("ns", f"o{i:05d}") for i in range(250, 260)]
    )
    assert inf.get(("ns", "o00007")) == "o00007/b"
    assert inf.get(("ns", "o00042")) is None and len(inf) == 259
    assert inf.relists == 2


def test_an_expired_continue_token_lists_again_from_the_first_page() -> None:
    stop = threading.Event()
    fake = PagedList(objects(300), stop, expire=1)
    changed: list[tuple[str, str]] = []
    inf = informer(fake, 100, changed)
    inf.run(stop)
    assert [c.get("_continue") for c in fake.lists()] == [None, "100", None, "100", "200"]
    assert len(inf) == 300 and inf.relists == 1 and inf.failures == 0
    assert inf.synced.is_set()
    assert isinstance(inf.clock, InstantClock) and inf.clock.waits[0] >= 0.4  # after a backoff


def test_a_page_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="never sent without a limit"):
        informer(PagedList([], threading.Event()), 0, [])


def test_a_list_from_the_cache_asks_for_version_0_on_its_first_page_only() -> None:
    stop = threading.Event()
    fake = PagedList(objects(250), stop)
    inf = informer(fake, 100, [])
    inf.list_from_cache = True
    inf.run(stop)
    stop.clear()
    inf.run(stop)  # a relist: from etcd (a consistent read), page by page
    versions = [c.get("resource_version") for c in fake.lists()]
    assert versions == ["0", None, None, None, None, None]  # never with a continue token (400)
    assert inf.relists == 2


def test_the_leaders_pods_are_listed_through_their_decoder() -> None:
    from agent.kube.leader_pods import LeaderPodDecoder
    from tests.unit.test_convert import PODS

    stop = threading.Event()
    fake = PagedList(PODS, stop)
    inf = Informer("pods", fake, LeaderPodDecoder(), Calls(), InstantClock(), page_size=3)
    inf.run(stop)
    assert len(fake.lists()) == 3 and len(inf) == len(PODS)
    got = inf.get(("shop", "a"))
    assert got is not None and got.ips == ("10.0.0.1",) and got.resource_version == ""
