"""Which LB provider, which mode and which pool each port of a direct Service gets (pure).

* **HAProxy** (the default): one backend per port, named ``<namespace>.<service>.<port>`` or
  by ``podlb.io/lb-pool``; podlb manages it.
* **Tencent CLB** for a TKE direct-access Service, **Baidu BLB** for a CCE ENI Service: the pool
  is ``<lb-id>/<listener>``. The LB id is the one the cloud's controller writes on the Service
  (or ``podlb.io/lb-id``); the listener defaults to ``<protocol>:<service port>`` and
  ``podlb.io/lb-listener`` names another (a listener, rule or IP group id, per provider). The
  cloud's controller registers the pods there, so podlb only observes, unless the Service says
  ``podlb.io/lb-mode: manage``.
* ``podlb.io/lb-provider`` picks a provider explicitly (then podlb manages the pool unless the
  Service says ``podlb.io/lb-mode: observe``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.lb.base import Mode
from agent.model import Service, ServicePort

LB_PROVIDER = "podlb.io/lb-provider"
LB_MODE = "podlb.io/lb-mode"
LB_ID = "podlb.io/lb-id"
LB_LISTENER = "podlb.io/lb-listener"
LB_POOL = "podlb.io/lb-pool"

HAPROXY = "haproxy"
TENCENT_CLB = "tencent-clb"
BAIDU_BLB = "baidu-blb"
PROVIDERS = (HAPROXY, TENCENT_CLB, BAIDU_BLB)


class Problem(enum.StrEnum):
    NO_SELECTOR = "NoSelector"
    BAD_ANNOTATION = "BadAnnotation"
    PORT_UNRESOLVED = "PortUnresolved"
    CAP_REACHED = "MaxBackendsReached"
    POOL_CONFLICT = "PoolClaimedTwice"  # two Services name the same LB pool
    LB_NOT_KNOWN = "LBNotKnown"  # a cloud Service whose LB id is not written yet
    POOL_NOT_FOUND = "PoolNotFound"  # filled in by the reconcile loop
    NO_PROVIDER = "LBProviderNotConfigured"  # filled in by the reconcile loop


@dataclass(frozen=True, slots=True)
class Cloud:
    provider: str
    direct: tuple[str, str]  # the annotation (and value) of the cloud's direct pod mode
    lb_ids: tuple[str, ...]  # where its controller (or the user) names the LB, in order


CLOUDS = (
    Cloud(
        TENCENT_CLB,
        ("service.cloud.tencent.com/direct-access", "true"),
        ("service.kubernetes.io/loadbalance-id", "service.kubernetes.io/tke-existed-lbid"),
    ),
    Cloud(
        BAIDU_BLB,
        ("service.beta.kubernetes.io/cce-load-balancer-backend-type", "eni"),
        ("service.beta.kubernetes.io/cce-load-balancer-id",),
    ),
)
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Route:
    provider: str
    mode: Mode
    pools: Mapping[str, str] = field(default_factory=dict)  # port label -> pool
    problems: tuple[tuple[Problem, str], ...] = ()


def port_label(sp: ServicePort) -> str:
    return sp.name or str(sp.port)


def _cloud_of(svc: Service) -> Cloud | None:
    for cloud in CLOUDS:
        key, value = cloud.direct
        got = svc.annotation(key)
        if svc.type == "LoadBalancer" and got is not None and got.strip().lower() == value:
            return cloud
    return None


def route(svc: Service, default_provider: str = HAPROXY) -> Route:
    """The provider, mode and pools of a direct Service (its problems as data).

    A Service whose provider annotation is invalid, or whose cloud LB is not known yet, gets
    no pools: nothing is registered anywhere until that is fixed.
    """
    problems: list[tuple[Problem, str]] = []
    cloud = _cloud_of(svc)
    raw_provider = svc.annotation(LB_PROVIDER)
    if raw_provider is not None:
        provider = raw_provider.strip().lower()
        if provider not in PROVIDERS:
            msg = f"{LB_PROVIDER}: {raw_provider!r} is not one of {', '.join(PROVIDERS)}"
            return Route(default_provider, Mode.MANAGE, {}, ((Problem.BAD_ANNOTATION, msg),))
    else:
        provider = cloud.provider if cloud is not None else default_provider
    # The cloud's own controller registers the pods of its direct-mode Services: observe them.
    mode = Mode.OBSERVE if cloud is not None and cloud.provider == provider else Mode.MANAGE
    raw_mode = svc.annotation(LB_MODE)
    if raw_mode is not None:
        try:
            mode = Mode(raw_mode.strip().lower())
        except ValueError:  # on doubt, read only: never write a pool meant to be observed
            mode = Mode.OBSERVE
            msg = f'{LB_MODE}: {raw_mode!r} is not "manage" or "observe" (observing meanwhile)'
            problems.append((Problem.BAD_ANNOTATION, msg))
    tcp = [sp for sp in svc.ports if sp.protocol == "TCP"]
    if provider == HAPROXY:
        pools = {port_label(sp): haproxy_pool(svc, sp) for sp in tcp}
        return Route(provider, mode, pools, tuple(problems))
    lb_id = _lb_id(svc, provider)
    if lb_id is None:
        names = ", ".join(_lb_id_keys(provider))
        problems.append((Problem.LB_NOT_KNOWN, f"no {provider} LB id yet (one of {names})"))
        return Route(provider, mode, {}, tuple(problems))
    listeners, bad = _listeners(svc, tcp)
    if bad:  # never guess a cloud listener
        return Route(provider, mode, {}, (*problems, *bad))
    pools = {port_label(sp): f"{lb_id}/{listeners[port_label(sp)]}" for sp in tcp}
    return Route(provider, mode, pools, tuple(problems))


def haproxy_pool(svc: Service, sp: ServicePort) -> str:
    base = svc.annotation(LB_POOL)
    label = port_label(sp)
    if base:
        return base if len(svc.ports) == 1 else f"{base}-{label}"
    return f"{svc.namespace}.{svc.name}.{label}"


def _lb_id_keys(provider: str) -> list[str]:
    """The annotations that name a provider's LB, in the order they count."""
    return [LB_ID, *next((c.lb_ids for c in CLOUDS if c.provider == provider), ())]


def _lb_id(svc: Service, provider: str) -> str | None:
    for key in _lb_id_keys(provider):
        value = (svc.annotation(key) or "").strip()
        if value:
            return value
    return None


def _listeners(
    svc: Service, ports: list[ServicePort]
) -> tuple[dict[str, str], list[tuple[Problem, str]]]:
    """Port label -> listener reference: ``<protocol>:<port>`` unless ``podlb.io/lb-listener``
    names one (``lbl-1`` for a one-port Service, ``http=lbl-1,admin=lbl-2/loc-3`` for more).
    Ports the annotation leaves out keep the default."""
    out = {port_label(sp): f"{sp.protocol}:{sp.port}" for sp in ports}
    raw = svc.annotation(LB_LISTENER)
    if raw is None or not raw.strip():
        return out, []
    given: dict[str, str] = {}
    bad = f"{LB_LISTENER}: {raw!r} is not a listener reference or a list of port=listener"
    items = [i.strip() for i in raw.split(",") if i.strip()]
    if len(items) == 1 and "=" not in items[0]:
        if len(ports) != 1:
            msg = f"{LB_LISTENER}: one listener for {len(ports)} ports: name each, port=listener"
            return out, [(Problem.BAD_ANNOTATION, msg)]
        given[port_label(ports[0])] = items[0]
    else:
        for item in items:
            label, sep, ref = (s.strip() for s in item.partition("="))
            if not sep or label not in out:
                return out, [(Problem.BAD_ANNOTATION, f"{bad} ({label!r} is no TCP port)")]
            given[label] = ref
    if any(not _REF.match(ref) for ref in given.values()):
        return out, [(Problem.BAD_ANNOTATION, bad)]
    return {**out, **given}, []
