"""Pure parts of the Tencent CLB provider: pool names, mapping, chunking, error classes."""

from __future__ import annotations

from typing import Any

import pytest

from agent.lb.base import Action, AdminState, Health, Op, PoolNotFound
from agent.lb.cloud import chunks
from agent.lb.tencent_clb import TencentCLBProvider
from agent.lb.tencent_clb.errors import ErrorClass, auth_message, classify_error, outcome_label
from agent.lb.tencent_clb.observe import (
    build_pool_state,
    health_index,
    health_of,
    pool_backends,
    target_name,
)
from agent.lb.tencent_clb.pools import PoolRef, Target, parse_pool, resolve_pool
from agent.lb.tencent_clb.provider import _split_endpoint
from agent.lb.tencent_clb.writes import (
    MAX_BATCH_TARGETS,
    Call,
    Member,
    idempotent_success,
    member_of,
    plan_calls,
    request_params,
    weight_of,
)


# -- pool names ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pool", "ref"),
    [
        ("lb-abc123/lbl-xyz9", PoolRef("lb-abc123", listener_id="lbl-xyz9")),
        ("lb-abc123/TCP:80", PoolRef("lb-abc123", protocol="TCP", port=80)),
        ("lb-a/TCP_SSL:443", PoolRef("lb-a", protocol="TCP_SSL", port=443)),
        (
            "lb-a/HTTP:80/loc-r1",
            PoolRef("lb-a", protocol="HTTP", port=80, location_id="loc-r1"),
        ),
        ("lb-a/lbl-b/loc-c", PoolRef("lb-a", listener_id="lbl-b", location_id="loc-c")),
    ],
)
def test_parse_pool(pool: str, ref: PoolRef) -> None:
    assert parse_pool(pool) == ref


@pytest.mark.parametrize(
    ("pool", "says"),
    [
        ("lb-abc", "malformed"),
        ("", "malformed"),
        ("lb-a/TCP:80/loc-1/x", "malformed"),
        ("LB-A/TCP:80", "malformed"),
        ("x-a/TCP:80", "malformed"),
        ("lb-a/tcp:80", "neither a listener ID"),
        ("lb-a/SCTP:80", "neither a listener ID"),
        ("lb-a/TCP:0", "neither a listener ID"),
        ("lb-a/TCP:65536", "neither a listener ID"),
        ("lb-a/TCP", "neither a listener ID"),
        ("lb-a/lbl-b/rule1", "not a location ID"),
        ("lb-a/lbl-b/", "not a location ID"),
    ],
)
def test_parse_pool_refuses(pool: str, says: str) -> None:
    with pytest.raises(PoolNotFound, match=says):
        parse_pool(pool)


LISTENERS: list[dict[str, Any]] = [
    {"ListenerId": "lbl-t80", "Protocol": "TCP", "Port": 80, "HealthCheck": {"HealthSwitch": 1}},
    {"ListenerId": "lbl-u53", "Protocol": "UDP", "Port": 53, "HealthCheck": {"HealthSwitch": 0}},
    {
        "ListenerId": "lbl-h80",
        "Protocol": "HTTP",
        "Port": 8080,
        "Rules": [
            {"LocationId": "loc-a", "HealthCheck": {"HealthSwitch": 1}},
            {"LocationId": "loc-b", "HealthCheck": {"HealthSwitch": 0}},
        ],
    },
]


@pytest.mark.parametrize(
    ("pool", "target"),
    [
        ("lb-x/TCP:80", Target("lb-x", "lbl-t80", "TCP", None, True)),
        ("lb-x/lbl-t80", Target("lb-x", "lbl-t80", "TCP", None, True)),
        ("lb-x/UDP:53", Target("lb-x", "lbl-u53", "UDP", None, False)),
        ("lb-x/HTTP:8080/loc-a", Target("lb-x", "lbl-h80", "HTTP", "loc-a", True)),
        ("lb-x/lbl-h80/loc-b", Target("lb-x", "lbl-h80", "HTTP", "loc-b", False)),
    ],
)
def test_resolve_pool(pool: str, target: Target) -> None:
    assert resolve_pool(pool, parse_pool(pool), LISTENERS) == target


@pytest.mark.parametrize(
    ("pool", "says"),
    [
        ("lb-x/TCP:81", "no such listener"),
        ("lb-x/lbl-nope", "no such listener"),
        ("lb-x/UDP:80", "no such listener"),
        ("lb-x/HTTP:8080", "needs a location ID"),
        ("lb-x/lbl-h80/loc-zz", "has no rule loc-zz"),
        ("lb-x/TCP:80/loc-a", "has no forwarding rules"),
    ],
)
def test_resolve_pool_refuses(pool: str, says: str) -> None:
    with pytest.raises(PoolNotFound, match=says):
        resolve_pool(pool, parse_pool(pool), LISTENERS)


# -- observation -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("backend", "named"),
    [
        (
            {"Type": "ENI", "Port": 8080, "PrivateIpAddresses": ["10.0.0.4"]},
            ("10.0.0.4_8080", "10.0.0.4"),
        ),
        (
            {"Type": "ENI", "Port": 80, "PrivateIpAddresses": ["FD00:0::4"]},
            ("fd00--4_80", "fd00::4"),
        ),
        (
            {"Type": "CCN", "Port": 80, "PrivateIpAddresses": ["172.16.0.9"]},
            ("172.16.0.9_80", "172.16.0.9"),
        ),
        (
            {"Type": "CVM", "InstanceId": "ins-1", "Port": 80, "PrivateIpAddresses": ["10.1.1.1"]},
            ("ins-1_80", "10.1.1.1"),
        ),
        ({"Type": "ENI", "Port": 80, "PrivateIpAddresses": []}, None),
    ],
)
def test_target_name(backend: dict[str, Any], named: tuple[str, str] | None) -> None:
    assert target_name(backend) == named


@pytest.mark.parametrize(
    ("entry", "check", "health"),
    [
        ({"HealthStatusDetail": "Alive", "HealthStatus": True}, True, Health.UP),
        ({"HealthStatusDetail": "Dead", "HealthStatus": False}, True, Health.DOWN),
        ({"HealthStatusDetail": "Unknown", "HealthStatus": False}, True, Health.CHECKING),
        ({"HealthStatusDetail": "Close", "HealthStatus": False}, True, Health.UP),
        ({"HealthStatusDetial": "Alive"}, True, Health.UP),  # the old misspelt field
        ({"HealthStatus": True}, True, Health.UP),
        ({"HealthStatus": False}, True, Health.DOWN),
        ({}, True, Health.UNKNOWN),
        (None, True, Health.CHECKING),  # just registered: no verdict yet
        (None, False, Health.UP),  # checks off: CLB forwards to it
        ({"HealthStatusDetail": "Dead"}, False, Health.UP),
    ],
)
def test_health_of(entry: dict[str, Any] | None, check: bool, health: Health) -> None:
    assert health_of(entry, check) is health


def _backend(ip: str, port: int, weight: int) -> dict[str, Any]:
    return {"Type": "ENI", "Port": port, "Weight": weight, "PrivateIpAddresses": [ip]}


def test_build_pool_state_joins_targets_and_health() -> None:
    described = [
        {
            "ListenerId": "lbl-t80",
            "Targets": [_backend("10.0.0.1", 80, 10), _backend("10.0.0.2", 80, 0)],
        },
        {
            "ListenerId": "lbl-h80",
            "Rules": [{"LocationId": "loc-a", "Targets": [_backend("10.0.0.3", 80, 5)]}],
        },
    ]
    health = health_index(
        [
            {
                "Listeners": [
                    {
                        "ListenerId": "lbl-t80",
                        "Rules": [
                            {
                                "LocationId": "loc-default",
                                "Targets": [
                                    {"IP": "10.0.0.1", "Port": 80, "HealthStatusDetail": "Alive"},
                                    {"IP": "10.0.0.2", "Port": 80, "HealthStatusDetail": "Dead"},
                                ],
                            }
                        ],
                    },
                    {
                        "ListenerId": "lbl-h80",
                        "Rules": [
                            {
                                "LocationId": "loc-a",
                                "Targets": [
                                    {"IP": "10.0.0.3", "Port": 80, "HealthStatusDetail": "Alive"}
                                ],
                            }
                        ],
                    },
                ]
            }
        ]
    )
    l4 = Target("lb-x", "lbl-t80", "TCP", None, True)
    backends = pool_backends(l4, described)
    assert backends is not None
    state = build_pool_state("lb-x/TCP:80", l4, backends, health)
    assert {n: (s.weight, s.admin, s.health, s.sessions) for n, s in state.servers.items()} == {
        "10.0.0.1_80": (10, AdminState.READY, Health.UP, None),
        "10.0.0.2_80": (0, AdminState.DRAIN, Health.DOWN, None),
    }
    l7 = Target("lb-x", "lbl-h80", "HTTP", "loc-a", True)
    backends = pool_backends(l7, described)
    assert backends is not None
    state = build_pool_state("p", l7, backends, health)
    assert state.servers["10.0.0.3_80"].health is Health.UP
    assert pool_backends(Target("lb-x", "lbl-h80", "HTTP", "loc-zz", True), described) is None
    assert pool_backends(Target("lb-x", "lbl-gone", "TCP", None, True), described) is None


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "cls", "label"),
    [
        ("RequestLimitExceeded", ErrorClass.THROTTLED, "throttled"),
        ("RequestLimitExceeded.UinLimitExceeded", ErrorClass.THROTTLED, "throttled"),
        ("FailedOperation.ResourceInOperating", ErrorClass.BUSY, "throttled"),
        ("AuthFailure.SignatureFailure", ErrorClass.AUTH, "auth"),
        ("AuthFailure.SecretIdNotFound", ErrorClass.AUTH, "auth"),
        ("AuthFailure.UnauthorizedOperation", ErrorClass.AUTH, "auth"),
        ("UnauthorizedOperation", ErrorClass.AUTH, "auth"),
        ("LimitExceeded", ErrorClass.QUOTA, "quota"),
        ("LimitExceeded.ListenerTargets", ErrorClass.QUOTA, "quota"),
        ("InvalidParameter.LBIdNotFound", ErrorClass.NOT_FOUND, "rejected"),
        ("InvalidParameter.ListenerIdNotFound", ErrorClass.NOT_FOUND, "rejected"),
        ("InvalidParameter.LocationNotFound", ErrorClass.NOT_FOUND, "rejected"),
        ("ResourceNotFound", ErrorClass.NOT_FOUND, "rejected"),
        ("ClientNetworkError", ErrorClass.NETWORK, "error"),
        ("ServerNetworkError", ErrorClass.NETWORK, "error"),
        ("InternalError", ErrorClass.NETWORK, "error"),
        ("InternalError.UnknownError", ErrorClass.NETWORK, "error"),
        ("InvalidParameter", ErrorClass.REJECTED, "rejected"),
        ("InvalidParameter.ClientTokenLimitExceeded", ErrorClass.REJECTED, "rejected"),
        ("MissingParameter", ErrorClass.REJECTED, "rejected"),
        ("FailedOperation", ErrorClass.REJECTED, "rejected"),
        ("FailedOperation.InvalidLBStatus", ErrorClass.REJECTED, "rejected"),
    ],
)
def test_classify_error(code: str, cls: ErrorClass, label: str) -> None:
    assert classify_error(code) is cls
    assert outcome_label(cls) == label


def test_outcome_of_success() -> None:
    assert outcome_label(None) == "ok"


def test_auth_message_names_the_fix() -> None:
    msg = auth_message("BatchRegisterTargets", "UnauthorizedOperation", "no permission")
    assert "CAM policy lacks clb:BatchRegisterTargets" in msg
    msg = auth_message("DescribeTargets", "AuthFailure.SignatureFailure", "bad signature")
    assert "PODLB_TENCENT_SECRET_KEY" in msg and "AuthFailure.SignatureFailure" in msg


# -- writes ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("action", "member"),
    [
        (Action(Op.ADD, "x", "10.0.0.1", 8080, 5), Member(8080, ip="10.0.0.1")),
        (Action(Op.REMOVE, "10.0.0.1_8080"), Member(8080, ip="10.0.0.1")),
        (Action(Op.DRAIN, "fd00--4_80"), Member(80, ip="fd00::4")),
        (Action(Op.ADD, "x", "FD00:0:0::4", 80), Member(80, ip="fd00::4")),
        (Action(Op.REMOVE, "ins-abc_80"), Member(80, instance_id="ins-abc")),
    ],
)
def test_member_of(action: Action, member: Member) -> None:
    assert member_of(action) == member


@pytest.mark.parametrize(
    "action",
    [
        Action(Op.REMOVE, "web-0"),
        Action(Op.REMOVE, "nothost_80"),
        Action(Op.REMOVE, "10.0.0.1_0"),
        Action(Op.ADD, "x", "10.0.0.1", 70000),
        Action(Op.ADD, "x", "example.com", 80),
    ],
)
def test_member_of_refuses(action: Action) -> None:
    with pytest.raises(ValueError):
        member_of(action)


@pytest.mark.parametrize(
    ("action", "weight"),
    [
        (Action(Op.ADD, "s", weight=7), 7),
        (Action(Op.ADD, "s"), 10),
        (Action(Op.SET_WEIGHT, "s", weight=100), 100),
        (Action(Op.ENABLE, "s", weight=3), 3),
        (Action(Op.DRAIN, "s", weight=3), 0),
        (Action(Op.SET_WEIGHT, "s"), ValueError),
        (Action(Op.ENABLE, "s"), ValueError),
        (Action(Op.SET_WEIGHT, "s", weight=101), ValueError),
        (Action(Op.ADD, "s", weight=-1), ValueError),
    ],
)
def test_weight_of(action: Action, weight: int | type[Exception]) -> None:
    if isinstance(weight, int):
        assert weight_of(action) == weight
    else:
        with pytest.raises(weight):
            weight_of(action)


def _add(i: int) -> Action:
    return Action(
        Op.ADD, f"10.1.{i // 250}.{i % 250 + 1}_80", f"10.1.{i // 250}.{i % 250 + 1}", 80, 1
    )


@pytest.mark.parametrize(
    ("n", "sizes"),
    [(1, [1]), (500, [500]), (501, [500, 1]), (1001, [500, 500, 1])],
)
def test_plan_calls_chunks_registrations(n: int, sizes: list[int]) -> None:
    calls, invalid = plan_calls([_add(i) for i in range(n)])
    assert invalid == []
    assert [(c, len(items)) for c, items in calls] == [(Call.REGISTER, s) for s in sizes]
    assert max(sizes) <= MAX_BATCH_TARGETS


def test_plan_calls_orders_a_batch_and_splits_on_repeats() -> None:
    actions = [
        Action(Op.ADD, "10.0.0.1_80", "10.0.0.1", 80, 5),
        Action(Op.REMOVE, "10.0.0.2_80"),
        Action(Op.DRAIN, "10.0.0.3_80"),
        Action(Op.SET_WEIGHT, "10.0.0.1_80", weight=9),  # same server again: a second batch
        Action(Op.ENABLE, "bogus"),
    ]
    calls, invalid = plan_calls(actions)
    assert [(c, [i.action.server for i in items]) for c, items in calls] == [
        (Call.DEREGISTER, ["10.0.0.2_80"]),
        (Call.REGISTER, ["10.0.0.1_80"]),
        (Call.WEIGHT, ["10.0.0.3_80"]),
        (Call.WEIGHT, ["10.0.0.1_80"]),
    ]
    assert [i.weight for _, items in calls for i in items] == [None, 5, 0, 9]
    assert [(a.server, why.split(":")[0]) for a, why in invalid] == [("bogus", "invalid")]


def test_request_params_weights_in_rules_of_fifty() -> None:
    calls, _ = plan_calls(
        [Action(Op.SET_WEIGHT, f"10.0.0.{i}_80", weight=2) for i in range(1, 121)]
    )
    ((call, items),) = calls
    l7 = Target("lb-x", "lbl-h", "HTTP", "loc-a", True)
    params = request_params(call, l7, items)
    assert params["LoadBalancerId"] == "lb-x"
    assert [len(r["Targets"]) for r in params["ModifyList"]] == [50, 50, 20]
    assert {(r["ListenerId"], r["LocationId"]) for r in params["ModifyList"]} == {
        ("lbl-h", "loc-a")
    }
    assert params["ModifyList"][0]["Targets"][0] == {"EniIp": "10.0.0.1", "Port": 80, "Weight": 2}


def test_request_params_register_and_deregister() -> None:
    l4 = Target("lb-x", "lbl-t", "TCP", None, True)
    calls, _ = plan_calls([Action(Op.ADD, "a", "10.0.0.1", 80, 3), Action(Op.REMOVE, "ins-9_80")])
    (dereg, d_items), (reg, r_items) = calls
    assert request_params(reg, l4, r_items) == {
        "LoadBalancerId": "lb-x",
        "Targets": [{"ListenerId": "lbl-t", "EniIp": "10.0.0.1", "Port": 80, "Weight": 3}],
    }
    assert request_params(dereg, l4, d_items) == {
        "LoadBalancerId": "lb-x",
        "Targets": [{"ListenerId": "lbl-t", "InstanceId": "ins-9", "Port": 80}],
    }


@pytest.mark.parametrize(
    ("call", "message", "ok"),
    [
        (Call.REGISTER, "RS 10.0.0.1:80 already bound", True),
        (Call.REGISTER, "target already exists", True),
        (Call.REGISTER, "instance does not exist", False),
        (Call.REGISTER, "the subnet doesn't exist", False),
        (Call.REGISTER, "weight out of range", False),
        (Call.DEREGISTER, "RS 10.0.0.1:80 is not bound to listener lbl-1", True),
        (Call.DEREGISTER, "target not found", True),
        (Call.DEREGISTER, "listener busy", False),
        (Call.WEIGHT, "RS 10.0.0.1:80 is not bound", False),
    ],
)
def test_idempotent_success(call: Call, message: str, ok: bool) -> None:
    assert idempotent_success(call, message) is ok


@pytest.mark.parametrize(("n", "size", "lens"), [(0, 3, []), (5, 2, [2, 2, 1]), (4, 4, [4])])
def test_chunks(n: int, size: int, lens: list[int]) -> None:
    assert [len(c) for c in chunks(list(range(n)), size)] == lens


@pytest.mark.parametrize(
    ("endpoint", "split"),
    [
        (None, ("https", "clb.tencentcloudapi.com")),
        ("http://127.0.0.1:8080", ("http", "127.0.0.1:8080")),
        (
            "https://clb.internal.tencentcloudapi.com/",
            ("https", "clb.internal.tencentcloudapi.com"),
        ),
        ("clb.ap-guangzhou.tencentcloudapi.com", ("https", "clb.ap-guangzhou.tencentcloudapi.com")),
    ],
)
def test_split_endpoint(endpoint: str | None, split: tuple[str, str]) -> None:
    assert _split_endpoint(endpoint) == split


@pytest.mark.parametrize("endpoint", ["ftp://x", "http://", "http://host/path"])
def test_split_endpoint_refuses(endpoint: str) -> None:
    with pytest.raises(ValueError):
        _split_endpoint(endpoint)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"secret_id": "", "secret_key": "k", "region": "r"},
        {"secret_id": "i", "secret_key": "k", "region": ""},
        {"secret_id": "i", "secret_key": "k", "region": "r", "retries": -1},
        {"secret_id": "i", "secret_key": "k", "region": "r", "task_timeout_s": 0},
    ],
)
def test_provider_refuses_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TencentCLBProvider(**kwargs)


def test_provider_identity() -> None:
    p = TencentCLBProvider(secret_id="i", secret_key="k", region="ap-guangzhou")
    assert (p.name, p.max_weight, p.default_max_backends) == ("tencent-clb", 100, None)
    assert p.instances() == ["ap-guangzhou"]
    with pytest.raises(ValueError, match="unknown CLB instance"):
        p.observe("ap-shanghai", "lb-a/TCP:80")
    with pytest.raises(PoolNotFound):  # malformed: refused before any call
        p.observe("ap-guangzhou", "nope")
