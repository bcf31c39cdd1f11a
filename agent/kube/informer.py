"""List + watch with resume, relist on 410 Gone, backoff on failure and periodic resync.

Objects are read as raw JSON (no client-side model deserialization: it is the costliest part
of the official client) and decoded into podlb's frozen model types by a
:class:`~agent.kube.decode.Decoder` (``json.loads`` and a converter by default). Handlers
only mark work (level-triggered, STYLE.md principle 4): they get the key that changed, never a
delta to apply.

Memory: a list is read in pages of ``page_size`` objects (``limit`` / ``continue``, as
client-go's pager), and each page is decoded into the model and dropped before the next is
asked for; a watch event likewise. No list is ever sent without a ``limit``: 30,000 pods of a
real cluster are about 400 MB of JSON and several GB once parsed. A relist updates the cache
in place (objects changed or gone), so it never holds two copies of it. A ``continue`` token
that expired (HTTP 410: the list took longer than the API server's compaction window) starts
the list over after a backoff.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from kubernetes.watch.watch import iter_resp_lines

from agent.clock import Clock
from agent.errors import PodlbError, TransientError

from .calls import Calls, Gone, retry_after
from .decode import Decoder, Event, JsonDecoder, Key, Page

log = logging.getLogger(__name__)
T = TypeVar("T")

WATCH_TIMEOUT_S = 300  # the server ends each watch after about this long; we then resume
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
WATCH_MIN_S = 1.0  # a watch that ends sooner, for any reason, is reopened after a backoff
PAGE_SIZE = 500  # objects per list page (client-go's pager default); one page in memory at once


class Informer(Generic[T]):
    """Keeps a local cache of one resource, fed by list + watch.

    ``list_fn`` is a client list function (``CoreV1Api.list_namespaced_pod`` …) called with
    ``kwargs`` (selectors); ``convert`` turns one object (a dict) into the model, or is a
    :class:`Decoder` of whole answers. ``on_change(key)`` is called for every add / update /
    delete, and ``on_resync()`` after every (re)list and each ``resync_s``.
    """

    def __init__(
        self,
        resource: str,
        list_fn: Callable[..., Any],
        convert: Callable[[dict[str, Any]], T] | Decoder[T],
        calls: Calls,
        clock: Clock,
        *,
        kwargs: dict[str, Any] | None = None,
        on_change: Callable[[Key], None] | None = None,
        on_resync: Callable[[], None] | None = None,
        resync_s: float = 300.0,
        watch_timeout_s: int = WATCH_TIMEOUT_S,
        request_timeout_s: float = 10.0,
        watch_idle_s: float = 90.0,
        page_size: int = PAGE_SIZE,
        list_from_cache: bool = False,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1: a list is never sent without a limit")
        self.resource = resource
        self.list_fn = list_fn
        self.decoder: Decoder[T] = (
            convert if isinstance(convert, Decoder) else JsonDecoder(convert, resource)
        )
        self.calls = calls
        self.clock = clock
        self.kwargs = dict(kwargs or {})
        self.on_change = on_change or (lambda key: None)
        self.on_resync = on_resync or (lambda: None)
        self.resync_s = resync_s
        self.watch_timeout_s = watch_timeout_s
        self.request_timeout_s = request_timeout_s  # connect and read, per request
        # A watch that sends nothing for this long (the API server sends a bookmark about once a
        # minute) is taken as dead and reopened from its resourceVersion.
        self.watch_idle_s = watch_idle_s
        self.page_size = page_size
        # The first list asks for resourceVersion "0": any version the API server's watch
        # cache holds, as client-go's reflector does. It is served from memory (a field
        # selector on spec.nodeName from the cache's index, not a read of every pod in etcd),
        # but whole: the cache ignores the limit (Kubernetes 1.28). Only for selections known
        # to be small, such as one node's pods. Relists read from etcd, page by page.
        self.list_from_cache = list_from_cache
        self._lock = threading.Lock()
        self._items: dict[Key, T] = {}
        self._resp: Any = None
        self.synced = threading.Event()
        self.resource_version = ""
        self.relists = 0
        self.failures = 0

    # -- reading the cache -----------------------------------------------------------------
    def get(self, key: Key) -> T | None:
        with self._lock:
            return self._items.get(key)

    def items(self) -> list[T]:
        with self._lock:
            return list(self._items.values())

    def snapshot(self) -> dict[Key, T]:
        """A copy of the cache by key (a copy of one dict: no per-item work)."""
        with self._lock:
            return dict(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    # -- the loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """List, then watch until ``stop``; never returns early on API errors. Any failure
        of a list or a watch (an error answer, a transport error, a body cut short) is
        retried after a jittered, doubling backoff; so is a watch that ends at once."""
        backoff = BACKOFF_MIN_S
        need_list = True
        next_resync = self.clock.monotonic() + self._jitter(self.resync_s)
        while not stop.is_set():
            delay, brief, listing = 0.0, False, need_list
            try:
                if need_list:
                    self._list()
                    need_list = False
                    listing = False
                    self.on_resync()
                started = self.clock.monotonic()
                try:
                    self._watch_once(stop)
                finally:
                    brief = self.clock.monotonic() - started < WATCH_MIN_S
                if brief and not stop.is_set():
                    delay = self._jitter(backoff)
                    log.debug("%s watch ended at once; reopening in %.1fs", self.resource, delay)
            except Gone as exc:
                need_list = True
                if listing:  # a continue token expired mid-list: start over, not in a loop
                    log.info("%s list expired (410 Gone): listing again: %s", self.resource, exc)
                    delay = self._jitter(backoff)
                else:
                    log.info("%s watch expired (410 Gone): relisting", self.resource)
                if brief:  # a relist that is at once too old again: do not spin
                    delay = self._jitter(backoff)
            except PodlbError as exc:
                if stop.is_set():  # our own shutdown cut the watch: nothing to report
                    break
                self.failures += 1
                delay = retry_after(exc) or self._jitter(backoff)
                log.warning(
                    "%s list/watch failed: %s; retrying in %.1fs", self.resource, exc, delay
                )
            if delay > 0:
                if self.clock.wait(stop, delay):
                    break
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            else:
                backoff = BACKOFF_MIN_S
            if self.clock.monotonic() >= next_resync:
                next_resync = self.clock.monotonic() + self._jitter(self.resync_s)
                self.on_resync()

    def stop_watch(self) -> None:
        """End the current watch now (used on shutdown): a quiet watch would otherwise block
        until its next event or its timeout."""
        resp = self._resp
        if resp is not None:
            with contextlib.suppress(Exception):
                resp.shutdown()  # urllib3 >= 2.3: unblocks a read in another thread
            with contextlib.suppress(Exception):
                resp.release_conn()

    @staticmethod
    def _jitter(seconds: float) -> float:
        return seconds * random.uniform(0.9, 1.1)

    def _list(self) -> None:
        """List page by page into the cache; the first page's resourceVersion is the list's
        (the API server serves every page from that snapshot)."""
        seen: set[Key] = set()
        cont = ""
        resource_version = ""
        started, pages = self.clock.monotonic(), 0
        while True:
            page = self._list_page(cont)
            pages += 1
            resource_version = resource_version or page.resource_version
            cont = page.next
            changed: list[Key] = []
            fresh = dict(page.items)
            del page  # the decoded page goes before the next is read
            with self._lock:
                for key, item in fresh.items():
                    if self._items.get(key) != item:
                        self._items[key] = item
                        changed.append(key)
            seen.update(fresh)
            for key in changed:
                self.on_change(key)
            if not cont:
                break
        with self._lock:
            gone = [key for key in self._items if key not in seen]
            for key in gone:
                del self._items[key]
        self.resource_version = resource_version
        self.relists += 1
        log.info(
            "%s listed: %d in %d page(s) in %.1fs",
            self.resource, len(seen), pages, self.clock.monotonic() - started,
        )  # fmt: skip
        self.synced.set()
        for key in gone:
            self.on_change(key)

    def _list_page(self, cont: str) -> Page[T]:
        """One page of a list: at most ``page_size`` objects, from ``cont`` on."""
        paging: dict[str, Any] = {"limit": self.page_size}
        if cont:
            paging["_continue"] = cont
        elif self.list_from_cache and self.relists == 0:
            paging["resource_version"] = "0"
        resp = self.calls(
            "list",
            self.resource,
            self.list_fn,
            _preload_content=False,
            _request_timeout=(self.request_timeout_s, self.request_timeout_s),
            **paging,
            **self.kwargs,
        )
        return self.decoder.page(self.calls.read("list", self.resource, resp))

    def _watch_once(self, stop: threading.Event) -> None:
        """One watch request, read line by line as raw JSON events.

        The client's ``Watch`` is not used for the stream: with raw events it cannot read an
        ``ERROR`` event (the way the API server reports an expired resourceVersion: HTTP 200,
        then ``{"type": "ERROR", "object": {"code": 410}}``).
        """
        resp = self.calls(
            "watch",
            self.resource,
            self.list_fn,
            watch=True,
            resource_version=self.resource_version,
            timeout_seconds=self.watch_timeout_s,
            allow_watch_bookmarks=True,
            _preload_content=False,
            _request_timeout=(self.request_timeout_s, self.watch_idle_s),
            **self.kwargs,
        )
        self._resp = resp
        try:
            for event in self.calls.stream("watch", self.resource, _events(resp, self.decoder)):
                if stop.is_set():
                    break
                if event.error is not None:
                    status = event.error
                    code = status.get("code")
                    if code == 410:
                        raise Gone(f"watch {self.resource}: {status.get('message', '410 Gone')}")
                    raise TransientError(f"watch {self.resource}: error event {code}: {status}")
                self._apply(event)
        finally:
            self._resp = None
            with contextlib.suppress(Exception):
                resp.release_conn()

    def _apply(self, event: Event[T]) -> None:
        etype, key, rv = event.type, event.key, event.resource_version
        if etype == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return
        if etype not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("%s watch: ignoring event of type %r", self.resource, etype)
            return
        with self._lock:
            if etype == "DELETED":
                self._items.pop(key, None)
            elif event.item is not None:
                self._items[key] = event.item
        if rv:
            self.resource_version = rv
        self.on_change(key)


def _events(resp: Any, decoder: Decoder[T]) -> Iterator[Event[T]]:
    """Watch events from a streaming response, one JSON object per line."""
    for line in iter_resp_lines(resp):
        if line and not line.isspace():
            event = decoder.event(line)
            if event is not None:
                yield event
