"""What the cloud LB providers (``tencent_clb``, ``baidu_blb``) share; no SDK is imported here.

* :class:`CloudCalls` -- the way around one API call: an auth backoff (refused credentials
  block every call, a missing permission that one operation, for ``auth_backoff_s``, without
  reaching the API), each attempt fenced to the leader's term, the ``on_call`` outcome, and
  bounded retries with a doubling backoff, then :class:`TransientError`;
* :class:`TTLCache` -- a lookup (listeners, listener -> IP group) kept for a while;
* :class:`KeyedLocks` -- one lock per LB or IP group, to serialize writes to it;
* :func:`chunks` and :func:`observed_server` (a cloud LB's weight 0 is a drain).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from agent.clock import Clock
from agent.errors import TransientError
from agent.lb.base import AdminState, Health, LBAuthError, ObservedServer
from agent.lb.fence import fenced

log = logging.getLogger(__name__)

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    if size < 1:
        raise ValueError("chunk size >= 1")
    return [items[i : i + size] for i in range(0, len(items), size)]


def observed_server(
    name: str, address: str, port: int, weight: int, health: Health
) -> ObservedServer:
    """A cloud LB's backend as podlb sees it: weight 0 is the LB's drain (no new connections);
    sessions are unknown (neither cloud reports them per backend)."""
    return ObservedServer(
        name=name,
        address=address,
        port=port,
        weight=weight,
        admin=AdminState.READY if weight > 0 else AdminState.DRAIN,
        health=health,
        sessions=None,
    )


@dataclass(frozen=True, slots=True)
class Retry:
    """A failed attempt worth another: its ``kind`` (throttled, busy, error) and what it said."""

    kind: str
    detail: str


class CloudCalls:
    """Calls to one cloud LB API, named ``label`` in logs, errors and fences (``CLB``,
    ``BLB <host>``). Thread-safe.

    :meth:`call` runs ``attempt`` until it returns; ``judge`` sees each exception of the
    ``errors`` types, notes its outcome (:meth:`note`) and either raises what retrying will not
    change (after :meth:`block` for an auth error) or returns a :class:`Retry`. Retries wait
    ``backoff_s`` doubled each time (at most ``max_delay_s``); after ``retries`` of them, a
    :class:`TransientError`."""

    def __init__(
        self,
        label: str,
        *,
        retries: int,
        backoff_s: float,
        max_delay_s: float | None,
        auth_backoff_s: float,
        clock: Clock,
        on_call: Callable[[str, str], None] | None,
    ) -> None:
        self.label = label
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_delay_s = max_delay_s
        self.auth_backoff_s = auth_backoff_s
        self._clock = clock
        self._on_call = on_call
        self._lock = threading.Lock()
        # until (monotonic) and the error to raise; key None: every operation
        self._blocked: dict[str | None, tuple[float, LBAuthError]] = {}

    def note(self, operation: str, outcome: str) -> None:
        """Report one call's bounded outcome (ok, throttled, auth, quota, rejected, error)."""
        if self._on_call is not None:
            self._on_call(operation, outcome)

    def block(self, operation: str | None, error: LBAuthError) -> None:
        """Raise ``error`` for ``auth_backoff_s`` on calls of ``operation`` (None: every call)."""
        with self._lock:
            self._blocked[operation] = (self._clock.monotonic() + self.auth_backoff_s, error)

    def check(self, operation: str) -> None:
        """Raise the :class:`LBAuthError` that blocks ``operation``, if one still does."""
        now = self._clock.monotonic()
        with self._lock:
            for key in (None, operation):
                hit = self._blocked.get(key)
                if hit is None:
                    continue
                if now < hit[0]:
                    raise hit[1]
                del self._blocked[key]

    def delay(self, failures: int) -> float | None:
        """How long to wait after ``failures`` failed attempts; None: no retry is left."""
        if failures >= self.retries:
            return None
        delay: float = self.backoff_s * 2**failures
        return delay if self.max_delay_s is None else min(self.max_delay_s, delay)

    def call(
        self,
        operation: str,
        attempt: Callable[[], T],
        errors: tuple[type[BaseException], ...],
        judge: Callable[[BaseException], Retry],
    ) -> T:
        failures = 0
        while True:
            self.check(operation)
            try:
                with fenced(f"{self.label} {operation}"):  # each request, each retry
                    result = attempt()
            except errors as e:
                retry = judge(e)
                delay = self.delay(failures)
                if delay is None:
                    raise TransientError(
                        f"{self.label} {operation} failed after {failures + 1} attempts"
                        f" ({retry.kind}): {retry.detail}"
                    ) from e
                log.warning(
                    "%s %s: %s (%s), retry in %.2fs",
                    self.label,
                    operation,
                    retry.kind,
                    retry.detail,
                    delay,
                )
                failures += 1
                self._clock.sleep(delay)
                continue
            self.note(operation, "ok")
            return result


class TTLCache(Generic[K, V]):
    """Values kept for ``ttl_s`` (monotonic) after they were looked up. Thread-safe."""

    def __init__(self, ttl_s: float, clock: Clock) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._items: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V | None:
        now = self._clock.monotonic()
        with self._lock:
            hit = self._items.get(key)
        return hit[1] if hit is not None and now < hit[0] else None

    def put(self, key: K, value: V, looked_up_at: float) -> None:
        """``looked_up_at``: the monotonic time the lookup began."""
        with self._lock:
            self._items[key] = (looked_up_at + self.ttl_s, value)

    def forget(self, key: K) -> None:
        with self._lock:
            self._items.pop(key, None)


class KeyedLocks(Generic[K]):
    """One lock per key, made on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[K, threading.Lock] = {}

    def __call__(self, key: K) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())
