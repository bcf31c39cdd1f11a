"""What the leader reads of its LBs each round (agent/leader/reconcile.py).

Every pool of every instance, each round, on an LB that is slow to read (a cloud's describe
calls). A QuickObserve LB (HAProxy: one short command a backend) is read whole at a term's
start; then each round reads the pools that may have changed, and of the others those read
longest ago, as many as keep each pool's last read younger than ``full_read_s`` at every
round's start (its share of the sweep: the pools times the time since the last round over
``full_read_s``); it takes the rest as last read. At 10,000 servers reading all of them was a
third of each round, and reading them all at once every ``full_read_s`` made one round in six
or so 0.1-0.15 s longer than the others (more on a busy machine), which a pod made ready then
waited for. A pool may have changed when its backends did, when a change of podlb's is in
flight or landed in it since, when a server of it is out of rotation or down, or when a pod of
it waits for the LB (Registering, Unhealthy, Draining: what changes without an event). A change
made on the LB behind podlb's back (a check failing) is seen within ``full_read_s`` and a
round; a restarted instance (LeaderReads.restarted, from the leader's probe) and one that could
not be read are read whole at the next round. After an admission, the pools it landed in are
read back (read_back).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agent.clock import Clock
from agent.errors import PodlbError
from agent.lb.base import AdminState, Health, LBProvider, Mode, PoolState, QuickObserve

from .applier import PoolApplier, PoolAt
from .desired import PoolSpec
from .sinks import LeaderMetrics
from .verdicts import VerdictWriter

log = logging.getLogger(__name__)
PoolKey = tuple[str, str]  # (provider, pool)
Observed = dict[str, dict[str, dict[str, PoolState]]]  # provider -> instance -> pool -> state
FULL_READ_S = 2.0  # LeaderReads.full_read_s


@dataclass
class LeaderReads:
    """Reads the pools of every LB instance, round after round, as the module says (the
    providers, by name, are given per call)."""

    clock: Clock
    applier: PoolApplier  # what podlb changed, and which pools have nothing to do
    verdicts: VerdictWriter  # which pools have a pod waiting for the LB
    metrics: LeaderMetrics = field(default_factory=LeaderMetrics)
    full_read_s: float = FULL_READ_S
    # per QuickObserve provider: what the last round read of every pool, each pool's last
    # read (the oldest first), and when the last round read it
    _last_read: Observed = field(default_factory=dict)
    _read_at: dict[str, OrderedDict[str, float]] = field(default_factory=dict)
    _round_at: dict[str, float] = field(default_factory=dict)
    # LB instances found restarted or back (the prober's thread alone counts), and as many as
    # the rounds have seen: the next round reads all when they differ
    _restarts: int = 0
    _restarts_read: int = 0
    _last_specs: Mapping[PoolKey, PoolSpec] = field(default_factory=dict)  # the round's pools
    # (provider, instance, pool) -> its state last round, found with every server in rotation
    _in_rotation: dict[PoolAt, PoolState] = field(default_factory=dict)
    _rotating: dict[PoolAt, PoolState] = field(default_factory=dict)  # this round's

    def restarted(self) -> None:
        """An instance restarted, or is back after it could not be reached: read all."""
        self._restarts += 1

    def forget(self) -> None:
        """A new term: another leader may have changed the LBs since; read all."""
        self._last_read.clear()

    def observe(
        self,
        providers: Mapping[str, LBProvider],
        keys: set[PoolKey],
        specs: Mapping[PoolKey, PoolSpec],
    ) -> tuple[Observed, set[str]]:
        """provider -> instance -> pool -> state for the reachable instances; and the
        providers whose instances all were. A QuickObserve provider read before is read only
        where a pool may have changed (:meth:`_quiet`) and where its sweep is (:meth:`_due`)."""
        out: Observed = {}
        reachable: set[str] = set()
        now = self.clock.monotonic()
        restarts = self._restarts
        read_all, self._restarts_read = restarts != self._restarts_read, restarts
        changing = self.applier.changing()
        for name, provider in providers.items():
            pools = {pool for prov, pool in keys if prov == name}
            last = None if read_all else self._last_read.get(name)
            due = self._due(name, pools, now) if last is not None else pools
            out[name] = {}
            ok = True
            taken: set[str] = set()  # pools taken as last read, on some instance
            for instance in provider.instances():
                seen = last.get(instance) if last is not None else None
                quiet: set[str] = set()
                if seen is not None:
                    quiet = {
                        p
                        for p in pools - due
                        if (name, instance, p) not in changing
                        and self._quiet(name, instance, p, seen, specs)
                    }
                try:
                    got = provider.observe_pools(instance, pools - quiet) if pools - quiet else {}
                except PodlbError as exc:
                    ok = False
                    self.metrics.fail_static("lb_unreachable")
                    log.warning(
                        "leader: %s %s not observed: %s (its pools left as they are)",
                        name, instance, exc,
                    )  # fmt: skip
                    continue
                if seen is not None:
                    got = {p: seen[p] for p in quiet} | got
                taken |= quiet
                out[name][instance] = got
            if ok:
                reachable.add(name)
            if ok and isinstance(provider, QuickObserve) and provider.observes_quickly():
                self._last_read[name] = out[name]
                self._swept(name, pools, pools - taken, now)
            else:  # read whole next round
                self._last_read.pop(name, None)
        self._last_specs = specs
        self._in_rotation, self._rotating = self._rotating, {}
        return out, reachable

    def _due(self, provider: str, pools: set[str], now: float) -> set[str]:
        """The sweep's share of this round: the pools read longest ago, as many as the pools
        times the time since the last round over :attr:`full_read_s`, and every pool read
        :attr:`full_read_s` ago or more (or never)."""
        read_at = self._read_at.get(provider, OrderedDict())
        since = now - self._round_at.get(provider, now - self.full_read_s)
        share = math.ceil(len(pools) * min(1.0, since / self.full_read_s))
        due = pools - read_at.keys()
        for pool, at in read_at.items():  # the oldest first
            if len(due) >= share and now - at < self.full_read_s:
                break
            if pool in pools:
                due.add(pool)
        return due

    def _swept(self, provider: str, pools: set[str], read: set[str], now: float) -> None:
        """Note the round's reads: ``read`` on every instance now (the sweep's share, and the
        pools that may have changed), and pools gone from ``pools`` forgotten."""
        read_at = self._read_at.setdefault(provider, OrderedDict())
        for pool in read:
            read_at[pool] = now
            read_at.move_to_end(pool)
        for pool in read_at.keys() - pools:
            del read_at[pool]
        self._round_at[provider] = now

    def read_back(
        self, providers: Mapping[str, LBProvider], admitted: Iterable[PoolAt], observed: Observed
    ) -> tuple[Observed, set[PoolKey]]:
        """``observed`` with the pools this round admitted servers in read again (their changes
        landed: PoolApplier.admissions), and the (provider, pool)s read; an instance that
        cannot be read keeps what it had."""
        by_instance: dict[tuple[str, str], list[str]] = {}
        for provider, instance, pool in admitted:
            if instance in observed.get(provider, {}):
                by_instance.setdefault((provider, instance), []).append(pool)
        fresh = dict(observed)  # copied where read again
        read: set[PoolKey] = set()
        for (provider, instance), names in by_instance.items():
            try:
                got = providers[provider].observe_pools(instance, names)
            except PodlbError as exc:
                log.debug("leader: %s %s not read back: %s", provider, instance, exc)
                continue
            fresh[provider] = {**fresh[provider], instance: {**fresh[provider][instance], **got}}
            read |= {(provider, pool) for pool in got}
        return fresh, read

    def _quiet(
        self,
        provider: str,
        instance: str,
        pool: str,
        seen: Mapping[str, PoolState],
        specs: Mapping[PoolKey, PoolSpec],
    ) -> bool:
        """Whether a pool can be taken as the last round read it (no change of podlb's is in
        flight or landed since: the caller asks PoolApplier.changing): read then (and on the
        LB), its spec the very one of then (no backend changed), every server in rotation and
        none down, no pod of it waiting for the LB, and nothing to do in it (settled)."""
        key, at = (provider, pool), (provider, instance, pool)
        state, spec = seen.get(pool), specs.get(key)
        if state is None or spec is not self._last_specs.get(key) or self.verdicts.waits(key):
            return False
        if self._in_rotation.get(at) is not state:  # (the very state found so last round)
            for s in state.servers.values():
                if s.admin is not AdminState.READY or s.health in (Health.DOWN, Health.UNKNOWN):
                    return False
        self._rotating[at] = state
        if spec is None or not (spec.backends or spec.others):
            return not state.servers  # pool gone, or no backend: nothing left to take out
        return spec.mode is not Mode.MANAGE or self.applier.settled(at, spec)
