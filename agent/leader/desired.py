"""Desired backends of every LB pool (pure): Services + EndpointSlices + pods -> pools.

A Service in direct mode gets one pool per TCP port. A pod behind it is a *backend* when it is
``ContainersReady`` (not ``Ready``: that waits on our own readiness gate, which would deadlock)
and its ``podlb.io/datapath-ready`` is not False; a pod being stopped -- deleted, or stopped by
its kubelet (eviction, graceful node shutdown: ``DisruptionTarget`` ``TerminationByKubelet``)
-- is a *draining* backend. On an LB that stages (``Limits.stages``), a selected pod with an IP
that is not a backend yet is *staged*: its server is held on the LB out of rotation, health
checked, so that admitting it later is one ENABLE (agent.lb.base.Staging). Problems (bad
annotations, no selector, ports that resolve to nothing, a cap reached) are returned as data
with a typed reason; the caller turns them into Events and metrics.

``podlb.io/max-backends`` (or the provider's own limit): when more pods are ready than the cap,
the slots go to the pods of the newest revision first (``pod-template-hash`` /
``controller-revision-hash``; the revision whose newest pod was created last), then, within a
revision, to those the LB has now, then by name. A rolling update therefore always completes,
even at the cap with ``maxUnavailable: 0``: each new pod takes the slot of an old one (which
the LB drains, so it goes NotReady and is the first old pod the Deployment deletes), while a
scale-up within one revision never pushes out a registered pod. Draining backends do not count
against the cap.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from agent.lb.base import Mode, canonical_ip, server_name
from agent.model import (
    DATAPATH_READY,
    LB_READY,
    EndpointSlice,
    Pod,
    PodKey,
    Service,
    ServicePort,
    direct_mode,
)

from .gate import Admit, GatePolicy, gate_policy
from .routing import HAPROXY, Problem, port_label, route

DIRECT = "podlb.io/direct"
WEIGHT = "podlb.io/weight"
MAX_BACKENDS = "podlb.io/max-backends"
DEFAULT_WEIGHT = 100
MAX_WEIGHT = 256  # HAProxy's limit; a provider with a lower one gets weights capped to it
REVISION_LABELS = ("pod-template-hash", "controller-revision-hash")  # Deployment; StatefulSet, DS


@dataclass(frozen=True, slots=True)
class Limits:
    """What a provider's LB accepts (``LBProvider.max_weight`` / ``default_max_backends``)."""

    max_weight: int = MAX_WEIGHT
    default_max_backends: int | None = None
    stages: bool = False  # it health-checks servers out of rotation (agent.lb.base.Staging)


@dataclass(frozen=True, slots=True)
class Finding:
    namespace: str
    name: str  # the Service (or pod, for a pod annotation)
    problem: Problem
    message: str
    kind: str = "Service"
    pool: str | None = None  # the pool concerned, if any


@dataclass(frozen=True, slots=True)
class Backend:
    server: str  # the server's name in the pool: "<ip>_<port>" (unique per pool)
    address: str
    port: int
    weight: int
    draining: bool
    pod: PodKey


@dataclass(frozen=True, slots=True)
class PoolSpec:
    pool: str
    service: PodKey  # (namespace, name) of the Service; PodKey is a plain namespaced key
    service_port: str  # name or number, for messages
    backends: Mapping[str, Backend] = field(default_factory=dict)
    provider: str = HAPROXY
    mode: Mode = Mode.MANAGE
    # Pods the Service selects that are not backends (not ContainersReady, datapath False).
    others: Mapping[PodKey, str] = field(default_factory=dict)  # pod -> its server name
    capped: int = 0  # backends left out because of podlb.io/max-backends
    # Of ``others``: pods the LB never had (see ``never_added``): lb-ready NotRegistered.
    unregistered: frozenset[PodKey] = frozenset()
    # the Service's podlb.io/gate-timeout and gate-on-timeout
    gate: GatePolicy = field(default_factory=GatePolicy)
    # Of ``others``: servers to hold on the LB out of rotation, health-checked, until their
    # pod is a backend (pods with an IP, not being stopped, within the cap; on an LB that
    # stages, see agent.lb.base.Staging). By server name, like ``backends``.
    staged: Mapping[str, Backend] = field(default_factory=dict)
    # Of the staged: pods whose lb-ready may turn True once the LB's checks pass on their
    # staged server, before they are ready (podlb.io/gate-admit: checked, agent/leader/gate.py;
    # whatever datapath-ready says then: a NotListening from before the app listened is stale)
    early: frozenset[PodKey] = frozenset()


def _int_annotation(value: str | None, lo: int, hi: int) -> int | None:
    if value is None:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        return None
    return n if lo <= n <= hi else None


def datapath_ok(pod: Pod) -> bool:
    """``podlb.io/datapath-ready`` is not False (none yet counts as fine)."""
    dp = pod.condition(DATAPATH_READY)
    return dp is None or dp.status != "False"


def is_backend(pod: Pod) -> bool:
    return pod.containers_ready and datapath_ok(pod)


def never_added(pod: Pod) -> bool:
    """A pod the LB never had, as its ``podlb.io/lb-ready`` tells (none yet, or
    ``NotRegistered``), that is not being stopped (a stopping pod's drain waits for
    ``Deregistered``): told it is not registered, never that it was removed."""
    lb = pod.condition(LB_READY)
    stopping = pod.leaving or pod.phase in ("Succeeded", "Failed")
    return not stopping and (lb is None or lb.reason == "NotRegistered")


def desired_pools(
    services: Iterable[Service],
    slices: Iterable[EndpointSlice],
    pods: Mapping[PodKey, Pod],
    registered: Mapping[str, frozenset[str]] | None = None,
    *,
    default_provider: str = HAPROXY,
    limits: Mapping[str, Limits] | None = None,
) -> tuple[list[PoolSpec], list[Finding]]:
    """Every direct-mode Service port's pool. ``registered`` (pool -> servers the LB has now)
    keeps the choice under ``podlb.io/max-backends`` stable: those already in stay in.
    ``limits`` (provider -> what its LB accepts) caps weights and, in managed pools, the
    number of backends when the Service sets no cap of its own."""
    return DesiredPools(default_provider).compute(
        services, slices, pods, registered or {}, limits or {}
    )


@dataclass(frozen=True, slots=True)
class _Inputs:
    """All that one Service's pools are made of: the informers' objects (a cache replaces an
    object when it changes; tuples compare each item by identity first, so an unchanged
    Service costs no field-by-field comparison), and what the LB has."""

    service: Service
    slices: tuple[EndpointSlice, ...]
    pods: tuple[Pod | None, ...]  # of the slices' endpoints, in order
    stopped: tuple[Pod, ...]  # stopped by their kubelet, of the Service's namespace
    registered: tuple[frozenset[str] | None, ...]  # of its pools (last time's), in order


class DesiredPools:
    """:func:`desired_pools`, remembered per Service between rounds: a Service whose inputs
    are those of last time (see :class:`_Inputs`), with the same limits, gets last time's
    pools and findings, without recomputing them. At 1,000 Services and 30,000 pods this is
    most of a leader round when only a few pods changed."""

    def __init__(self, default_provider: str = HAPROXY) -> None:
        self.default_provider = default_provider
        self._memo: dict[tuple[str, str], tuple[_Inputs, list[PoolSpec], list[Finding]]] = {}
        self._limits: Mapping[str, Limits] = {}
        self.computed = 0  # Services computed afresh (not remembered), in all

    def compute(
        self,
        services: Iterable[Service],
        slices: Iterable[EndpointSlice],
        pods: Mapping[PodKey, Pod],
        registered: Mapping[str, frozenset[str]],
        limits: Mapping[str, Limits],
    ) -> tuple[list[PoolSpec], list[Finding]]:
        # Pods their kubelet stops may leave the EndpointSlices at once (reported Failed
        # before their hooks end): they are looked for apart, so the LB still drains them.
        stopped_in: dict[str, list[Pod]] = {}
        for p in pods.values():
            if p.stopped_by_kubelet and p.ips:
                stopped_in.setdefault(p.namespace, []).append(p)
        stopped = {ns: tuple(ps) for ns, ps in stopped_in.items()}
        by_service: dict[tuple[str, str], list[EndpointSlice]] = {}
        for sl in slices:
            if sl.service:
                by_service.setdefault((sl.namespace, sl.service), []).append(sl)
        pools: list[PoolSpec] = []
        findings: list[Finding] = []
        memo: dict[tuple[str, str], tuple[_Inputs, list[PoolSpec], list[Finding]]] = {}
        same_limits, self._limits = limits == self._limits, limits
        for svc in sorted(services, key=lambda s: (s.namespace, s.name)):
            key = (svc.namespace, svc.name)
            svc_slices = tuple(by_service.get(key, ()))
            svc_pods = tuple(
                [pods.get(ep.pod) for sl in svc_slices for ep in sl.endpoints if ep.pod]
            )
            svc_stopped = stopped.get(svc.namespace, ())
            last = self._memo.get(key) if same_limits else None
            if (
                last is not None
                and last[0].service is svc
                and last[0].slices == svc_slices
                and last[0].pods == svc_pods
                and last[0].stopped == svc_stopped
                and last[0].registered == tuple([registered.get(s.pool) for s in last[1]])
            ):
                memo[key] = last
            else:
                got = _service_pools(
                    svc, list(svc_slices), pods, svc_stopped, registered,
                    self.default_provider, limits,
                )  # fmt: skip
                self.computed += 1
                # what the LB had of the pools just made: the key of the next comparison
                had = tuple(registered.get(s.pool) for s in got[0])
                memo[key] = (_Inputs(svc, svc_slices, svc_pods, svc_stopped, had), *got)
            pools += memo[key][1]
            findings += memo[key][2]
        self._memo = memo
        return _without_conflicts(pools, findings)


def _service_pools(
    svc: Service,
    svc_slices: list[EndpointSlice],
    pods: Mapping[PodKey, Pod],
    stopped: Iterable[Pod],
    registered: Mapping[str, frozenset[str]],
    default_provider: str,
    limits: Mapping[str, Limits],
) -> tuple[list[PoolSpec], list[Finding]]:
    """One Service's pools and findings (none unless it is in direct mode)."""
    pools: list[PoolSpec] = []
    findings: list[Finding] = []
    direct, problem = direct_mode(svc)
    if problem:
        findings.append(Finding(svc.namespace, svc.name, Problem.BAD_ANNOTATION, problem))
    if not direct:
        return pools, findings
    if not svc.selector:
        findings.append(
            Finding(
                svc.namespace,
                svc.name,
                Problem.NO_SELECTOR,
                "a direct-mode Service needs a selector: podlb registers the pods it selects",
            )
        )
        return pools, findings
    where = route(svc, default_provider)
    findings += [Finding(svc.namespace, svc.name, p, m) for p, m in where.problems]
    limit = limits.get(where.provider, Limits())
    cap = _int_annotation(svc.annotation(MAX_BACKENDS), 1, 100_000)
    if svc.annotation(MAX_BACKENDS) is None and where.mode is Mode.MANAGE:
        cap = limit.default_max_backends  # the LB's own limit, reported when reached
    elif svc.annotation(MAX_BACKENDS) is not None and cap is None:
        findings.append(
            Finding(
                svc.namespace,
                svc.name,
                Problem.BAD_ANNOTATION,
                f"{MAX_BACKENDS}: {svc.annotation(MAX_BACKENDS)!r} is not an integer >= 1",
            )
        )
    gate, bad = gate_policy(svc)
    findings += [Finding(svc.namespace, svc.name, Problem.BAD_ANNOTATION, m) for m in bad]
    for sp in svc.ports:
        pool = where.pools.get(port_label(sp))
        if pool is None or sp.protocol != "TCP":
            continue
        spec, extra = _pool(
            svc, sp, pool, svc_slices, pods, cap, registered.get(pool), limit.max_weight,
            stopped, stage=limit.stages and where.mode is Mode.MANAGE,
        )  # fmt: skip
        # Pods not ready yet, whatever datapath-ready says: before the app listens it says
        # NotListening, and it is looked at again only on the pod's next change; the LB
        # reaching the pod is the fresher proof (the pod enters rotation only as a backend,
        # datapath included). A ready pod the datapath holds out is not early.
        early = frozenset(
            b.pod for b in spec.staged.values()
            if gate.admit is Admit.CHECKED and not pods[b.pod].containers_ready
        )  # fmt: skip
        pools.append(
            replace(spec, provider=where.provider, mode=where.mode, gate=gate, early=early)
        )
        findings += extra
    return pools, findings


def _without_conflicts(
    pools: list[PoolSpec], findings: list[Finding]
) -> tuple[list[PoolSpec], list[Finding]]:
    """A pool claimed by two Services (``podlb.io/lb-pool``) belongs to neither: left as it
    is, and both Services get a Warning (no Service can take over another's pool)."""
    claims: dict[str, list[PoolSpec]] = {}
    for spec in pools:
        claims.setdefault(spec.pool, []).append(spec)
    kept = []
    for spec in pools:
        rivals = claims[spec.pool]
        if len({(r.service.namespace, r.service.name) for r in rivals}) > 1:
            others = ", ".join(
                f"{r.service.namespace}/{r.service.name}" for r in rivals if r is not spec
            )
            findings.append(
                Finding(
                    spec.service.namespace,
                    spec.service.name,
                    Problem.POOL_CONFLICT,
                    f"LB pool {spec.pool!r} is also claimed by {others}: left untouched",
                    pool=spec.pool,
                )
            )
            continue
        kept.append(spec)
    return kept, findings


def _pool(
    svc: Service,
    sp: ServicePort,
    pool: str,
    slices: list[EndpointSlice],
    pods: Mapping[PodKey, Pod],
    cap: int | None,
    registered: frozenset[str] | None,
    max_weight: int,
    stopped: Iterable[Pod] = (),
    *,
    stage: bool = False,
) -> tuple[PoolSpec, list[Finding]]:
    findings: list[Finding] = []
    candidates: dict[str, Backend] = {}
    others: dict[PodKey, str] = {}
    stageable: dict[str, Backend] = {}
    label = port_label(sp)
    resolved_any = False
    slice_port: int | None = None
    for sl in slices:
        if sl.address_type not in ("IPv4", "IPv6"):
            continue
        port = next((p.port for p in sl.ports if p.name == (sp.name or "")), None)
        if port is None:
            continue
        resolved_any = True
        slice_port = port
        for ep in sl.endpoints:
            if ep.pod is None or not ep.addresses:
                continue
            pod = pods.get(ep.pod)
            if pod is None or pod.uid == "":
                continue
            terminating = pod.leaving or bool(ep.terminating)
            address = canonical_ip(ep.addresses[0])
            name = server_name(address, port)
            if not terminating and not is_backend(pod):
                others[ep.pod] = name
                if stage:
                    weight = _weight(pod, max_weight, findings)
                    stageable[name] = Backend(name, address, port, weight, False, ep.pod)
                continue
            weight = _weight(pod, max_weight, findings)
            candidates[name] = Backend(name, address, port, weight, terminating, ep.pod)
    if slice_port is not None:
        # A pod its kubelet stops that is out of the slices already: on its way out of the LB
        # (drained, then removed) with a verdict, unless its IP went to a pod in the slices.
        in_slices = {b.pod for b in candidates.values()} | set(others)
        for pod in stopped:
            name = server_name(canonical_ip(pod.ips[0]), slice_port)
            if svc.selects(pod) and pod.key not in in_slices and name not in candidates:
                others[pod.key] = name
    if not resolved_any and any(
        sl.endpoints for sl in slices if sl.address_type in ("IPv4", "IPv6")
    ):
        # Pods are selected, and none has the port. A Service without pods has one empty slice
        # (the EndpointSlice controller's placeholder: endpoints and ports null): no problem.
        findings.append(
            Finding(
                svc.namespace,
                svc.name,
                Problem.PORT_UNRESOLVED,
                f"port {label}: its targetPort resolves to no port of the selected pods",
            )
        )
    backends = candidates
    capped = 0
    live = [b for b in candidates.values() if not b.draining]
    if cap is not None and len(live) > cap:
        live = _by_claim(live, pods, registered or frozenset())
        keep = {b.server for b in live[:cap]}
        capped = len(live) - cap
        backends = {n: b for n, b in candidates.items() if b.draining or n in keep}
        others.update({b.pod: b.server for b in live[cap:]})
        findings.append(
            Finding(
                svc.namespace,
                svc.name,
                Problem.CAP_REACHED,
                f"pool {pool}: {len(live)} ready pods, {MAX_BACKENDS}={cap}: {capped} left out",
            )
        )
    return (
        PoolSpec(
            pool=pool,
            service=PodKey(svc.namespace, svc.name),
            service_port=label,
            backends=backends,
            others=others,
            capped=capped,
            unregistered=frozenset(k for k in others if k in pods and never_added(pods[k])),
            staged=_within_cap(
                stageable,
                sum(not b.draining for b in backends.values()),
                cap,
                registered or frozenset(),
            ),
        ),
        findings,
    )


def _weight(pod: Pod, max_weight: int, findings: list[Finding]) -> int:
    """The pod's ``podlb.io/weight`` (default 100), capped to the LB's maximum; a bad value
    is a finding and leaves the default."""
    raw = pod.annotation(WEIGHT)
    if raw is None:
        return min(DEFAULT_WEIGHT, max_weight)
    parsed = _int_annotation(raw, 0, MAX_WEIGHT)
    if parsed is None:
        findings.append(
            Finding(
                pod.namespace,
                pod.name,
                Problem.BAD_ANNOTATION,
                f"{WEIGHT}: {raw!r} is not an integer 0-{MAX_WEIGHT}",
                kind="Pod",
            )
        )
        return min(DEFAULT_WEIGHT, max_weight)
    return min(parsed, max_weight)


def _within_cap(
    stageable: dict[str, Backend], live: int, cap: int | None, registered: frozenset[str]
) -> dict[str, Backend]:
    """The servers to stage: all of them, or as many as the cap leaves room for beside the
    ``live`` backends: those the LB has already first (a staged server stays staged), then by
    name."""
    if cap is None:
        return stageable
    room = max(0, cap - live)
    return {
        n: stageable[n] for n in sorted(stageable, key=lambda n: (n not in registered, n))[:room]
    }


def _created(pod: Pod | None) -> float:
    """A pod's creationTimestamp in seconds (0 when unknown or unreadable)."""
    if pod is None or not pod.creation_timestamp:
        return 0.0
    try:
        return dt.datetime.fromisoformat(pod.creation_timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _by_claim(
    live: list[Backend], pods: Mapping[PodKey, Pod], registered: frozenset[str]
) -> list[Backend]:
    """Live backends in the order they get the capped slots (see the module docstring): the
    newest revision first (ties: the one with fewer servers on the LB, the one arriving),
    then whoever the LB has, then by name."""

    def revision(b: Backend) -> str:
        pod = pods.get(b.pod)
        labels = dict(pod.labels) if pod else {}
        return next((labels[k] for k in REVISION_LABELS if k in labels), "")

    newest: dict[str, float] = {}
    on_lb: dict[str, int] = {}
    for b in live:
        rev = revision(b)
        newest[rev] = max(newest.get(rev, 0.0), _created(pods.get(b.pod)))
        on_lb[rev] = on_lb.get(rev, 0) + (b.server in registered)
    return sorted(
        live,
        key=lambda b: (
            -newest[revision(b)], on_lb[revision(b)], revision(b),
            b.server not in registered, b.server,
        ),
    )  # fmt: skip
