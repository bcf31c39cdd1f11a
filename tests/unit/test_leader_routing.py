"""Which provider, mode and pools a direct Service gets (agent/leader/routing.py)."""

from __future__ import annotations

import pytest

from agent.lb.base import Mode
from agent.leader.routing import Problem, Route, route
from agent.model import Service, ServicePort

TKE = {"service.cloud.tencent.com/direct-access": "true"}
CCE = {"service.beta.kubernetes.io/cce-load-balancer-backend-type": "eni"}
TKE_ID = {**TKE, "service.kubernetes.io/loadbalance-id": "lb-tke1"}
CCE_ID = {**CCE, "service.beta.kubernetes.io/cce-load-balancer-id": "lb-cce1"}
ONE = (ServicePort(80, 8080, name="http"),)
TWO = (ServicePort(80, 8080, name="http"), ServicePort(9000, 9000, name="admin"))


def svc(annotations: dict[str, str], ports: tuple[ServicePort, ...] = ONE) -> Service:
    return Service(
        "shop", "web", "u1", "LoadBalancer", (("app", "web"),), ports, tuple(annotations.items())
    )


def problems(r: Route) -> list[Problem]:
    return [p for p, _ in r.problems]


@pytest.mark.parametrize(
    ("annotations", "ports", "provider", "mode", "pools", "found"),
    [
        ({"podlb.io/direct": "true"}, ONE, "haproxy", Mode.MANAGE, {"http": "shop.web.http"}, []),
        (
            {"podlb.io/direct": "true", "podlb.io/lb-pool": "be"}, TWO, "haproxy", Mode.MANAGE,
            {"http": "be-http", "admin": "be-admin"}, [],
        ),
        (TKE_ID, ONE, "tencent-clb", Mode.OBSERVE, {"http": "lb-tke1/TCP:80"}, []),
        (
            {**TKE, "service.kubernetes.io/tke-existed-lbid": "lb-old"}, ONE, "tencent-clb",
            Mode.OBSERVE, {"http": "lb-old/TCP:80"}, [],
        ),
        ({**TKE_ID, "podlb.io/lb-id": "lb-mine"}, ONE, "tencent-clb", Mode.OBSERVE,
         {"http": "lb-mine/TCP:80"}, []),
        (TKE, ONE, "tencent-clb", Mode.OBSERVE, {}, [Problem.LB_NOT_KNOWN]),
        (CCE_ID, TWO, "baidu-blb", Mode.OBSERVE,
         {"http": "lb-cce1/TCP:80", "admin": "lb-cce1/TCP:9000"}, []),
        ({**TKE_ID, "podlb.io/lb-mode": "manage"}, ONE, "tencent-clb", Mode.MANAGE,
         {"http": "lb-tke1/TCP:80"}, []),
        # podlb owns the backends where no cloud controller does
        ({"podlb.io/direct": "true", "podlb.io/lb-provider": "tencent-clb",
          "podlb.io/lb-id": "lb-9"}, ONE, "tencent-clb", Mode.MANAGE, {"http": "lb-9/TCP:80"}, []),
        ({"podlb.io/direct": "true", "podlb.io/lb-provider": "f5"}, ONE, "haproxy", Mode.MANAGE,
         {}, [Problem.BAD_ANNOTATION]),
        ({**TKE_ID, "podlb.io/lb-mode": "own"}, ONE, "tencent-clb", Mode.OBSERVE,
         {"http": "lb-tke1/TCP:80"}, [Problem.BAD_ANNOTATION]),
        ({**TKE_ID, "podlb.io/lb-listener": "lbl-abc"}, ONE, "tencent-clb", Mode.OBSERVE,
         {"http": "lb-tke1/lbl-abc"}, []),
        ({**TKE_ID, "podlb.io/lb-listener": "admin=lbl-2/loc-3"}, TWO, "tencent-clb",
         Mode.OBSERVE, {"http": "lb-tke1/TCP:80", "admin": "lb-tke1/lbl-2/loc-3"}, []),
        ({**TKE_ID, "podlb.io/lb-listener": "lbl-abc"}, TWO, "tencent-clb", Mode.OBSERVE, {},
         [Problem.BAD_ANNOTATION]),
        ({**TKE_ID, "podlb.io/lb-listener": "web=lbl-1"}, TWO, "tencent-clb", Mode.OBSERVE, {},
         [Problem.BAD_ANNOTATION]),
        ({**TKE_ID, "podlb.io/lb-listener": "http=lbl 1"}, TWO, "tencent-clb", Mode.OBSERVE, {},
         [Problem.BAD_ANNOTATION]),
    ],
)  # fmt: skip
def test_route(
    annotations: dict[str, str],
    ports: tuple[ServicePort, ...],
    provider: str,
    mode: Mode,
    pools: dict[str, str],
    found: list[Problem],
) -> None:
    r = route(svc(annotations, ports))
    assert (r.provider, r.mode, dict(r.pools), problems(r)) == (provider, mode, pools, found)


def test_cloud_annotations_count_only_on_load_balancer_services_and_default_provider() -> None:
    cluster_ip = Service("shop", "web", "u1", "ClusterIP", None, ONE, tuple(TKE_ID.items()))
    assert route(cluster_ip).provider == "haproxy"
    direct = svc({"podlb.io/direct": "true", "podlb.io/lb-id": "lb-7"})
    r = route(direct, default_provider="baidu-blb")
    assert (r.provider, r.mode, dict(r.pools)) == (
        "baidu-blb",
        Mode.MANAGE,
        {"http": "lb-7/TCP:80"},
    )
