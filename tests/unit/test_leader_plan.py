"""Desired backends and the LB plan, table-driven over plain data."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from agent.kube.convert import endpointslice_from_dict
from agent.lb.base import Action, AdminState, Health, ObservedServer, Op, PoolState, server_name
from agent.leader.desired import Limits, Problem, desired_pools, direct_mode
from agent.leader.plan import LBReason, lb_verdicts, plan_pool
from agent.model import (
    Condition,
    Endpoint,
    EndpointSlice,
    Pod,
    PodKey,
    Service,
    ServicePort,
    SlicePort,
)

NS = "shop"


def svc(annotations: dict[str, str] | None = None, **kw: Any) -> Service:
    base: dict[str, Any] = dict(
        namespace=NS,
        name="web",
        uid="s1",
        type="LoadBalancer",
        selector=(("app", "web"),),
        ports=(ServicePort(80, "http", name="http"),),
        annotations=tuple(
            (annotations if annotations is not None else {"podlb.io/direct": "true"}).items()
        ),
    )
    base.update(kw)
    return Service(**base)


def pod(name: str, *, cr: str = "True", dp: str | None = "True", **kw: Any) -> Pod:
    conds = [Condition("ContainersReady", cr)]
    if dp is not None:
        conds.append(Condition("podlb.io/datapath-ready", dp))
    base: dict[str, Any] = dict(
        namespace=NS,
        name=name,
        uid=f"u-{name}",
        node_name="n1",
        ips=(),
        phase="Running",
        conditions=tuple(conds),
    )
    base.update(kw)
    return Pod(**base)


def slice_of(
    *pods: tuple[str, str], port: int = 8080, terminating: set[str] | None = None
) -> EndpointSlice:
    terminating = terminating or set()
    return EndpointSlice(
        namespace=NS,
        name="web-abc",
        service="web",
        address_type="IPv4",
        ports=(SlicePort("http", port),),
        endpoints=tuple(
            Endpoint(
                (ip,), name not in terminating, True, name in terminating, "n1", PodKey(NS, name)
            )
            for name, ip in pods
        ),
    )


def pods_map(*pods: Pod) -> dict[PodKey, Pod]:
    return {p.key: p for p in pods}


@pytest.mark.parametrize(
    ("annotations", "stype", "direct", "problem"),
    [
        ({"podlb.io/direct": "true"}, "ClusterIP", True, False),
        ({"podlb.io/direct": "false"}, "LoadBalancer", False, False),
        ({"podlb.io/direct": "yes"}, "LoadBalancer", False, True),
        ({"service.cloud.tencent.com/direct-access": "true"}, "LoadBalancer", True, False),
        ({"service.cloud.tencent.com/direct-access": "true"}, "ClusterIP", False, False),
        (
            {"service.beta.kubernetes.io/cce-load-balancer-backend-type": "eni"},
            "LoadBalancer",
            True,
            False,
        ),
        ({}, "LoadBalancer", False, False),
    ],
)
def test_direct_mode(annotations: dict[str, str], stype: str, direct: bool, problem: bool) -> None:
    got, msg = direct_mode(svc(annotations, type=stype))
    assert got is direct
    assert (msg is not None) is problem


def test_backends_are_containers_ready_not_ready_and_datapath_not_false() -> None:
    pods = pods_map(
        pod("a"),  # ContainersReady, datapath True
        pod("b", dp=None),  # no datapath condition yet: still a backend
        pod("c", cr="False"),  # not ContainersReady
        pod("d", dp="False"),  # datapath says no
        pod("e", terminating=True),  # terminating: draining backend
    )
    sl = slice_of(
        ("a", "10.0.0.1"),
        ("b", "10.0.0.2"),
        ("c", "10.0.0.3"),
        ("d", "10.0.0.4"),
        ("e", "10.0.0.5"),
    )
    [spec], findings = desired_pools([svc()], [sl], pods)
    assert findings == []
    assert spec.pool == "shop.web.http"
    live = {b.pod.name for b in spec.backends.values() if not b.draining}
    draining = {b.pod.name for b in spec.backends.values() if b.draining}
    assert live == {"a", "b"} and draining == {"e"}
    assert {p.name for p in spec.others} == {"c", "d"}
    assert spec.backends[server_name("10.0.0.1", 8080)].port == 8080


def test_ipv6_weights_pool_annotation_and_problems() -> None:
    pods = pods_map(
        pod("a", annotations=(("podlb.io/weight", "7"),)),
        pod("b", annotations=(("podlb.io/weight", "heavy"),)),
    )
    sl = EndpointSlice(NS, "web-v6", "web", "IPv6", (SlicePort("http", 8080),), (
        Endpoint(("fd00::1",), True, True, False, "n1", PodKey(NS, "a")),
        Endpoint(("fd00::2",), True, True, False, "n1", PodKey(NS, "b")),
    ))  # fmt: skip
    [spec], findings = desired_pools(
        [svc({"podlb.io/direct": "true", "podlb.io/lb-pool": "be_web"})], [sl], pods
    )
    assert spec.pool == "be_web"
    weights = {b.pod.name: b.weight for b in spec.backends.values()}
    assert weights == {"a": 7, "b": 100}
    assert [f.problem for f in findings] == [Problem.BAD_ANNOTATION]
    assert spec.backends[server_name("fd00::1", 8080)].address == "fd00::1"
    _, findings = desired_pools([svc(selector=None)], [], {})
    assert [f.problem for f in findings] == [Problem.NO_SELECTOR]
    bad_port = EndpointSlice(NS, "x", "web", "IPv4", (SlicePort("other", 1),), (
        Endpoint(("10.0.0.1",), True, True, False, "n1", PodKey(NS, "a")),
    ))  # fmt: skip
    _, findings = desired_pools([svc()], [bad_port], {})
    assert [f.problem for f in findings] == [Problem.PORT_UNRESOLVED]


def real_slice(
    endpoints: list[dict[str, Any]] | None, ports: list[dict[str, Any]] | None
) -> EndpointSlice:
    """An EndpointSlice as kube-controller-manager v1.28 publishes it (``kubectl get -o json``):
    its placeholder for a Service without pods has ``endpoints: null`` and ``ports: null``."""
    return endpointslice_from_dict({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-x7k2p", "namespace": NS, "labels": {
            "kubernetes.io/service-name": "web",
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4", "endpoints": endpoints, "ports": ports,
    })  # fmt: skip


@pytest.mark.parametrize("endpoints", [None, []])
def test_a_service_without_pods_is_no_routing_problem(endpoints: list[Any] | None) -> None:
    """A real node: a Warning PortUnresolved at each Service creation and scale to zero."""
    [spec], findings = desired_pools([svc()], [real_slice(endpoints, None)], {})
    assert findings == [] and spec.backends == {}


def test_pods_without_the_target_port_are_a_routing_problem() -> None:
    # The real controller lists the pods with the ports that resolved on them: none here.
    ep = {"addresses": ["10.0.0.1"], "conditions": {"ready": True},
          "targetRef": {"kind": "Pod", "namespace": NS, "name": "a", "uid": "u-a"}}  # fmt: skip
    _, findings = desired_pools([svc()], [real_slice([ep], None)], {})
    assert [f.problem for f in findings] == [Problem.PORT_UNRESOLVED]
    assert "resolves to no port of the selected pods" in findings[0].message
    # Another port of the pods resolved, this one did not: still one.
    other = [{"name": "metrics", "port": 9090, "protocol": "TCP"}]
    _, findings = desired_pools([svc()], [real_slice(None, None), real_slice([ep], other)], {})
    assert [f.problem for f in findings] == [Problem.PORT_UNRESOLVED]


def test_max_backends_is_stable_and_reported() -> None:
    names = [f"p{i}" for i in range(6)]
    pods = pods_map(*(pod(n) for n in names))
    sl = slice_of(*((n, f"10.0.0.{i + 1}") for i, n in enumerate(names)))
    capped = svc({"podlb.io/direct": "true", "podlb.io/max-backends": "3"})
    [spec], findings = desired_pools([capped], [sl], pods)
    assert len(spec.backends) == 3 and spec.capped == 3
    assert [f.problem for f in findings] == [Problem.CAP_REACHED]
    # Whoever the LB has now keeps its slot, whatever the name order says.
    now = frozenset({server_name("10.0.0.6", 8080), server_name("10.0.0.5", 8080)})
    [spec2], _ = desired_pools([capped], [sl], pods, {spec.pool: now})
    assert now <= set(spec2.backends) and len(spec2.backends) == 3
    [spec3], _ = desired_pools([capped], [sl], pods, {spec.pool: frozenset(spec2.backends)})
    assert set(spec3.backends) == set(spec2.backends)


def obs(
    name: str,
    admin: AdminState = AdminState.READY,
    health: Health = Health.UP,
    sessions: int = 0,
    weight: int = 100,
) -> ObservedServer:
    ip, port = name.rsplit("_", 1)
    return ObservedServer(name, ip, int(port), weight, admin, health, sessions)


def state(*servers: ObservedServer) -> PoolState:
    return PoolState("shop.web.http", {s.name: s for s in servers})


A, B, C = (server_name(f"10.0.0.{i}", 8080) for i in (1, 2, 3))


def test_plan_adds_enables_drains_then_removes_in_order() -> None:
    pods = pods_map(
        pod("a", annotations=(("podlb.io/weight", "50"),)), pod("b"), pod("c", terminating=True)
    )
    [spec], _ = desired_pools(
        [svc()], [slice_of(("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3"))], pods
    )
    gone = server_name("10.0.0.9", 8080)
    observed = state(obs(B, AdminState.DRAIN), obs(C), obs(gone, AdminState.DRAIN, sessions=0))
    actions = plan_pool(spec, observed)
    assert actions == [
        Action(Op.ADD, A, "10.0.0.1", 8080, 50),
        Action(Op.ENABLE, B, weight=100),
        Action(Op.DRAIN, C),
        Action(Op.REMOVE, gone),
    ]
    # Drained with sessions left: wait, unless the drain timeout passed.
    observed = state(obs(C, AdminState.DRAIN, sessions=3))
    assert [a.op for a in plan_pool(spec, observed) if a.server == C] == []
    late = plan_pool(spec, observed, drain_age_s={C: 31.0}, drain_timeout_s=30.0)
    assert [a.op for a in late if a.server == C] == [Op.REMOVE]


def test_plan_is_idempotent_and_fail_static_removes_nothing() -> None:
    pods = pods_map(pod("a"))
    [spec], _ = desired_pools([svc()], [slice_of(("a", "10.0.0.1"))], pods)
    assert plan_pool(spec, state(obs(A))) == []
    stray = state(obs(A), obs(B))
    assert plan_pool(spec, stray, fail_static=True) == []
    assert plan_pool(None, stray) == [Action(Op.DRAIN, A), Action(Op.DRAIN, B)]
    assert plan_pool(spec, state(obs(A, weight=1))) == [Action(Op.SET_WEIGHT, A, weight=100)]


def test_plan_turns_health_checks_back_on() -> None:
    """Issue 17 defect 4: an add cut short leaves the server with its check off, in maintenance
    or (after an ENABLE that only set the state) ready: ENABLE it, which turns checks on."""
    [spec], _ = desired_pools([svc()], [slice_of(("a", "10.0.0.1"))], pods_map(pod("a")))
    for admin in (AdminState.MAINT, AdminState.READY):
        off = replace(obs(A, admin, Health.CHECKING), checks_off=True)
        assert plan_pool(spec, state(off)) == [Action(Op.ENABLE, A, weight=100)]
    # Checks off on a server on its way out: nothing to turn on.
    gone = replace(obs(A, AdminState.DRAIN, Health.CHECKING), checks_off=True)
    assert plan_pool(None, state(gone)) == [Action(Op.REMOVE, A)]


def test_lb_verdicts_need_every_instance() -> None:
    pods = pods_map(
        pod("a"),
        pod("b"),
        pod("c", terminating=True),
        pod("d", cr="False"),
        pod("e", terminating=True),
    )
    sl = slice_of(
        ("a", "10.0.0.1"),
        ("b", "10.0.0.2"),
        ("c", "10.0.0.3"),
        ("d", "10.0.0.4"),
        ("e", "10.0.0.5"),
    )
    [spec], _ = desired_pools([svc()], [sl], pods)
    E = server_name("10.0.0.5", 8080)
    one = {
        spec.pool: state(obs(A), obs(B, health=Health.DOWN), obs(C, AdminState.DRAIN, sessions=2))
    }
    two = {spec.pool: state(obs(A), obs(B), obs(C, AdminState.DRAIN))}
    v = lb_verdicts([spec], {"haproxy": {"h1": one, "h2": two}})
    assert v[PodKey(NS, "a")].ready and v[PodKey(NS, "a")].reason is LBReason.HEALTHY
    assert v[PodKey(NS, "b")].reason is LBReason.UNHEALTHY
    assert v[PodKey(NS, "c")].reason is LBReason.DRAINING
    assert v[PodKey(NS, "d")].reason is LBReason.NOT_REGISTERED  # never in the LB
    assert v[PodKey(NS, "e")].reason is LBReason.DEREGISTERED
    del E
    only_one = lb_verdicts([spec], {"haproxy": {"h1": one, "h2": {spec.pool: state()}}})
    assert only_one[PodKey(NS, "a")].reason is LBReason.REGISTERING
    # Drained on every instance with no session left: the LB confirms nothing reaches it.
    drained = {spec.pool: state(obs(C, AdminState.DRAIN))}
    confirmed = lb_verdicts([spec], {"haproxy": {"h1": drained, "h2": drained}})
    assert confirmed[PodKey(NS, "c")].reason is LBReason.DEREGISTERED
    checking = {spec.pool: state(obs(A, health=Health.CHECKING))}
    assert (
        lb_verdicts([spec], {"haproxy": {"h1": checking}})[PodKey(NS, "a")].reason
        is LBReason.REGISTERING
    )


def test_a_pool_claimed_twice_belongs_to_neither_and_static_servers_stay() -> None:
    pods = pods_map(pod("a"))
    one = svc({"podlb.io/direct": "true", "podlb.io/lb-pool": "prod"})
    two = svc({"podlb.io/direct": "true", "podlb.io/lb-pool": "prod"}, name="evil")
    pools, findings = desired_pools([one, two], [slice_of(("a", "10.0.0.1"))], pods)
    assert pools == []
    assert sorted((f.name, f.problem, f.pool) for f in findings) == [
        ("evil", Problem.POOL_CONFLICT, "prod"),
        ("web", Problem.POOL_CONFLICT, "prod"),
    ]
    static = ObservedServer("web1", "192.0.2.10", 80, 1, AdminState.READY, Health.UP, 0)
    assert plan_pool(None, PoolState("prod", {"web1": static})) == []


def rollout_at_the_cap(replicas: int, cap: int, max_surge: int = 1) -> list[str]:
    """A Deployment rolling update (maxUnavailable 0) of a Service capped at ``cap`` backends,
    step by step: the leader's desired pools against an LB that takes them at once (a pod is
    Ready once it is a live backend), the Deployment controller's rules (deletedPods first
    the not-ready old ones, never below ``replicas`` Ready). Returns the log; raises if stuck."""
    capped = svc({"podlb.io/direct": "true", "podlb.io/max-backends": str(cap)})
    clock = iter(range(10_000))
    live: dict[str, Pod] = {}  # name -> pod (not deleted)
    gone: dict[str, Pod] = {}  # deleted, still draining for one step

    def create(rev: str) -> None:
        n = next(clock)
        name = f"{rev}{n}"
        live[name] = pod(
            name, ips=(f"10.0.{n // 250}.{n % 250 + 1}",),
            labels=(("app", "web"), ("pod-template-hash", rev)),
            creation_timestamp=f"2026-01-01T00:{n // 60:02d}:{n % 60:02d}Z",
        )  # fmt: skip

    for _ in range(replicas):
        create("old")
    registered: frozenset[str] = frozenset()
    log: list[str] = []
    for step in range(20 * replicas):
        everyone = {**gone, **live}
        sl = slice_of(*((n, p.ips[0]) for n, p in everyone.items()), terminating=set(gone))
        [spec], _ = desired_pools([capped], [sl], pods_map(*everyone.values()),
                                  {"shop.web.http": registered})  # fmt: skip
        registered = frozenset(spec.backends)
        assert len([b for b in spec.backends.values() if not b.draining]) <= cap
        ready = {b.pod.name for b in spec.backends.values() if not b.draining}
        gone = {}
        old = [n for n in live if n.startswith("old")]
        new = [n for n in live if n.startswith("new")]
        if not old and len(new) == replicas and set(new) <= ready:
            log.append(f"step {step}: done")
            return log
        for _ in range(max(0, min(replicas + max_surge - len(live), replicas - len(new)))):
            create("new")
        ready_total = len(ready & set(live))
        for name in sorted(old, key=lambda n: (n in ready, n)):  # not-ready old pods first
            if name in ready:
                if ready_total - 1 < replicas:
                    break
                ready_total -= 1
            gone[name] = replace(live.pop(name), terminating=True)
            log.append(f"step {step}: delete {name}")
    raise AssertionError(f"rollout stuck at the cap: {sorted(live)}; {log[-5:]}")


@pytest.mark.parametrize(
    ("replicas", "cap", "surge"), [(3, 3, 1), (50, 50, 1), (6, 6, 2), (4, 5, 2)]
)
def test_a_rolling_update_at_the_cap_completes(replicas: int, cap: int, surge: int) -> None:
    """Defect 3: with maxUnavailable 0, a surge pod beyond podlb.io/max-backends used to stay
    out of the LB forever (so never Ready, so no old pod was ever deleted). The newest
    revision's pods now take the slots of older ones, and the rollout completes."""
    log = rollout_at_the_cap(replicas, cap, surge)
    assert log[-1].endswith("done")


def test_max_backends_prefers_the_newest_revision_and_is_stable_within_one() -> None:
    labels = (("app", "web"), ("pod-template-hash", "a"))
    pods = pods_map(
        *(pod(f"a{i}", labels=labels, creation_timestamp="2026-01-01T00:00:00Z") for i in range(4)),
        pod("b0", labels=(("app", "web"), ("pod-template-hash", "b")),
            creation_timestamp="2026-01-01T00:05:00Z"),
    )  # fmt: skip
    sl = slice_of(*((n.name, f"10.0.0.{i + 1}") for i, n in enumerate(pods)))
    capped = svc({"podlb.io/direct": "true", "podlb.io/max-backends": "3"})
    a3, a2 = server_name("10.0.0.4", 8080), server_name("10.0.0.3", 8080)
    [spec], _ = desired_pools([capped], [sl], pods, {"shop.web.http": frozenset({a3, a2})})
    names = {b.pod.name for b in spec.backends.values()}
    # The new revision first, then whoever of the old one the LB has: a scale-up within one
    # revision never pushes out a registered pod.
    assert names == {"b0", "a3", "a2"}, names


def stopped_by_kubelet(name: str, **kw: Any) -> Pod:
    return pod(
        name, labels=(("app", "web"),),
        conditions=(Condition("ContainersReady", "True"),
                    Condition("DisruptionTarget", "True", "TerminationByKubelet")),
        **kw,
    )  # fmt: skip


def test_pods_their_kubelet_stops_are_drained_on_the_lb() -> None:
    """Defect 10 (LB side): a pod evicted by its kubelet, or stopped by a graceful node
    shutdown, has no deletionTimestamp and may still be a ready endpoint (or already out of
    the slices, reported Failed): either way the LB drains it, and its lb-ready reaches
    Deregistered once the LB confirms -- what the node's drain waits for."""
    pods = pods_map(
        pod("live", labels=(("app", "web"),)),
        stopped_by_kubelet("evicted"),
        stopped_by_kubelet("shutdown", phase="Failed", ips=("10.0.0.3",)),
        pod("spoof", labels=(("app", "web"),),
            conditions=(Condition("ContainersReady", "True"),
                        Condition("DisruptionTarget", "True", "EvictionByEvictionAPI"))),
    )  # fmt: skip
    sl = slice_of(("live", "10.0.0.1"), ("evicted", "10.0.0.2"), ("spoof", "10.0.0.4"))
    [spec], _ = desired_pools([svc()], [sl], pods)
    draining = {b.pod.name for b in spec.backends.values() if b.draining}
    live = {b.pod.name for b in spec.backends.values() if not b.draining}
    assert draining == {"evicted"} and live == {"live", "spoof"}
    shutdown = server_name("10.0.0.3", 8080)
    assert spec.others == {PodKey(NS, "shutdown"): shutdown}
    on_lb = state(obs(server_name("10.0.0.1", 8080)), obs(server_name("10.0.0.2", 8080)),
                  obs(shutdown), obs(server_name("10.0.0.4", 8080)))  # fmt: skip
    actions = plan_pool(spec, on_lb)
    assert actions == [Action(Op.DRAIN, server_name("10.0.0.2", 8080)), Action(Op.DRAIN, shutdown)]
    verdicts = lb_verdicts([spec], {"haproxy": {"lb1": {spec.pool: state(
        obs(server_name("10.0.0.1", 8080)), obs(server_name("10.0.0.4", 8080)))}}})  # fmt: skip
    assert verdicts[PodKey(NS, "evicted")].reason is LBReason.DEREGISTERED
    assert verdicts[PodKey(NS, "shutdown")].reason is LBReason.DEREGISTERED


STAGES = {"haproxy": Limits(stages=True)}


def test_pods_not_ready_yet_are_staged_on_an_lb_that_stages() -> None:
    """A pod with an IP that is not a backend yet is added out of rotation (STAGE: health
    checks run while the app starts), kept there (never removed for it), drained if it was
    taking traffic, and admitted with one ENABLE once it is a backend."""
    pods = pods_map(pod("a"), pod("c", cr="False"), pod("d", dp="False"), pod("e", cr="False"))
    sl = slice_of(("a", "10.0.0.1"), ("c", "10.0.0.3"), ("d", "10.0.0.4"), ("e", "10.0.0.5"))
    D, E = server_name("10.0.0.4", 8080), server_name("10.0.0.5", 8080)
    [plain], _ = desired_pools([svc()], [sl], pods)
    assert plain.staged == {}  # an LB that does not stage: nothing changes
    [spec], _ = desired_pools([svc()], [sl], pods, limits=STAGES)
    assert set(spec.staged) == {C, D, E} and set(spec.backends) == {A}
    # E took traffic before (its readiness failed since): drained, not removed.
    observed = state(obs(A), obs(D, AdminState.DRAIN, Health.DOWN), obs(E))
    assert plan_pool(spec, observed) == [
        Action(Op.STAGE, C, "10.0.0.3", 8080, 100),
        Action(Op.DRAIN, E),
    ]
    staged = state(
        obs(A), obs(C, AdminState.DRAIN), obs(D, AdminState.DRAIN), obs(E, AdminState.DRAIN)
    )
    assert plan_pool(spec, staged) == []
    # C's pod turns ready: one ENABLE admits it.
    pods[PodKey(NS, "c")] = pod("c")
    [ready], _ = desired_pools([svc()], [sl], pods, limits=STAGES)
    assert plan_pool(ready, staged) == [Action(Op.ENABLE, C, weight=100)]
    # D's pod is deleted: its staged server goes like any drained one.
    pods[PodKey(NS, "d")] = pod("d", dp="False", terminating=True)
    [gone], _ = desired_pools([svc()], [sl], pods, limits=STAGES)
    assert [a for a in plan_pool(gone, staged) if a.server == D] == [Action(Op.REMOVE, D)]


def test_a_staged_pod_reads_not_registered_with_one_message() -> None:
    """Staged or not, a pod never in rotation reads NotRegistered with the same message: its
    condition is written once, not again when its server is staged."""
    pods = pods_map(pod("c", cr="False"))
    [spec], _ = desired_pools([svc()], [slice_of(("c", "10.0.0.3"))], pods, limits=STAGES)
    key = PodKey(NS, "c")
    before = lb_verdicts([spec], {"haproxy": {"h1": {spec.pool: state()}}})[key]
    after = lb_verdicts([spec], {"haproxy": {"h1": {spec.pool: state(obs(C, AdminState.DRAIN))}}})[
        key
    ]
    assert before == after and after.reason is LBReason.NOT_REGISTERED


def test_staging_stays_within_the_cap() -> None:
    names = ["a", "b", "c", "d"]
    pods = pods_map(pod("a"), pod("b"), pod("c", cr="False"), pod("d", cr="False"))
    sl = slice_of(*((n, f"10.0.0.{i + 1}") for i, n in enumerate(names)))
    capped = svc({"podlb.io/direct": "true", "podlb.io/max-backends": "3"})
    [spec], _ = desired_pools([capped], [sl], pods, limits=STAGES)
    assert set(spec.backends) == {A, B} and set(spec.staged) == {C}
    # The LB has D staged already: it keeps the one slot, whatever the name order says.
    D = server_name("10.0.0.4", 8080)
    [spec], _ = desired_pools(
        [capped], [sl], pods, {"shop.web.http": frozenset({D})}, limits=STAGES
    )
    assert set(spec.staged) == {D}
    full = svc({"podlb.io/direct": "true", "podlb.io/max-backends": "2"})
    [spec], _ = desired_pools([full], [sl], pods, limits=STAGES)
    assert spec.staged == {}
    # C's staged server is on its way out (no room left): C never was in rotation, so it
    # still reads NotRegistered, not Deregistered.
    observed = {spec.pool: state(obs(A), obs(B), obs(C, AdminState.DRAIN))}
    v = lb_verdicts([spec], {"haproxy": {"h1": observed}})
    assert v[PodKey(NS, "c")].reason is LBReason.NOT_REGISTERED


def test_gate_admit_checked_turns_lb_ready_true_on_a_healthy_staged_server() -> None:
    """podlb.io/gate-admit: checked: lb-ready is True once the checks pass on the staged
    server, before the pod is ready (the kubelet then makes it Ready in the sync that sees it
    ContainersReady); not while a check fails, and never
    by default. A datapath NotListening from before the app listened does not hold it: the LB
    reaching the pod is the fresher proof (it enters rotation only once it is a backend)."""
    pods = pods_map(pod("c", cr="False", dp="False"), pod("d", cr="False", dp="False"))
    sl = slice_of(("c", "10.0.0.3"), ("d", "10.0.0.4"))
    D = server_name("10.0.0.4", 8080)
    checked = svc({"podlb.io/direct": "true", "podlb.io/gate-admit": "checked"})
    [spec], findings = desired_pools([checked], [sl], pods, limits=STAGES)
    assert findings == [] and spec.early == {PodKey(NS, "c"), PodKey(NS, "d")}
    up = {spec.pool: state(obs(C, AdminState.DRAIN), obs(D, AdminState.DRAIN, Health.DOWN))}
    v = lb_verdicts([spec], {"haproxy": {"h1": up, "h2": up}})
    assert v[PodKey(NS, "c")].ready and v[PodKey(NS, "c")].reason is LBReason.HEALTHY
    assert v[PodKey(NS, "d")].reason is LBReason.NOT_REGISTERED
    half = {spec.pool: state(obs(C, AdminState.DRAIN, Health.DOWN))}
    v = lb_verdicts([spec], {"haproxy": {"h1": up, "h2": half}})
    assert v[PodKey(NS, "c")].reason is LBReason.NOT_REGISTERED
    # Still only staged: its server is put in rotation once the pod is ready, not before.
    assert plan_pool(spec, up[spec.pool]) == []
    [default], _ = desired_pools([svc()], [sl], pods, limits=STAGES)
    assert default.early == frozenset()
    # A ready pod its datapath holds out is not admitted early: then the datapath decides.
    held = pods_map(pod("c", dp="False"))
    [spec], _ = desired_pools([checked], [slice_of(("c", "10.0.0.3"))], held, limits=STAGES)
    assert set(spec.staged) == {C} and spec.early == frozenset()
    bad = svc({"podlb.io/direct": "true", "podlb.io/gate-admit": "soon"})
    [_], findings = desired_pools([bad], [sl], pods, limits=STAGES)
    assert [f.problem for f in findings] == [Problem.BAD_ANNOTATION]


def test_desired_pools_are_remembered_per_service_until_an_input_changes() -> None:
    """A leader round at scale recomputes only the Services whose objects changed; what it
    remembers must be exactly what a fresh computation gives, whichever input changed."""
    from agent.leader.desired import DesiredPools

    names = [f"p{i}" for i in range(4)]
    pods = pods_map(*(pod(n, ips=(f"10.0.0.{i + 1}",)) for i, n in enumerate(names)))
    web = svc({"podlb.io/direct": "true", "podlb.io/max-backends": "3"})
    other = svc(name="api", selector=(("app", "api"),))
    sl = slice_of(*((n, f"10.0.0.{i + 1}") for i, n in enumerate(names)))
    limits = {"haproxy": Limits(stages=True)}
    memo = DesiredPools()

    def check(services: list[Service], registered: dict[str, frozenset[str]]) -> int:
        before = memo.computed
        got = memo.compute(services, [sl], pods, registered, limits)
        assert got == desired_pools(services, [sl], pods, registered, limits=limits)
        return memo.computed - before

    assert check([web, other], {}) == 2
    assert check([web, other], {}) == 0  # nothing changed: nothing computed
    pods[PodKey(NS, "p1")] = pod("p1", cr="False", ips=("10.0.0.2",))  # a pod's update
    assert check([web, other], {}) == 1
    on_lb = {"shop.web.http": frozenset({server_name("10.0.0.4", 8080)})}  # the LB changed
    assert check([web, other], on_lb) == 1
    assert check([web, other], on_lb) == 0
    stopped = Condition("DisruptionTarget", "True", "TerminationByKubelet")
    pods[PodKey(NS, "p9")] = pod("p9", ips=("10.0.0.9",), conditions=(stopped,))
    assert check([web, other], on_lb) == 2  # a pod its kubelet stops: both look for it
    web2 = replace(web, annotations=(("podlb.io/direct", "true"),))  # the Service updated
    assert check([web2, other], on_lb) == 1
    assert check([other], on_lb) == 0 and check([web2, other], on_lb) == 1  # gone, then back


def test_the_verdict_writer_combines_a_pods_pools_as_lb_verdicts_does() -> None:
    """VerdictWriter takes the verdicts of a pod behind one pool as they are and combines
    those of a pod behind several (agent.leader.plan.combine_verdicts), as lb_verdicts does."""
    from agent.clock import FakeClock
    from agent.leader.verdicts import Admitted, VerdictWriter
    from agent.model import LB_READY
    from agent.node.reporter import ConditionReporter
    from tests.fakes import FakeStatusSink

    pods = pods_map(pod("a"), pod("b"), pod("c"))
    [one], _ = desired_pools([svc()], [slice_of(("a", "10.0.0.1"), ("b", "10.0.0.2"))], pods)
    [alone], _ = desired_pools([svc()], [slice_of(("c", "10.0.0.3"))], pods)
    two, three = replace(one, pool="shop.two.http"), replace(alone, pool="shop.three.http")
    observed = {
        "haproxy": {
            "h1": {
                one.pool: state(obs(A), obs(B)),
                two.pool: state(obs(A, health=Health.DOWN), obs(B)),
                three.pool: state(obs(C)),
            }
        }
    }
    sink = FakeStatusSink()
    reporter = ConditionReporter(LB_READY, sink, pods.get, FakeClock())
    writer = VerdictWriter(reporter, sink, FakeClock())
    for pools in ([one, three, two], [two, three, one], [two, three, one]):  # then remembered
        got = writer._verdicts(pools, observed, Admitted(pods, reporter))
        assert got == lb_verdicts(pools, observed)
        assert [got[PodKey(NS, n)].reason for n in "abc"] == [
            LBReason.UNHEALTHY, LBReason.HEALTHY, LBReason.HEALTHY,
        ]  # fmt: skip


def _writer(pods: dict[PodKey, Pod]) -> Any:
    from agent.clock import FakeClock
    from agent.leader.verdicts import VerdictWriter
    from agent.model import LB_READY
    from agent.node.reporter import ConditionReporter
    from tests.fakes import FakeStatusSink

    sink = FakeStatusSink()
    reporter = ConditionReporter(LB_READY, sink, pods.get, FakeClock())
    return VerdictWriter(reporter, sink, FakeClock(), registering_hold_s=0.0)


def test_the_read_back_leaves_a_pod_held_behind_a_provider_not_observed() -> None:
    """A pod behind an HAProxy pool and a pool of a provider that could not be observed keeps
    its condition (fail static); the read-back of the HAProxy pool leaves it too (from a
    review: write_again handed over the HAProxy pool's verdict alone)."""
    pods = pods_map(pod("a"))
    [spec], _ = desired_pools([svc()], [slice_of(("a", "10.0.0.1"))], pods)
    other = replace(spec, provider="tencent", pool="lb-1")
    writer = _writer(pods)
    staged = {"haproxy": {"h1": {spec.pool: state(obs(A, AdminState.DRAIN))}}}
    writer.write([spec, other], staged, pods, [])
    assert writer.reporter.desired(PodKey(NS, "a")) is None  # held: not observed everywhere
    read_back = {"haproxy": {"h1": {spec.pool: state(obs(A))}}}
    assert not writer.write_again(  # declined: a whole pass (which holds it) instead
        [("haproxy", spec.pool)], {("haproxy", spec.pool): spec}, read_back, pods
    )
    assert writer.reporter.desired(PodKey(NS, "a")) is None


def test_a_pod_admitted_on_read_back_starts_its_next_gate_wait_afresh() -> None:
    """The read-back forgets the gate clock of a pod it found in rotation, as a whole pass
    does (from a review: a pod waiting again later timed out early on its old clock)."""
    pods = pods_map(pod("a"))
    [spec], _ = desired_pools([svc()], [slice_of(("a", "10.0.0.1"))], pods)
    writer = _writer(pods)
    staged = {"haproxy": {"h1": {spec.pool: state(obs(A, AdminState.DRAIN))}}}
    writer.write([spec], staged, pods, [])
    assert PodKey(NS, "a") in writer._gate_since  # waiting: Registering
    read_back = {"haproxy": {"h1": {spec.pool: state(obs(A))}}}
    writer.write_again([("haproxy", spec.pool)], {("haproxy", spec.pool): spec}, read_back, pods)
    assert writer.reporter.desired(PodKey(NS, "a")).reason == "Healthy"
    assert PodKey(NS, "a") not in writer._gate_since
