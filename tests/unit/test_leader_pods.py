"""The leader's fast pod decoder gives the very model the dict converter gives, on realistic
pods as the API server serves them and on the odd shapes the converter tolerates."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from agent.errors import TransientError
from agent.kube.convert import leader_pod_from_dict
from agent.kube.decode import JsonDecoder
from agent.kube.leader_pods import LeaderPodDecoder
from agent.model import LB_READY
from tests.unit.test_convert import PODS

Obj = dict[str, Any]
# A page of kube-apiserver 1.28's answer: a backend of a direct Service (readiness gate,
# lb-ready) and another pod, each with three containers, env, probes, managedFields (13 KiB).
REALISTIC = json.loads((Path(__file__).parent / "data" / "pod_list_page.json").read_text())


def page_of(*pods: Obj, **meta: str) -> bytes:
    return json.dumps({"kind": "PodList", "metadata": meta, "items": list(pods)}).encode()


def odd_pods() -> list[Obj]:
    """Shapes the converter accepts: sections, lists and maps absent or null."""
    base = REALISTIC["items"][0]
    bare: list[Obj] = [
        {},
        {"metadata": None, "spec": None, "status": None},
        {"metadata": {"name": "n", "namespace": "ns", "labels": None, "annotations": None}},
        {
            "metadata": {"name": "ip", "namespace": "ns"},
            "spec": {"containers": None, "readinessGates": None, "hostNetwork": True,
                     "terminationGracePeriodSeconds": 0},
            "status": {"podIP": "10.1.0.9", "podIPs": None, "conditions": None},
        },
        {
            "metadata": {"name": "ports", "namespace": "ns", "deletionGracePeriodSeconds": 5,
                         "deletionTimestamp": "2026-01-01T00:00:00Z",
                         "annotations": {"podlb.io/weight": "3", "x": "y"}},
            "spec": {"nodeName": "",
                     "containers": [{"ports": None},
                                    {"ports": [{"containerPort": 80}, {"name": "x"}]}],
                     "readinessGates": [{"conditionType": LB_READY}, {}]},
            "status": {"podIPs": [{"ip": "10.1.0.1"}, {}, {"ip": "fd00::1"}],
                       "conditions": [
                           {"type": "ContainersReady", "status": "False", "reason": None},
                           {"type": LB_READY, "status": "True", "lastTransitionTime": None},
                           {"status": "True"}, {"type": "DisruptionTarget"}]},
        },
    ]  # fmt: skip
    no_status = copy.deepcopy(base)
    del no_status["status"]
    return [*bare, no_status]


@pytest.mark.parametrize(
    "pods", [REALISTIC["items"], PODS, odd_pods()], ids=["real", "convert", "odd"]
)
def test_a_page_decodes_to_the_converters_model(pods: list[Obj]) -> None:
    page = LeaderPodDecoder().page(page_of(*pods, resourceVersion="7", **{"continue": "tok"}))
    assert (page.resource_version, page.next) == ("7", "tok")
    want = JsonDecoder(leader_pod_from_dict).page(page_of(*pods))
    assert page.items == want.items
    assert [pod for _, pod in page.items] == [leader_pod_from_dict(p) for p in pods]


def test_the_realistic_page_as_served() -> None:
    raw = (Path(__file__).parent / "data" / "pod_list_page.json").read_bytes()
    page = LeaderPodDecoder().page(raw)
    assert page.resource_version == REALISTIC["metadata"]["resourceVersion"]
    assert page.next == REALISTIC["metadata"]["continue"]
    backend = page.items[0][1]
    assert backend.readiness_gates == (LB_READY,) and backend.ips and backend.node_name
    assert [c.type for c in backend.conditions] == ["ContainersReady", LB_READY]
    assert backend.ports and backend.uid and backend.resource_version == ""


def test_what_pods_share_is_shared_as_the_converter_shares_it() -> None:
    items = LeaderPodDecoder().page(page_of(PODS[1], PODS[4])).items
    a, b = items[0][1], items[1][1]
    assert a.labels is b.labels and a.ports is b.ports and a.readiness_gates is b.readiness_gates
    assert a.conditions[0] is b.conditions[0] and a.namespace is b.namespace
    assert a.labels is leader_pod_from_dict(PODS[2]).labels
    assert a.creation_timestamp is b.creation_timestamp  # created in the same second
    assert a.creation_timestamp is leader_pod_from_dict(PODS[2]).creation_timestamp


def test_fields_of_unexpected_types_are_decoded_as_plain_json_and_counted() -> None:
    odd = copy.deepcopy(PODS[0])
    odd["spec"]["terminationGracePeriodSeconds"] = "45"  # the converter takes int("45")
    odd["metadata"]["labels"]["n"] = 1  # and str(1)
    decoder = LeaderPodDecoder()
    page = decoder.page(page_of(odd, PODS[1]))
    assert [p for _, p in page.items] == [leader_pod_from_dict(odd), leader_pod_from_dict(PODS[1])]
    assert page.items[0][1].grace_period_s == 45
    event = decoder.event(json.dumps({"type": "MODIFIED", "object": odd}))
    assert event is not None and event.item == leader_pod_from_dict(odd)
    assert decoder.fallbacks == 2


@pytest.mark.parametrize("body", [b"{not json", b'{"items": [{"metadata": {"name": "x"}}', b""])
def test_an_unparsable_page_is_transient(body: bytes) -> None:
    with pytest.raises(TransientError, match="list pods: unparsable"):
        LeaderPodDecoder().page(body)


def watch_lines() -> list[str]:
    gone = {"kind": "Status", "status": "Failure", "code": 410, "message": "too old"}
    bookmark = {"kind": "Pod", "metadata": {"resourceVersion": "99"}}
    return [
        json.dumps({"type": t, "object": o})
        for t, o in [
            ("ADDED", REALISTIC["items"][0]),
            ("MODIFIED", PODS[5]),
            ("DELETED", PODS[2]),
            ("BOOKMARK", bookmark),
            ("ERROR", gone),
            ("SOMETHING", PODS[3]),
        ]
    ] + ["[1, 2]", '"a string"', '{"type": "ADDED", "object": null}', '{"type": "DELETED"}']


def test_watch_events_decode_as_the_json_decoder_decodes_them() -> None:
    fast, plain = LeaderPodDecoder(), JsonDecoder(leader_pod_from_dict)
    for line in watch_lines():
        assert fast.event(line) == plain.event(line), line
        assert fast.event(line.encode()) == plain.event(line), line
    added = fast.event(watch_lines()[0])
    assert added is not None and added.item is not None and added.item.uid
    assert added.resource_version == REALISTIC["items"][0]["metadata"]["resourceVersion"]
    error = fast.event(watch_lines()[4])
    assert error is not None and error.error is not None and error.error["code"] == 410
    assert fast.fallbacks == 0
