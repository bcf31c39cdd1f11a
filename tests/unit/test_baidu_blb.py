"""Pure parts of the Baidu application BLB provider: pool names, answers, errors, planning."""

from __future__ import annotations

import pytest

from agent.lb.baidu_blb.answers import (
    Member,
    health_of,
    ip_groups_of_policies,
    parse_member_page,
    to_observed,
)
from agent.lb.baidu_blb.errors import Outcome, classify, says_exists, says_missing
from agent.lb.baidu_blb.plan import plan_actions
from agent.lb.baidu_blb.pools import PoolRef, instance_name, parse_pool, sdk_endpoint
from agent.lb.base import Action, AdminState, Health, Op, PoolNotFound, server_name
from agent.lb.cloud import chunks


@pytest.mark.parametrize(
    ("pool", "ref"),
    [
        ("lb-a7942975/ip_group-45661177", PoolRef("lb-a7942975", ip_group_id="ip_group-45661177")),
        ("lb-1/TCP:80", PoolRef("lb-1", protocol="TCP", port=80)),
        ("lb-1/https:443", PoolRef("lb-1", protocol="HTTPS", port=443)),
        ("lb-1/UDP:65535", PoolRef("lb-1", protocol="UDP", port=65535)),
    ],
)
def test_parse_pool(pool: str, ref: PoolRef) -> None:
    assert parse_pool(pool) == ref


@pytest.mark.parametrize(
    ("pool", "says"),
    [
        ("lb-1", "expected <blb-id>/<ip-group-id>"),
        ("/ip_group-1", "expected"),
        ("lb-1/", "expected"),
        ("lb-1/ip group", "expected"),
        ("lb-1/a/b", "expected"),
        ("lb-1/FTP:21", "protocol 'FTP'"),
        ("lb-1/TCP:0", "port '0' out of 1..65535"),
        ("lb-1/TCP:65536", "out of 1..65535"),
        ("lb-1/TCP:http", "port 'http'"),
        ("lb 1/ip_group-1", "expected"),
    ],
)
def test_parse_pool_refuses_malformed_names(pool: str, says: str) -> None:
    with pytest.raises(PoolNotFound, match=says.replace(".", r"\.").replace("<", ".")):
        parse_pool(pool)


@pytest.mark.parametrize(
    ("address", "port", "name"),
    [
        ("10.0.0.1", 80, "10.0.0.1_80"),
        ("fd00::4", 8080, "fd00--4_8080"),
        ("192.168.1.200", 1, "192.168.1.200_1"),
    ],
)
def test_a_members_name_is_the_leaders(address: str, port: int, name: str) -> None:
    """The leader (agent.leader.desired) names its backends with ``server_name``; a member the
    BLB lists must get the same name, or the leader would remove and re-add it every time."""
    assert Member("ip_member-1", address, port, 100).name == server_name(address, port) == name


@pytest.mark.parametrize(
    ("endpoint", "instance", "sdk"),
    [
        ("blb.bj.baidubce.com", "blb.bj.baidubce.com", "https://blb.bj.baidubce.com"),
        ("http://127.0.0.1:8123", "127.0.0.1", "http://127.0.0.1:8123"),
        ("https://blb.gz.baidubce.com", "blb.gz.baidubce.com", "https://blb.gz.baidubce.com"),
    ],
)
def test_endpoints(endpoint: str, instance: str, sdk: str) -> None:
    assert sdk_endpoint(endpoint) == sdk
    assert instance_name(sdk_endpoint(endpoint)) == instance


def test_endpoint_with_another_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="http or https"):
        sdk_endpoint("ftp://blb")


PAGE = {
    "marker": "",
    "isTruncated": True,
    "nextMarker": "ip_member-3",
    "maxKeys": 2,
    "memberList": [
        {
            "memberId": "ip_member-1",
            "ip": "10.0.0.1",
            "port": 80,
            "weight": 100,
            "portList": [{"healthCheckPortType": "TCP", "status": "Alive"}],
        },
        {"memberId": "ip_member-2", "ip": "10.0.0.2", "port": 8080, "weight": 0},
    ],
}


def test_parse_member_page() -> None:
    members, marker = parse_member_page(PAGE)
    assert marker == "ip_member-3"
    assert members == [
        Member("ip_member-1", "10.0.0.1", 80, 100, ("Alive",)),
        Member("ip_member-2", "10.0.0.2", 8080, 0, ()),
    ]
    last, none = parse_member_page({**PAGE, "isTruncated": False, "nextMarker": None})
    assert none is None and len(last) == 2


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"memberList": "x"},
        {"memberList": [{"ip": "10.0.0.1"}]},
        {"memberList": [{"memberId": "m", "ip": "1.1.1.1", "port": "x", "weight": 1}]},
        {"memberList": [], "isTruncated": True},
    ],
)
def test_parse_member_page_refuses_other_shapes(body: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        parse_member_page(body)


@pytest.mark.parametrize(
    ("statuses", "health"),
    [
        ((), Health.UP),  # no backend policy: no health check, the BLB forwards anyway
        (("Alive",), Health.UP),
        (("Dead",), Health.DOWN),
        (("Unknown",), Health.CHECKING),
        (("Alive", "Dead"), Health.DOWN),
        (("Alive", "Unknown"), Health.CHECKING),
        (("Alive", "Alive"), Health.UP),
    ],
)
def test_health_of(statuses: tuple[str, ...], health: Health) -> None:
    assert health_of(statuses) is health


@pytest.mark.parametrize(("weight", "admin"), [(1, AdminState.READY), (0, AdminState.DRAIN)])
def test_to_observed(weight: int, admin: AdminState) -> None:
    s = to_observed(Member("m", "fd00::1", 80, weight, ("Dead",)))
    assert (s.name, s.address, s.port, s.weight) == ("fd00--1_80", "fd00::1", 80, weight)
    assert (s.admin, s.health, s.sessions) == (admin, Health.DOWN, None)


def test_ip_groups_of_policies() -> None:
    body = {
        "policyList": [
            {"appIpGroupId": "ip_group-1", "groupType": "ip"},
            {"appServerGroupId": "sg-1"},
            {"appIpGroupId": "ip_group-1"},
            {"appIpGroupId": "ip_group-2"},
        ]
    }
    assert ip_groups_of_policies(body) == ["ip_group-1", "ip_group-2"]
    with pytest.raises(ValueError):
        ip_groups_of_policies({})


@pytest.mark.parametrize(
    ("status", "code", "outcome"),
    [
        (403, "InvalidAccessKeyId", Outcome.CREDENTIALS),
        (400, "SignatureDoesNotMatch", Outcome.CREDENTIALS),
        (403, "SignatureDoesNotMatch", Outcome.CREDENTIALS),
        (401, "", Outcome.CREDENTIALS),
        (403, "AccessDenied", Outcome.DENIED),
        (403, "", Outcome.DENIED),
        (429, "", Outcome.THROTTLED),
        (429, "RequestLimitExceeded", Outcome.THROTTLED),
        (400, "TooManyRequests", Outcome.THROTTLED),
        (400, "QuotaExceeded", Outcome.QUOTA),
        (400, "BLB.MemberQuotaExceed", Outcome.QUOTA),
        (500, "InternalError", Outcome.ERROR),
        (503, "ServiceUnavailable", Outcome.ERROR),
        (None, "", Outcome.ERROR),
        (400, "RequestExpired", Outcome.ERROR),
        (404, "NoSuchObject", Outcome.NOT_FOUND),
        (400, "InappropriateJSON", Outcome.REJECTED),
        (400, None, Outcome.REJECTED),
    ],
)
def test_classify(status: int | None, code: str | None, outcome: Outcome) -> None:
    assert classify(status, code) is outcome


@pytest.mark.parametrize(
    ("outcome", "label"),
    [
        (Outcome.CREDENTIALS, "auth"),
        (Outcome.DENIED, "auth"),
        (Outcome.NOT_FOUND, "rejected"),
        (Outcome.QUOTA, "quota"),
        (Outcome.OK, "ok"),
        (Outcome.THROTTLED, "throttled"),
        (Outcome.ERROR, "error"),
    ],
)
def test_outcome_labels_are_bounded(outcome: Outcome, label: str) -> None:
    assert outcome.label == label


@pytest.mark.parametrize(
    ("code", "message", "exists"),
    [
        ("MemberAlreadyExists", "", True),
        ("BadRequest", "the member 10.0.0.1:80 already exists", True),
        ("NoSuchObject", "member does not exist", False),
        ("InappropriateJSON", "weight", False),
    ],
)
def test_says_exists(code: str, message: str, exists: bool) -> None:
    assert says_exists(code, message) is exists


@pytest.mark.parametrize(
    ("status", "code", "message", "missing"),
    [
        (404, "NoSuchObject", "", True),
        (400, "BadRequest", "member ip_member-1 not exist", True),
        (400, "MemberNotFound", "", True),
        (400, "InappropriateJSON", "", False),
    ],
)
def test_says_missing(status: int, code: str, message: str, missing: bool) -> None:
    assert says_missing(status, code, message) is missing


@pytest.mark.parametrize(
    ("n", "size", "sizes"), [(0, 50, []), (50, 50, [50]), (51, 50, [50, 1]), (7, 3, [3, 3, 1])]
)
def test_chunks(n: int, size: int, sizes: list[int]) -> None:
    assert [len(c) for c in chunks(list(range(n)), size)] == sizes


def test_chunks_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        list(chunks([1], 0))


# -- planning ----------------------------------------------------------------------------------
def mem(i: int, weight: int = 10) -> Member:
    return Member(f"ip_member-{i}", f"10.0.0.{i}", 80, weight)


def add(i: int, weight: int | None = 10) -> Action:
    return Action(Op.ADD, f"10.0.0.{i}_80", f"10.0.0.{i}", 80, weight)


def listed(*members: Member) -> dict[str, Member]:
    return {m.name: m for m in members}


def test_plan_maps_each_op_to_its_call() -> None:
    plan = plan_actions(
        [
            add(1),
            Action(Op.SET_WEIGHT, "10.0.0.2_80", weight=50),
            Action(Op.ENABLE, "10.0.0.3_80", weight=20),
            Action(Op.DRAIN, "10.0.0.4_80"),
            Action(Op.REMOVE, "10.0.0.5_80"),
        ],
        listed(mem(2), mem(3, 0), mem(4), mem(5, 0)),
        (),
        max_backends=50,
    )
    assert [(c.ip, c.port, c.weight) for c in plan.creates.values()] == [("10.0.0.1", 80, 10)]
    assert {u.member_id: u.weight for u in plan.updates.values()} == {
        "ip_member-2": 50,
        "ip_member-3": 20,
        "ip_member-4": 0,
    }
    assert list(plan.deletes) == ["ip_member-5"]
    assert plan.done == [] and plan.failed == []


def test_plan_is_idempotent_against_what_is_listed_or_pending() -> None:
    plan = plan_actions(
        [
            add(1),  # listed with this weight
            add(2),  # added a moment ago, not listed yet
            Action(Op.REMOVE, "10.0.0.9_80"),  # already gone
            Action(Op.SET_WEIGHT, "10.0.0.1_80", weight=10),  # no change
        ],
        listed(mem(1)),
        {"10.0.0.2_80"},
        max_backends=50,
    )
    assert len(plan.done) == 4
    assert not (plan.creates or plan.updates or plan.deletes or plan.failed)


def test_plan_add_of_a_listed_member_with_another_weight_updates_it() -> None:
    plan = plan_actions([add(1, 30)], listed(mem(1, 10)), (), max_backends=50)
    assert {u.member_id: u.weight for u in plan.updates.values()} == {"ip_member-1": 30}


def test_plan_merges_enable_and_set_weight_of_one_member() -> None:
    a, b = (
        Action(Op.ENABLE, "10.0.0.1_80", weight=5),
        Action(Op.SET_WEIGHT, "10.0.0.1_80", weight=7),
    )
    plan = plan_actions([a, b], listed(mem(1, 0)), (), max_backends=50)
    (u,) = plan.updates.values()
    assert (u.weight, u.actions) == (7, [a, b])


def test_plan_refuses_adds_beyond_max_backends_in_order() -> None:
    existing = listed(*(mem(i) for i in range(1, 49)))  # 48 listed
    plan = plan_actions(
        [add(100), add(101), add(102)], existing, {"10.0.0.200_80"}, max_backends=50
    )
    assert [c.ip for c in plan.creates.values()] == ["10.0.0.100"]  # 48 + 1 pending + 1
    assert [a.server for a, _ in plan.failed] == ["10.0.0.101_80", "10.0.0.102_80"]
    assert all("max_backends=50" in why and "not sent" in why for _, why in plan.failed)


def test_plan_counts_removals_in_the_same_apply_and_none_means_no_cap() -> None:
    existing = listed(*(mem(i) for i in range(1, 51)))
    plan = plan_actions([add(100), Action(Op.REMOVE, "10.0.0.1_80")], existing, (), max_backends=50)
    assert len(plan.creates) == 1 and not plan.failed
    plan = plan_actions([add(100), add(101)], existing, (), max_backends=None)
    assert len(plan.creates) == 2


@pytest.mark.parametrize(
    ("action", "says"),
    [
        (Action(Op.ADD, "x", None, None, 1), "invalid: add needs an address"),
        (Action(Op.ADD, "x_80", "x", 80, 1), "not an IP address"),
        (Action(Op.ADD, "10.0.0.1_0", "10.0.0.1", 0, 1), "port 0"),
        (Action(Op.ADD, "web-0", "10.0.0.1", 80, 1), "named '10.0.0.1_80'"),
        (add(1, 101), "weight 101 out of 0..100"),
        (Action(Op.SET_WEIGHT, "10.0.0.1_80"), "set_weight needs a weight"),
        (Action(Op.ENABLE, "10.0.0.1_80", weight=-1), "weight -1"),
        (Action(Op.SET_WEIGHT, "10.0.0.7_80", weight=1), "no_server"),
    ],
)
def test_plan_refuses_invalid_actions(action: Action, says: str) -> None:
    plan = plan_actions([action], listed(mem(1)), (), max_backends=50)
    assert len(plan.failed) == 1 and says in plan.failed[0][1], plan.failed


def test_plan_pending_member_cannot_be_reweighted_or_removed_yet() -> None:
    plan = plan_actions(
        [Action(Op.DRAIN, "10.0.0.2_80"), Action(Op.REMOVE, "10.0.0.2_80")],
        {},
        {"10.0.0.2_80"},
        max_backends=50,
    )
    assert [why.split(":")[0] for _, why in plan.failed] == ["pending", "pending"]


def test_plan_add_without_weight_takes_the_max() -> None:
    plan = plan_actions([add(1, None)], {}, (), max_backends=50)
    assert [c.weight for c in plan.creates.values()] == [100]
