from __future__ import annotations

from dataclasses import replace

import pytest

from agent.model import (
    ContainerPort,
    Interface,
    LinkKind,
    ListeningSocket,
    NetnsInfo,
    Pod,
    PodHint,
    Service,
    ServicePort,
    Snapshot,
    TcpState,
)
from agent.node.readiness import (
    Reason,
    direct_by_namespace,
    evaluate,
    find_namespace,
    is_direct,
    opted_in,
    serving_ports,
)

IP = "10.244.1.7"


def pod(**kw: object) -> Pod:
    base: dict[str, object] = dict(
        namespace="shop",
        name="web-1",
        uid="u1",
        node_name="n1",
        ips=(IP,),
        phase="Running",
        labels=(("app", "web"),),
        ports=(ContainerPort(8080, "http"), ContainerPort(9090, "metrics")),
    )
    base.update(kw)
    return Pod(**base)  # type: ignore[arg-type]


def iface(
    name: str = "eth0", state: str = "up", addrs: tuple[str, ...] = (f"{IP}/32",)
) -> Interface:
    return Interface(name, 2, LinkKind.VETH, None, None, 1500, state, addrs)


def netns(
    *ifaces: Interface, listening: tuple[int, ...] = (8080,), uid: str | None = None
) -> NetnsInfo:
    lo = Interface("lo", 1, LinkKind.LOOPBACK, None, None, 65536, "unknown", ("127.0.0.1/8",))
    return NetnsInfo(
        inode=1,
        path="/run/netns/x",
        paths=("/run/netns/x",),
        pids=(),
        pod=PodHint(uid, (IP,)),
        interfaces=(lo, *ifaces),
        tcp=TcpState(tuple(ListeningSocket("0.0.0.0", p) for p in listening)),
    )


def svc(
    annotations: dict[str, str], target: int | str = "http", stype: str = "LoadBalancer"
) -> Service:
    return Service(
        namespace="shop",
        name="web",
        uid="s1",
        type=stype,
        selector=(("app", "web"),),
        ports=(ServicePort(80, target),),
        annotations=tuple(annotations.items()),
    )


DIRECT = {"podlb.io/direct": "true"}


@pytest.mark.parametrize(
    ("the_pod", "ns", "ports", "reason"),
    [
        (pod(), netns(iface()), frozenset({8080}), Reason.READY),
        (pod(ips=()), netns(iface()), frozenset({8080}), Reason.NO_POD_IP),
        (pod(), None, frozenset({8080}), Reason.NAMESPACE_NOT_FOUND),
        (pod(), netns(), frozenset({8080}), Reason.NO_INTERFACE),
        (pod(), netns(iface(addrs=("10.9.9.9/32",))), frozenset({8080}), Reason.NO_ADDRESS),
        (pod(), netns(iface(state="down")), frozenset({8080}), Reason.LINK_DOWN),
        (pod(), netns(iface(), listening=(9090,)), frozenset({8080}), Reason.NOT_LISTENING),
        (pod(), netns(iface(), listening=()), frozenset(), Reason.READY),
    ],
)
def test_evaluate(
    the_pod: Pod, ns: NetnsInfo | None, ports: frozenset[int], reason: Reason
) -> None:
    verdict = evaluate(the_pod, ns, ports)
    assert verdict.reason is reason
    assert verdict.ready is (reason is Reason.READY)
    assert verdict.status == ("True" if verdict.ready else "False")
    assert verdict.message


@pytest.mark.parametrize(
    ("annotations", "direct"),
    [
        ({"podlb.io/direct": "true"}, True),
        ({"podlb.io/direct": "True "}, True),
        ({"service.cloud.tencent.com/direct-access": "true"}, True),
        ({"service.beta.kubernetes.io/cce-load-balancer-backend-type": "eni"}, True),
        ({"service.beta.kubernetes.io/cce-load-balancer-backend-type": "nodeport"}, False),
        ({"podlb.io/direct": "yes-please"}, False),
        ({}, False),
    ],
)
def test_is_direct(annotations: dict[str, str], direct: bool) -> None:
    assert is_direct(svc(annotations)) is direct


def test_opted_in_by_gate_or_direct_service_only() -> None:
    assert opted_in(pod(readiness_gates=("podlb.io/lb-ready",)), [])
    assert opted_in(pod(), [svc(DIRECT)])
    assert not opted_in(pod(), [svc({})])
    assert not opted_in(pod(labels=(("app", "other"),)), [svc(DIRECT)])
    assert not opted_in(pod(host_network=True, readiness_gates=("podlb.io/lb-ready",)), [])


def test_direct_services_by_namespace() -> None:
    """What a node agent looks through for each of its pods: the direct Services of the pod's
    namespace (a Service selects no pod of another)."""
    other_ns = replace(svc(DIRECT), namespace="blog", name="web2")
    got = direct_by_namespace([svc(DIRECT), svc({}), other_ns])
    assert got == {"shop": [svc(DIRECT)], "blog": [other_ns]}
    assert not other_ns.selects(pod())  # same labels, another namespace


def test_serving_ports_by_name_number_and_fallback() -> None:
    assert serving_ports(pod(), [svc(DIRECT, "http")]) == {8080}
    assert serving_ports(pod(), [svc(DIRECT, 7000)]) == {7000}
    assert serving_ports(pod(), [svc(DIRECT, "nope")]) == set()
    assert serving_ports(pod(), []) == {8080, 9090}


def test_find_namespace_by_uid_then_ip() -> None:
    a = netns(iface(), uid="u1")
    snap = Snapshot((a,), 0, 0.0, 0.0, {})
    assert find_namespace(pod(), snap) is a
    assert find_namespace(pod(uid="other"), snap) is a  # by IP
    assert find_namespace(pod(uid="other", ips=("10.0.0.1",)), snap) is None
