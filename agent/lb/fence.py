"""LB calls fenced by the leadership term (issue 17, defect 1).

Only the leader may write to a load balancer, and a leader's term can end at any moment (its
renewal failed, another agent holds the Lease, the agent stops) while changes are queued or in
flight on the apply workers, some of them retried for tens of seconds by a cloud provider. So
every single request a provider sends to an LB (each chunk, each retry, each task poll) goes
through :func:`fenced`:

* right before the request, the :class:`Term` it runs for is checked: once the term has ended
  (or its renew deadline has passed) the request is not sent and :class:`TermEnded` is raised,
  which the provider does not retry;
* while the request runs it is counted in flight, and a request that ended without an answer
  (a timeout, a connection lost) or with an error leaves the term *unsettled*: it may still land.

The elector releases the Lease only after :meth:`Term.settle`: no request in flight (waited
for, bounded) and none unsettled; otherwise the Lease is left to expire, which gives a late
request the rest of the lease duration to land before anybody else can lead.

The term is bound to the thread that applies a plan (:func:`bound`), so providers need no extra
parameter: a call made with no term bound (observing, the CLI, tests) is not fenced.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import ParamSpec, TypeVar

from agent.errors import PermanentError

P = ParamSpec("P")
T = TypeVar("T")


class TermEnded(PermanentError):
    """The leadership term this LB call belongs to has ended: the call was not sent."""


class Term:
    """One leadership term as LB calls see it. ``valid()`` says whether the term still holds
    (the elector gives its scope's ``is_leading``)."""

    def __init__(self, valid: Callable[[], bool], name: str = "") -> None:
        self.name = name
        self._valid = valid
        self._cond = threading.Condition()
        self._closed = False
        self._in_flight = 0
        self._unsettled: str | None = None  # the first call that may still land

    def __repr__(self) -> str:
        return f"Term({self.name!r})"

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    @property
    def unsettled(self) -> str | None:
        """A call of this term that ended without a clear answer, if any."""
        with self._cond:
            return self._unsettled

    @contextlib.contextmanager
    def call(self, what: str) -> Iterator[None]:
        """Run one LB request inside the term; ``TermEnded`` (nothing sent) once it ended."""
        with self._cond:
            # Checked and counted under one lock: close() either sees this call or stops it.
            if self._closed or not self._valid():
                raise TermEnded(f"{what}: not sent, the leadership term {self.name} has ended")
            self._in_flight += 1
        ok = False
        try:
            yield
            ok = True
        finally:
            with self._cond:
                self._in_flight -= 1
                if not ok and self._unsettled is None:
                    self._unsettled = what
                self._cond.notify_all()

    def close(self) -> None:
        """No call of this term may start any more."""
        with self._cond:
            self._closed = True

    def settle(self, timeout_s: float) -> bool:
        """Close the term and wait (real time, at most ``timeout_s``) for its calls in flight.
        True when none is in flight and none may still land: then the Lease may be released."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closed = True
            while self._in_flight and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return self._in_flight == 0 and self._unsettled is None


_TERM: ContextVar[Term | None] = ContextVar("podlb_lb_term", default=None)


@contextlib.contextmanager
def bound(term: Term | None) -> Iterator[None]:
    """LB calls made in this block (this thread) are fenced by ``term``."""
    token = _TERM.set(term)
    try:
        yield
    finally:
        _TERM.reset(token)


@contextlib.contextmanager
def fenced(what: str) -> Iterator[None]:
    """Wrap every single request to an LB API (each chunk, each retry) in this."""
    term = _TERM.get()
    if term is None:
        yield
        return
    with term.call(what):
        yield


def fenced_call(what: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """:func:`fenced` as a decorator of a function that makes one LB request."""

    def wrap(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> T:
            with fenced(what):
                return fn(*args, **kwargs)

        return inner

    return wrap
