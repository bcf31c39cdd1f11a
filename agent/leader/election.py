"""Leader election on a ``coordination.k8s.io/v1`` Lease, safe on our own monotonic clock.

The algorithm is client-go's (``tools/leaderelection``) with the two fixes STYLE.md asks for:

* **Expiry is judged on our monotonic clock, never by comparing wall clocks.** We remember when
  we last *observed a change* of the record (holder, renewTime, resourceVersion ...) and treat
  someone else's lease as expired only once its ``leaseDurationSeconds`` have passed on our
  monotonic clock since that observation. A released lease (empty holder) is free at once.
* **Leader work stops the moment renewal fails.** A leader that has not renewed successfully
  within ``renew_deadline_s`` of the *start* of its last successful renewal stops its
  :class:`LeaderScope` — from a watchdog thread, so even an API call that hangs cannot keep it
  leading — before the lease can expire for anybody else (``renew_deadline_s`` <
  ``lease_duration_s``). Measuring from the start of the request is what makes this safe: the
  server applied the write no earlier, so every observer saw it no earlier either. So a
  renewal answered after that deadline (the API server froze, then answered) ends the term, and
  an acquire answered after half of it starts none (its first renewal would have too little
  time left): the next attempt follows at once and renews the Lease we then hold.

Writes are optimistic (the record's ``resourceVersion``): a 409 means another candidate won the
race and we look again one retry period later. On clean shutdown the lease is released like
client-go's ``ReleaseOnCancel`` (holder "", ``leaseDurationSeconds`` 1) so a successor takes over
at its next retry instead of waiting for expiry.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from agent.clock import Clock
from agent.errors import Conflict, NotFound, PodlbError
from agent.lb.fence import Term
from agent.leader.lease_record import LeaseRecord
from agent.leader.scope import LeaderScope

log = logging.getLogger(__name__)

__all__ = [
    "ElectionConfig",
    "LeaderElector",
    "LeaderScope",
    "LeaseRecord",
    "LeaseStoreLike",
    "OnChange",
]

_POLL_S = 0.05  # real seconds: how often `stop` is looked at (Clock.wait takes one event)

OnChange = Callable[[bool, str | None], None]  # (we_lead, who_leads) on every change


class LeaseStoreLike(Protocol):
    """The Lease as the elector needs it; ``agent.kube.lease.LeaseStore`` is the real one."""

    def get(self) -> LeaseRecord | None:
        """The current record, None when the Lease does not exist."""
        ...

    def create(self, record: LeaseRecord) -> LeaseRecord:
        """Create the Lease; raises ``Conflict`` when it already exists."""
        ...

    def update(self, record: LeaseRecord) -> LeaseRecord:
        """Replace it if ``record.resource_version`` is current; else raises ``Conflict``."""
        ...


@dataclass(frozen=True, slots=True)
class ElectionConfig:
    """Timing of the election; the defaults are client-go's."""

    lease_duration_s: float = 15.0  # others may take over this long after our last renewal
    renew_deadline_s: float = 10.0  # the leader stops leading if it cannot renew within this
    retry_period_s: float = 2.0  # between attempts to acquire or renew
    acquire_jitter: float = 1.2  # candidates wait retry * (1 + U[0, jitter)), as client-go does
    leader_stop_timeout_s: float = 10.0  # how long to wait for leader work to return on stop

    def __post_init__(self) -> None:
        for name in ("lease_duration_s", "renew_deadline_s", "retry_period_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"leader election: {name} must be > 0 seconds, got {value}")
        if not self.renew_deadline_s < self.lease_duration_s:
            raise ValueError(
                f"leader election: renew_deadline_s ({self.renew_deadline_s}) must be shorter "
                f"than lease_duration_s ({self.lease_duration_s}), so that a leader that cannot "
                "renew stops before its lease can expire for the others"
            )
        if not self.retry_period_s < self.renew_deadline_s:
            raise ValueError(
                f"leader election: retry_period_s ({self.retry_period_s}) must be shorter than "
                f"renew_deadline_s ({self.renew_deadline_s}), so a leader gets more than one "
                "attempt to renew"
            )
        if not self.acquire_jitter >= 0:
            raise ValueError(
                f"leader election: acquire_jitter must be >= 0, got {self.acquire_jitter}"
            )
        if not self.leader_stop_timeout_s > 0:
            raise ValueError(
                "leader election: leader_stop_timeout_s must be > 0 seconds, got "
                f"{self.leader_stop_timeout_s}"
            )

    @property
    def advertised_duration_s(self) -> int:
        """``leaseDurationSeconds`` we write: whole seconds, rounded up (never shorter)."""
        return max(1, math.ceil(self.lease_duration_s))


def _bridge(stop: threading.Event, done: threading.Event, wake: threading.Event) -> None:
    """Wake the election loop when ``stop`` is set, until ``done``."""
    while not done.is_set():
        if stop.wait(_POLL_S):
            wake.set()
            return


class LeaderElector:
    """One candidate for the Lease behind ``store``. See the module docstring."""

    def __init__(
        self,
        store: LeaseStoreLike,
        identity: str,
        clock: Clock,
        config: ElectionConfig | None = None,
        on_change: OnChange | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not identity:
            raise ValueError("leader election: the identity must not be empty")
        self._store = store
        self._identity = identity
        self._clock = clock
        self._config = config or ElectionConfig()
        self._on_change = on_change
        self._rng = rng or random.Random()
        self._lock = threading.Lock()  # guards the fields below
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0  # monotonic time we observed the record change
        self._scope: LeaderScope | None = None
        self._term: Term | None = None  # of the current or the last scope
        self._lead_thread: threading.Thread | None = None  # the current or the last leader work
        self._lead_error: BaseException | None = None
        self._report_lock = threading.Lock()  # serializes on_change calls
        self._reported: tuple[bool, str | None] | None = None
        self._last_error: str | None = None
        self._waiting_logged = False
        self._stopped_at = 0.0  # monotonic time the last scope was stopped
        self._wake = threading.Event()  # stop was set or the leader work ended: look now

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def config(self) -> ElectionConfig:
        return self._config

    def is_leader(self) -> bool:
        with self._lock:
            scope = self._scope
        return scope is not None and scope.is_leading()

    def observed_holder(self) -> str | None:
        """Who holds the Lease as we last saw it (None: nobody, or not looked yet)."""
        with self._lock:
            record = self._observed
        return (record.holder or None) if record is not None else None

    # -- the loop
    def run(
        self,
        stop: threading.Event,
        lead: Callable[[LeaderScope], None],
        *,
        release_on_stop: bool = True,
    ) -> None:
        """Campaign until ``stop`` is set, running ``lead(scope)`` in a new thread whenever we
        hold the Lease. On return the leader work has been stopped and, with
        ``release_on_stop``, the Lease released. An exception from ``lead`` — or ``lead``
        returning while still leading — ends the run and is raised here after the release.
        ``release_on_stop=False`` leaves the Lease to expire (tests: a crashed agent)."""
        self._lead_error = None
        self._wake.clear()
        done = threading.Event()
        bridge = threading.Thread(
            target=_bridge, args=(stop, done, self._wake), name="podlb-election-stop", daemon=True
        )
        bridge.start()
        next_try = self._clock.monotonic()
        try:
            while not stop.is_set() and self._lead_error is None:
                started = self._clock.monotonic()
                if started >= next_try:
                    if self._attempt(lead):
                        next_try = self._clock.monotonic()
                    else:
                        next_try = started + self._interval()
                remaining = next_try - self._clock.monotonic()
                if remaining > 0:
                    self._clock.wait(self._wake, remaining)
        finally:
            done.set()
            self._shutdown(release_on_stop)
        if self._lead_error is not None:
            raise self._lead_error

    def _interval(self) -> float:
        retry = self._config.retry_period_s
        if self.is_leader():
            return retry
        return retry * (1.0 + self._rng.random() * self._config.acquire_jitter)

    def _attempt(self, lead: Callable[[LeaderScope], None]) -> bool:
        """One attempt to acquire or renew; True to make the next one at once."""
        with self._lock:
            scope = self._scope
            thread = self._lead_thread
            term = self._term
        if scope is None and (
            (thread is not None and thread.is_alive()) or (term is not None and term.in_flight)
        ):
            # The previous leader work has not returned yet, or LB calls of its term are still
            # in flight: never lead twice at once.
            overdue = (
                self._clock.monotonic() - self._stopped_at > self._config.leader_stop_timeout_s
            )
            if overdue and not self._waiting_logged:
                self._waiting_logged = True
                log.error(
                    "leader election: %s does not campaign: the previous leader work has not "
                    "returned after it was told to stop",
                    self._identity,
                )
            return False
        self._waiting_logged = False
        started = self._clock.monotonic()
        try:
            ok = self._try_acquire_or_renew()
        except PodlbError as exc:
            self._note_error(exc)
            ok = False
        else:
            self._note_error(None)
        took = self._clock.monotonic() - started
        deadline = started + self._config.renew_deadline_s
        if scope is not None:
            again = self._renewed(scope, ok, took, deadline)
        elif ok:
            again = self._acquired(took, deadline, lead)
        else:
            again = False
        self._report()
        return again

    def _renewed(self, scope: LeaderScope, ok: bool, took: float, deadline: float) -> bool:
        """After a renewal (or its failure) while leading; True to try again at once."""
        if ok:
            if took < self._config.renew_deadline_s and scope._extend(deadline):
                return False
            # Answered past the term's deadline (the API server froze, then answered): the
            # term has ended. The Lease is ours in the API: the next attempt, at once, renews
            # it and starts a new term.
            self._step_down(scope, f"the renewal was answered only after {took:.3f}s")
            return True
        holder = self.observed_holder()
        if holder is not None and holder != self._identity:
            self._step_down(scope, f"the lease is now held by {holder}")
        # otherwise the renewal failed: the watchdog stops us at the deadline
        return False

    def _acquired(self, took: float, deadline: float, lead: Callable[[LeaderScope], None]) -> bool:
        """After we took the Lease; True to renew it at once instead of leading on this answer.

        A term has ``renew_deadline - took`` left for its first renewal, which follows at once
        when the acquire took longer than a retry period. An acquire that took more than half
        the renew deadline (the API server froze, then answered: past the deadline or near it)
        leaves that renewal less time than the acquire itself took, so the term would likely
        end as soon as it began, its leader work started and torn down for nothing. The Lease
        is ours in the API: a renewal made at once (one call) decides instead."""
        if took > self._config.renew_deadline_s / 2:
            log.warning(
                "leader election: %s does not lead yet: the lease was acquired only after "
                "%.3fs (renew deadline %ss); renewing it at once",
                self._identity,
                took,
                self._config.renew_deadline_s,
            )
            return True
        self._start_leading(deadline, lead)
        return False

    def _try_acquire_or_renew(self) -> bool:
        """One client-go ``tryAcquireOrRenew``; True when we hold the Lease afterwards."""
        wall = self._clock.now()
        duration = self._config.advertised_duration_s
        with self._lock:
            observed = self._observed
        if (
            observed is not None
            and observed.holder == self._identity
            and observed.resource_version is not None
        ):
            # Fast path: the Lease was ours when we last saw it (we lead, or we renew at once
            # after a slow acquire): renew on that version; a conflict means look again.
            try:
                mine = replace(observed, renew_time=wall, lease_duration_s=duration)
                self._observe(self._store.update(mine))
                return True
            except (Conflict, NotFound) as exc:
                log.debug("leader election: fast renewal failed, reading the lease: %s", exc)
        current = self._store.get()
        if current is None:
            self._observe(self._store.create(LeaseRecord(self._identity, duration, wall, wall, 0)))
            return True
        self._observe(current)
        if current.holder and current.holder != self._identity and not self._expired(current):
            return False
        ours = current.holder == self._identity
        record = LeaseRecord(
            holder=self._identity,
            lease_duration_s=duration,
            acquire_time=(current.acquire_time or wall) if ours else wall,
            renew_time=wall,
            transitions=current.transitions if ours else current.transitions + 1,
            resource_version=current.resource_version,
        )
        self._observe(self._store.update(record))
        return True

    def _observe(self, record: LeaseRecord) -> None:
        now = self._clock.monotonic()
        with self._lock:
            if record != self._observed:
                self._observed = record
                self._observed_at = now

    def _expired(self, record: LeaseRecord) -> bool:
        """Someone else's lease, judged on our monotonic clock since we saw it change."""
        duration = record.lease_duration_s or self._config.lease_duration_s
        with self._lock:
            observed_at = self._observed_at
        return self._clock.monotonic() >= observed_at + duration

    def _start_leading(self, deadline: float, lead: Callable[[LeaderScope], None]) -> None:
        scope = LeaderScope(self._identity, self._clock, deadline)
        worker = threading.Thread(
            target=self._lead_main, args=(scope, lead), name="podlb-leader-work", daemon=True
        )
        watchdog = threading.Thread(
            target=scope._watch,
            args=(lambda: self._step_down(scope, "could not renew the lease in time"),),
            name="podlb-leader-watchdog",
            daemon=True,
        )
        with self._lock:
            self._scope = scope
            self._term = scope.term
            self._lead_thread = worker
        log.info("leader election: %s acquired the lease and starts leading", self._identity)
        self._report()
        watchdog.start()
        worker.start()

    def _lead_main(self, scope: LeaderScope, lead: Callable[[LeaderScope], None]) -> None:
        if not scope.is_leading():  # this thread started late: never lead on a dead term
            self._step_down(scope, "the renew deadline passed before the leader work started")
            return
        try:
            lead(scope)
        except BaseException as exc:
            log.error("leader election: the leader work failed: %r", exc)
            self._lead_error = exc
            self._step_down(scope, "the leader work failed")
            self._wake.set()
            return
        if not scope.stopped.is_set():
            self._lead_error = RuntimeError(
                "the leader work returned while still leading; it must run until scope.stopped"
            )
            self._step_down(scope, "the leader work returned")
            self._wake.set()

    def _step_down(self, scope: LeaderScope, why: str, level: int = logging.WARNING) -> None:
        """Stop ``scope`` (first), then report. Any thread; idempotent."""
        with self._lock:
            if self._scope is not scope:
                return
            scope._stop()
            self._scope = None
            self._stopped_at = self._clock.monotonic()
        log.log(level, "leader election: %s stopped leading: %s", self._identity, why)
        self._report()

    def _report(self) -> None:
        with self._report_lock:
            leading = self.is_leader()
            holder = self.observed_holder()
            if not leading and holder == self._identity:
                holder = None  # our own record, but we no longer act on it
            state = (leading, holder)
            if state == self._reported:
                return
            self._reported = state
            if leading:
                log.info("leader election: the leader is %s (this agent)", self._identity)
            else:
                log.info(
                    "leader election: the leader is %s (seen by %s)",
                    holder or "nobody we know of",
                    self._identity,
                )
            if self._on_change is not None:
                self._on_change(leading, holder)

    def _note_error(self, exc: PodlbError | None) -> None:
        """Log changes of the error state, not every failed attempt."""
        text = None if exc is None else f"{type(exc).__name__}: {exc}"
        if text == self._last_error:
            return
        previous, self._last_error = self._last_error, text
        if exc is None:
            log.info("leader election: the lease is reachable again (after %s)", previous)
        elif isinstance(exc, Conflict):
            log.info("leader election: %s lost a race for the lease: %s", self._identity, exc)
        else:
            log.warning("leader election: %s cannot reach the lease: %s", self._identity, text)

    def _shutdown(self, release: bool) -> None:
        with self._lock:
            scope = self._scope
        if scope is not None:
            self._step_down(scope, "shutting down", logging.INFO)
        with self._lock:
            worker = self._lead_thread
            term = self._term
        deadline = time.monotonic() + self._config.leader_stop_timeout_s  # real threads
        if worker is not None and worker is not threading.current_thread():
            worker.join(self._config.leader_stop_timeout_s)
            if worker.is_alive():
                log.error(
                    "leader election: the leader work did not return within %ss of being "
                    "stopped; the lease is left to expire instead of being released",
                    self._config.leader_stop_timeout_s,
                )
                return
        # No LB call of the ended term may land after a successor could lead.
        if term is not None and not term.settle(max(0.0, deadline - time.monotonic())):
            if term.in_flight:
                why = f"{term.in_flight} LB call(s) of the ended term still in flight"
            else:
                why = f"an LB call of the ended term may still land ({term.unsettled})"
            log.warning(
                "leader election: %s; the lease is left to expire instead of being released",
                why,
            )
            release = False
        if release:
            self._release()
        self._report()

    def _release(self) -> None:
        """client-go ReleaseOnCancel: holder "", duration 1 s; best effort."""
        with self._lock:
            record = self._observed
        if record is None or record.holder != self._identity or record.resource_version is None:
            return
        now = self._clock.now()
        released = LeaseRecord("", 1, now, now, record.transitions, record.resource_version)
        try:
            self._observe(self._store.update(released))
        except PodlbError as exc:
            log.warning("leader election: could not release the lease: %s", exc)
            return
        log.info("leader election: %s released the lease", self._identity)
