"""Contract tests of the Kubernetes API server double, written with the official client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.testbed.kubeapi import KubeAPIServer, Rule

Obj = dict[str, Any]


# -- helpers -----------------------------------------------------------------------------------
@pytest.fixture
def api() -> Iterator[KubeAPIServer]:
    with KubeAPIServer(host="127.0.0.1", port=0, watch_window=1000, bookmark_interval=0.2) as s:
        yield s


@pytest.fixture
def core(api: KubeAPIServer) -> client.CoreV1Api:
    return client.CoreV1Api(api.api_client())


def wait_for(fn: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def pod(
    name: str, node: str | None = None, labels: dict[str, str] | None = None, **spec: Any
) -> Obj:
    body: Obj = {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}], **spec},
    }
    if node:
        body["spec"]["nodeName"] = node
    return body


def status_of(e: ApiException) -> Obj:
    body: Obj = json.loads(e.body)
    return body


def raw(
    api: KubeAPIServer,
    method: str,
    path: str,
    body: bytes | None = None,
    token: str | None = None,
    ctype: str = "application/json",
) -> tuple[int, Obj]:
    req = urllib.request.Request(api.url + path, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token or api.admin_token}")
    req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def collect(stream: Iterator[Obj], n: int, timeout: float = 5.0) -> list[Obj]:
    out: list[Obj] = []
    deadline = time.monotonic() + timeout
    for ev in stream:
        out.append(ev)
        if len(out) >= n or time.monotonic() > deadline:
            break
    return out


def merge_core(api: KubeAPIServer) -> client.CoreV1Api:
    """A client whose PATCHes are JSON merge patches (the usual trick with this client)."""
    ac = api.api_client()
    ac.set_default_header("Content-Type", "application/merge-patch+json")
    return client.CoreV1Api(ac)


def set_ready(core: client.CoreV1Api, name: str, ip: str | list[str], ready: bool = True) -> None:
    ips = [ip] if isinstance(ip, str) else ip
    core.patch_namespaced_pod_status(
        name,
        "default",
        {
            "status": {
                "phase": "Running",
                "podIP": ips[0],
                "podIPs": [{"ip": i} for i in ips],
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            }
        },
    )


# -- discovery, metadata ---------------------------------------------------------------------
def test_discovery(api: KubeAPIServer) -> None:
    ac = api.api_client()
    assert client.VersionApi(ac).get_code().major == "1"
    assert client.CoreApi(ac).get_api_versions().versions == ["v1"]
    groups = {g.name for g in client.ApisApi(ac).get_api_versions().groups}
    assert {"discovery.k8s.io", "coordination.k8s.io", "events.k8s.io"} <= groups
    core_res = {r.name for r in client.CoreV1Api(ac).get_api_resources().resources}
    assert {"pods", "pods/status", "services", "namespaces", "nodes", "events"} <= core_res
    assert client.DiscoveryV1Api(ac).get_api_resources().resources[0].kind == "EndpointSlice"
    assert client.CoordinationV1Api(ac).get_api_resources().resources[0].name == "leases"


def test_create_sets_metadata_and_global_resource_version(core: client.CoreV1Api) -> None:
    p = core.create_namespaced_pod("default", pod("p1"))
    cm = core.create_namespaced_config_map("default", {"metadata": {"name": "c"}, "data": {}})
    assert p.metadata.namespace == "default" and p.metadata.uid
    assert p.metadata.generation == 1 and p.metadata.creation_timestamp is not None
    assert int(cm.metadata.resource_version) > int(p.metadata.resource_version)
    assert p.status.phase == "Pending" and p.spec.termination_grace_period_seconds == 30
    got = core.read_namespaced_pod("p1", "default")
    assert got.metadata.uid == p.metadata.uid and got.kind == "Pod" and got.api_version == "v1"


def test_generation_bumps_on_spec_not_status(core: client.CoreV1Api) -> None:
    p = core.create_namespaced_pod("default", pod("p1"))
    s = core.patch_namespaced_pod_status("p1", "default", {"status": {"phase": "Running"}})
    assert s.metadata.generation == 1
    assert int(s.metadata.resource_version) > int(p.metadata.resource_version)
    u = core.patch_namespaced_pod("p1", "default", {"spec": {"activeDeadlineSeconds": 5}})
    assert u.metadata.generation == 2
    same = core.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {}}})
    assert same.metadata.resource_version == u.metadata.resource_version  # no-op write


def test_create_existing_is_409_already_exists(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p1"))
    with pytest.raises(ApiException) as e:
        core.create_namespaced_pod("default", pod("p1"))
    assert e.value.status == 409
    st = status_of(e.value)
    assert st["kind"] == "Status" and st["reason"] == "AlreadyExists" and st["code"] == 409
    assert st["details"] == {"name": "p1", "kind": "pods"}
    assert st["message"] == 'pods "p1" already exists'


def test_put_with_stale_resource_version_is_409_conflict(core: client.CoreV1Api) -> None:
    p = core.create_namespaced_pod("default", pod("p1"))
    p.metadata.labels = {"a": "1"}
    core.replace_namespaced_pod("p1", "default", p)
    p.metadata.labels = {"a": "2"}
    with pytest.raises(ApiException) as e:
        core.replace_namespaced_pod("p1", "default", p)
    assert e.value.status == 409 and status_of(e.value)["reason"] == "Conflict"
    assert "the object has been modified" in status_of(e.value)["message"]


def test_missing_is_404_not_found(core: client.CoreV1Api) -> None:
    for call in (
        lambda: core.read_namespaced_pod("nope", "default"),
        lambda: core.delete_namespaced_pod("nope", "default"),
    ):
        with pytest.raises(ApiException) as e:
            call()
        st = status_of(e.value)
        assert e.value.status == 404 and st["reason"] == "NotFound"
        assert st["details"] == {"name": "nope", "kind": "pods"}


def test_create_in_missing_namespace_is_404(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as e:
        core.create_namespaced_pod("ghost", pod("p1"))
    assert e.value.status == 404 and 'namespaces "ghost" not found' in status_of(e.value)["message"]


def test_invalid_is_422_and_unparsable_is_400(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as e:
        core.create_namespaced_pod(
            "default", {"metadata": {}, "spec": {"containers": [{"name": "a", "image": "b"}]}}
        )
    st = status_of(e.value)
    assert e.value.status == 422 and st["reason"] == "Invalid"
    assert st["details"]["causes"][0]["field"] == "metadata.name"
    with pytest.raises(ApiException) as e:
        core.create_namespaced_pod("default", {"metadata": {"name": "x"}, "spec": {}})
    assert e.value.status == 422
    code, body = raw(api, "POST", "/api/v1/namespaces/default/pods", b"{not json")
    assert code == 400 and body["reason"] == "BadRequest"


def test_generate_name(core: client.CoreV1Api) -> None:
    p = core.create_namespaced_pod(
        "default", {"metadata": {"generateName": "web-"}, "spec": pod("x")["spec"]}
    )
    assert p.metadata.name.startswith("web-") and len(p.metadata.name) == 9


def test_list_resource_version_and_paging(core: client.CoreV1Api) -> None:
    for i in range(5):
        core.create_namespaced_pod("default", pod(f"p{i}"))
    lst = core.list_namespaced_pod("default")
    assert int(lst.metadata.resource_version) >= 5 and len(lst.items) == 5
    names: list[str] = []
    cont = None
    while True:
        page = core.list_namespaced_pod("default", limit=2, _continue=cont)
        names += [p.metadata.name for p in page.items]
        cont = page.metadata._continue
        if not cont:
            break
    assert names == [f"p{i}" for i in range(5)]
    assert len(core.list_pod_for_all_namespaces().items) == 5


def test_paged_list_is_one_snapshot_and_an_expired_continue_is_410() -> None:
    """kube-apiserver serves every page of a list from the first page's resourceVersion (a
    pod created, changed or deleted meanwhile does not show in the later pages), and answers
    410 Expired once that resourceVersion was compacted."""
    with KubeAPIServer(port=0, watch_window=20) as api:
        core = client.CoreV1Api(api.api_client())
        for i in range(6):
            core.create_namespaced_pod("default", pod(f"p{i}"))
        first = core.list_namespaced_pod("default", limit=2)
        rv, cont = first.metadata.resource_version, first.metadata._continue
        assert [p.metadata.name for p in first.items] == ["p0", "p1"]
        assert first.metadata.remaining_item_count == 4
        core.create_namespaced_pod("default", pod("p2a"))
        core.delete_namespaced_pod("p3", "default", grace_period_seconds=0)
        core.patch_namespaced_pod("p4", "default", {"metadata": {"labels": {"late": "yes"}}})
        rest = core.list_namespaced_pod("default", limit=10, _continue=cont)
        assert rest.metadata.resource_version == rv
        assert [p.metadata.name for p in rest.items] == ["p2", "p3", "p4", "p5"]
        assert not (rest.items[2].metadata.labels or {}).get("late")
        with pytest.raises(ApiException) as bad:
            core.list_namespaced_pod("default", limit=2, _continue=cont, resource_version=rv)
        assert bad.value.status == 400
        with pytest.raises(ApiException) as garbled:
            core.list_namespaced_pod("default", limit=2, _continue="bm90LWEtdG9rZW4=")
        assert garbled.value.status == 400
        for i in range(25):  # the snapshot leaves the retained window
            api.store.create("configmaps", {"metadata": {"name": f"c{i}"}}, "default")
        with pytest.raises(ApiException) as expired:
            core.list_namespaced_pod("default", limit=2, _continue=cont)
        assert expired.value.status == 410
        body = json.loads(expired.value.body)
        assert body["reason"] == "Expired" and "continue parameter is too old" in body["message"]


# -- watch -----------------------------------------------------------------------------------
def test_watch_from_resource_version_replays_then_streams(core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod("default", pod("p1"))
    core.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {"x": "y"}}})
    core.delete_namespaced_pod("p1", "default")  # not on a node: immediate
    w = watch.Watch()
    stream = w.stream(core.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=5)
    first = collect(stream, 3)
    threading.Timer(0.1, lambda: core.create_namespaced_pod("default", pod("p2"))).start()
    live = collect(stream, 1)
    w.stop()
    assert [e["type"] for e in first] == ["ADDED", "MODIFIED", "DELETED"]
    rvs = [int(e["object"].metadata.resource_version) for e in first]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)
    assert live[0]["type"] == "ADDED" and live[0]["object"].metadata.name == "p2"


def test_watch_without_resource_version_sends_current_state(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("a"))
    core.create_namespaced_pod("default", pod("b"))
    w = watch.Watch()
    evs = collect(w.stream(core.list_namespaced_pod, "default", timeout_seconds=5), 2)
    assert [(e["type"], e["object"].metadata.name) for e in evs] == [("ADDED", "a"), ("ADDED", "b")]
    evs0 = collect(
        w.stream(core.list_namespaced_pod, "default", resource_version="0", timeout_seconds=5), 2
    )
    assert len(evs0) == 2


def test_watch_bookmarks(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("a"))
    rv = core.list_namespaced_pod("default").metadata.resource_version
    w = watch.Watch()
    evs = collect(
        w.stream(
            core.list_namespaced_pod,
            "default",
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=3,
        ),
        2,
    )
    assert [e["type"] for e in evs] == ["BOOKMARK", "BOOKMARK"]
    assert evs[0]["raw_object"]["metadata"] == {"resourceVersion": rv}
    assert evs[0]["raw_object"]["kind"] == "Pod"


def test_watch_timeout_seconds_ends_cleanly(core: client.CoreV1Api) -> None:
    t = time.monotonic()
    resp = core.list_namespaced_pod(
        "default", watch=True, timeout_seconds=1, _preload_content=False
    )
    assert resp.read() == b""  # complete chunked body, no error
    assert 0.9 <= time.monotonic() - t < 3


def test_watch_too_old_resource_version_is_410_error_event() -> None:
    with KubeAPIServer(watch_window=3) as api:
        core = client.CoreV1Api(api.api_client())
        for i in range(6):
            core.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
        resp = core.list_namespaced_config_map(
            "default", watch=True, resource_version="2", _preload_content=False
        )
        assert resp.status == 200
        lines = resp.read().decode().splitlines()
        ev = json.loads(lines[0])
        assert ev["type"] == "ERROR" and ev["object"]["code"] == 410
        assert ev["object"]["reason"] == "Expired" and ev["object"]["kind"] == "Status"
        with pytest.raises(ApiException) as e:
            list(
                watch.Watch().stream(
                    core.list_namespaced_config_map,
                    "default",
                    resource_version="2",
                    timeout_seconds=1,
                )
            )
        assert e.value.status == 410
        # the retained window still works
        rv = core.list_namespaced_config_map("default").metadata.resource_version
        evs = list(
            watch.Watch().stream(
                core.list_namespaced_config_map,
                "default",
                resource_version=str(int(rv) - 1),
                timeout_seconds=1,
            )
        )
        assert [e["object"].metadata.name for e in evs] == ["c5"]


def test_watch_field_selector_turns_modified_into_added_and_deleted(
    core: client.CoreV1Api,
) -> None:
    core.create_namespaced_pod("default", pod("a"))
    rv = core.list_namespaced_pod("default").metadata.resource_version
    w = watch.Watch()
    stream = w.stream(
        core.list_namespaced_pod,
        "default",
        resource_version=rv,
        field_selector="spec.nodeName=n1",
        timeout_seconds=5,
    )
    core.create_namespaced_pod("default", pod("other", node="n2"))
    core.create_namespaced_pod_binding(
        "a",
        "default",
        client.V1Binding(
            metadata=client.V1ObjectMeta(name="a"),
            target=client.V1ObjectReference(kind="Node", name="n1"),
        ),
        _preload_content=False,
    )
    core.patch_namespaced_pod_status("a", "default", {"status": {"phase": "Running"}})
    evs = collect(stream, 2)
    w.stop()
    assert [(e["type"], e["object"].metadata.name) for e in evs] == [
        ("ADDED", "a"),
        ("MODIFIED", "a"),
    ]
    lst = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1,status.phase=Running")
    assert [p.metadata.name for p in lst.items] == ["a"]
    lst = core.list_namespaced_pod("default", field_selector="metadata.name!=a")
    assert [p.metadata.name for p in lst.items] == ["other"]
    w2 = watch.Watch()
    evs = collect(
        w2.stream(
            core.list_namespaced_pod,
            "default",
            label_selector="app=web",
            resource_version=rv,
            timeout_seconds=1,
        ),
        1,
        timeout=1,
    )
    assert evs == []


def test_unsupported_field_label_is_400(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as e:
        core.list_namespaced_pod("default", field_selector="spec.bogus=1")
    assert e.value.status == 400 and "field label not supported" in status_of(e.value)["message"]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=web", ["a", "b"]),
        ("app==web", ["a", "b"]),
        ("app!=web", ["c", "d"]),
        ("tier in (front, back)", ["a", "c"]),
        ("tier notin (front)", ["b", "c", "d"]),
        ("tier", ["a", "c"]),
        ("!tier", ["b", "d"]),
        ("app=web,tier=front", ["a"]),
        ("", ["a", "b", "c", "d"]),
    ],
)
def test_label_selectors(core: client.CoreV1Api, selector: str, expected: list[str]) -> None:
    core.create_namespaced_pod("default", pod("a", labels={"app": "web", "tier": "front"}))
    core.create_namespaced_pod("default", pod("b", labels={"app": "web"}))
    core.create_namespaced_pod("default", pod("c", labels={"app": "db", "tier": "back"}))
    core.create_namespaced_pod("default", pod("d"))
    got = [
        p.metadata.name for p in core.list_namespaced_pod("default", label_selector=selector).items
    ]
    assert got == expected
    evs = collect(
        watch.Watch().stream(
            core.list_namespaced_pod, "default", label_selector=selector, timeout_seconds=2
        ),
        len(expected),
    )
    assert [e["object"].metadata.name for e in evs] == expected


def test_bad_label_selector_is_400(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as e:
        core.list_namespaced_pod("default", label_selector="app in ()")
    assert e.value.status == 400


# -- patch -----------------------------------------------------------------------------------
def test_strategic_merge_patch_merge_keys(core: client.CoreV1Api) -> None:
    body = pod("p1", node="n1", readinessGates=[{"conditionType": "x/a"}])
    body["spec"]["containers"] = [
        {
            "name": "app",
            "image": "app:1",
            "ports": [{"containerPort": 80, "name": "http"}],
            "env": [{"name": "A", "value": "1"}],
        },
        {"name": "side", "image": "side:1"},
    ]
    core.create_namespaced_pod("default", body)
    core.patch_namespaced_pod_status(
        "p1",
        "default",
        {
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "False"},
                    {"type": "x/a", "status": "False"},
                ]
            }
        },
    )
    p = core.patch_namespaced_pod_status(
        "p1", "default", {"status": {"conditions": [{"type": "x/a", "status": "True"}]}}
    )
    assert {c.type: c.status for c in p.status.conditions} == {"Ready": "False", "x/a": "True"}
    p = core.patch_namespaced_pod(
        "p1", "default", {"spec": {"containers": [{"name": "side", "image": "side:2"}]}}
    )
    assert [(c.name, c.image) for c in p.spec.containers] == [("app", "app:1"), ("side", "side:2")]
    p = core.patch_namespaced_pod_status(
        "p1", "default", {"status": {"conditions": [{"type": "Ready", "$patch": "delete"}]}}
    )
    assert [c.type for c in p.status.conditions] == ["x/a"]
    p = core.patch_namespaced_pod(
        "p1",
        "default",
        {
            "metadata": {
                "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "o", "uid": "u1"}],
                "finalizers": ["a/b"],
            }
        },
    )
    p = core.patch_namespaced_pod(
        "p1",
        "default",
        {
            "metadata": {
                "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "o2", "uid": "u2"}],
                "finalizers": ["c/d"],
            }
        },
    )
    assert [o.uid for o in p.metadata.owner_references] == ["u1", "u2"]
    assert p.metadata.finalizers == ["a/b", "c/d"]
    # lists without a merge key are replaced
    p = core.patch_namespaced_pod(
        "p1", "default", {"spec": {"tolerations": [{"key": "k", "operator": "Exists"}]}}
    )
    p = core.patch_namespaced_pod(
        "p1", "default", {"spec": {"tolerations": [{"key": "k2", "operator": "Exists"}]}}
    )
    assert [t.key for t in p.spec.tolerations] == ["k2"]


def test_merge_patch_rfc7386(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    mcore = merge_core(api)
    core.create_namespaced_config_map(
        "default", {"metadata": {"name": "c", "labels": {"a": "1", "b": "2"}}, "data": {"k": "v"}}
    )
    cm = mcore.patch_namespaced_config_map(
        "c", "default", {"metadata": {"labels": {"a": None, "c": "3"}}, "data": {"k2": "v2"}}
    )
    assert cm.metadata.labels == {"b": "2", "c": "3"} and cm.data == {"k": "v", "k2": "v2"}
    core.create_namespaced_pod("default", pod("p1"))
    core.patch_namespaced_pod_status(
        "p1",
        "default",
        {
            "status": {
                "conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "True"}]
            }
        },
    )
    p = mcore.patch_namespaced_pod_status(
        "p1", "default", {"status": {"conditions": [{"type": "B", "status": "False"}]}}
    )
    assert [(c.type, c.status) for c in p.status.conditions] == [("B", "False")]


def test_json_patch_rfc6902(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map(
        "default", {"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}}
    )
    cm = core.patch_namespaced_config_map(
        "c",
        "default",
        [
            {"op": "test", "path": "/data/a", "value": "1"},
            {"op": "add", "path": "/data/c", "value": "3"},
            {"op": "remove", "path": "/data/b"},
            {"op": "replace", "path": "/data/a", "value": "x"},
            {"op": "add", "path": "/metadata/labels", "value": {"k/l": "v"}},
        ],
    )
    assert cm.data == {"a": "x", "c": "3"} and cm.metadata.labels == {"k/l": "v"}
    with pytest.raises(ApiException) as e:
        core.patch_namespaced_config_map(
            "c",
            "default",
            [
                {"op": "test", "path": "/data/a", "value": "nope"},
                {"op": "replace", "path": "/data/a", "value": "y"},
            ],
        )
    assert e.value.status == 422
    with pytest.raises(ApiException) as e:
        core.patch_namespaced_config_map("c", "default", [{"op": "remove", "path": "/data/zz"}])
    assert e.value.status == 422
    assert core.read_namespaced_config_map("c", "default").data == {"a": "x", "c": "3"}


def test_patch_with_stale_resource_version_is_409(core: client.CoreV1Api) -> None:
    p = core.create_namespaced_pod("default", pod("p1"))
    core.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {"a": "1"}}})
    with pytest.raises(ApiException) as e:
        core.patch_namespaced_pod(
            "p1",
            "default",
            {"metadata": {"resourceVersion": p.metadata.resource_version, "labels": {"a": "2"}}},
        )
    assert e.value.status == 409


def test_unsupported_patch_type_is_415(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p1"))
    code, body = raw(
        api,
        "PATCH",
        "/api/v1/namespaces/default/pods/p1",
        b"{}",
        ctype="application/apply-patch+yaml",
    )
    assert code == 415 and body["reason"] == "UnsupportedMediaType"


# -- status subresource ----------------------------------------------------------------------
def test_status_subresource_isolation(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p1"))
    # main resource writes never change .status
    p = core.patch_namespaced_pod(
        "p1", "default", {"metadata": {"labels": {"a": "1"}}, "status": {"phase": "Running"}}
    )
    assert p.status.phase == "Pending" and p.metadata.labels == {"a": "1"}
    p.status.phase = "Failed"
    p.metadata.labels = {"a": "2"}
    p = core.replace_namespaced_pod("p1", "default", p)
    assert p.status.phase == "Pending" and p.metadata.labels == {"a": "2"}
    # status writes change only .status
    p = core.patch_namespaced_pod_status(
        "p1", "default", {"metadata": {"labels": {"a": "3"}}, "status": {"phase": "Running"}}
    )
    assert p.status.phase == "Running" and p.metadata.labels == {"a": "2"}
    p.metadata.labels = {"a": "4"}
    p.spec.active_deadline_seconds = 9
    p.status.pod_ip = "10.1.1.1"
    p = core.replace_namespaced_pod_status("p1", "default", p)
    assert p.status.pod_ip == "10.1.1.1" and p.metadata.labels == {"a": "2"}
    assert p.spec.active_deadline_seconds is None and p.metadata.generation == 1
    # services too
    core.create_namespaced_service(
        "default",
        {"metadata": {"name": "s"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}},
    )
    lb = {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}
    s = core.patch_namespaced_service("s", "default", lb)
    assert not s.status.load_balancer.ingress
    s = core.patch_namespaced_service_status("s", "default", lb)
    assert s.status.load_balancer.ingress[0].ip == "192.0.2.1"


def test_pod_spec_is_mostly_immutable(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p1"))
    with pytest.raises(ApiException) as e:
        core.patch_namespaced_pod("p1", "default", {"spec": {"nodeName": "n1"}})
    assert e.value.status == 422
    p = core.patch_namespaced_pod(
        "p1", "default", {"spec": {"containers": [{"name": "app", "image": "app:2"}]}}
    )
    assert p.spec.containers[0].image == "app:2"


def test_service_defaults(core: client.CoreV1Api) -> None:
    s = core.create_namespaced_service(
        "default",
        {"metadata": {"name": "s"}, "spec": {"selector": {"app": "a"}, "ports": [{"port": 80}]}},
    )
    assert s.spec.cluster_ip and s.spec.cluster_i_ps == [s.spec.cluster_ip]
    assert s.spec.ports[0].target_port == 80 and s.spec.ports[0].protocol == "TCP"
    assert s.spec.type == "ClusterIP" and s.spec.ip_families == ["IPv4"]
    ip = s.spec.cluster_ip
    s.spec.cluster_ip = None
    s.spec.cluster_i_ps = None
    s2 = core.replace_namespaced_service("s", "default", s)  # allocated values are kept
    assert s2.spec.cluster_ip == ip
    s2.spec.cluster_ip = "10.96.99.99"
    s2.spec.cluster_i_ps = ["10.96.99.99"]
    with pytest.raises(ApiException) as e:
        core.replace_namespaced_service("s", "default", s2)
    assert e.value.status == 422


# -- deletion --------------------------------------------------------------------------------
def test_graceful_pod_deletion(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p1", node="n1", terminationGracePeriodSeconds=20))
    rv = core.read_namespaced_pod("p1", "default").metadata.resource_version
    d = core.delete_namespaced_pod("p1", "default")
    assert (
        d.metadata.deletion_timestamp is not None and d.metadata.deletion_grace_period_seconds == 20
    )
    assert core.read_namespaced_pod("p1", "default").metadata.deletion_timestamp is not None
    w = watch.Watch()
    stream = w.stream(core.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=5)
    first = collect(stream, 1)
    assert first[0]["type"] == "MODIFIED"
    assert first[0]["object"].metadata.deletion_timestamp is not None
    # a second delete may shorten, never lengthen
    d = core.delete_namespaced_pod("p1", "default", grace_period_seconds=60)
    assert d.metadata.deletion_grace_period_seconds == 20
    d = core.delete_namespaced_pod("p1", "default", grace_period_seconds=10)
    assert d.metadata.deletion_grace_period_seconds == 10
    assert api.store.finalize_delete("pods", "default", "p1") is True
    rest = collect(stream, 2)
    w.stop()
    assert [e["type"] for e in rest] == ["MODIFIED", "DELETED"]
    assert api.store.get("pods", "default", "p1") is None


def test_delete_grace_from_body_and_timer(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p1", node="n1"))
    d = core.delete_namespaced_pod(
        "p1", "default", body=client.V1DeleteOptions(grace_period_seconds=1)
    )
    assert d.metadata.deletion_grace_period_seconds == 1
    wait_for(lambda: not core.list_namespaced_pod("default").items, timeout=3)


def test_immediate_pod_deletion(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("unscheduled"))
    core.delete_namespaced_pod("unscheduled", "default", grace_period_seconds=30)
    assert api.store.get("pods", "default", "unscheduled") is None
    core.create_namespaced_pod("default", pod("p1", node="n1"))
    core.delete_namespaced_pod("p1", "default", grace_period_seconds=0)
    assert api.store.get("pods", "default", "p1") is None
    core.create_namespaced_pod("default", pod("p2", node="n1"))
    core.delete_namespaced_pod("p2", "default")
    core.delete_namespaced_pod("p2", "default", grace_period_seconds=0)  # force
    assert api.store.get("pods", "default", "p2") is None


def test_other_resources_delete_at_once(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
    st = core.delete_namespaced_config_map("c", "default")
    assert st.status == "Success"
    assert core.list_namespaced_config_map("default").items == []


def test_delete_preconditions(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
    with pytest.raises(ApiException) as e:
        core.delete_namespaced_config_map(
            "c",
            "default",
            body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="other")),
        )
    assert e.value.status == 409


def test_finalizers_hold_deletion(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", {"metadata": {"name": "c", "finalizers": ["x/y"]}})
    core.delete_namespaced_config_map("c", "default")
    cm = core.read_namespaced_config_map("c", "default")
    assert cm.metadata.deletion_timestamp is not None
    merge_core(api).patch_namespaced_config_map("c", "default", {"metadata": {"finalizers": None}})
    assert core.list_namespaced_config_map("default").items == []


def test_namespace_deletion_is_immediate(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "tmp"}})
    core.create_namespaced_pod("tmp", pod("p", node="n1"))
    core.delete_namespace("tmp")
    assert api.store.get("namespaces", None, "tmp") is None
    assert api.store.list("pods", "tmp") == []


# -- other resources -------------------------------------------------------------------------
def test_leases(api: KubeAPIServer) -> None:
    coord = client.CoordinationV1Api(api.api_client())
    lease = coord.create_namespaced_lease(
        "kube-system",
        {"metadata": {"name": "l"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 10}},
    )
    lease.spec.holder_identity = "b"
    coord.replace_namespaced_lease("l", "kube-system", lease)
    with pytest.raises(ApiException) as e:
        coord.replace_namespaced_lease("l", "kube-system", lease)  # stale
    assert e.value.status == 409
    assert coord.read_namespaced_lease("l", "kube-system").spec.holder_identity == "b"


def test_events_both_groups(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    ev = client.EventsV1Api(api.api_client())
    core.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "e1"},
            "involvedObject": {"kind": "Pod", "name": "p"},
            "reason": "Test",
            "message": "m",
        },
    )
    ev.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "e2"},
            "eventTime": "2025-01-01T00:00:00.000000Z",
            "reason": "R",
            "action": "A",
            "reportingController": "c",
            "reportingInstance": "i",
            "type": "Normal",
        },
    )
    assert [
        e.metadata.name
        for e in core.list_namespaced_event("default", field_selector="involvedObject.name=p").items
    ] == ["e1"]
    assert [e.metadata.name for e in ev.list_namespaced_event("default").items] == ["e2"]


def test_nodes_cluster_scoped(core: client.CoreV1Api) -> None:
    core.create_node(
        {
            "metadata": {"name": "n1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.10"}]},
        }
    )
    n = core.read_node("n1")
    assert n.metadata.namespace is None and n.status.addresses[0].address == "192.0.2.10"


# -- endpointslice controller ----------------------------------------------------------------
def slices(api: KubeAPIServer, svc: str) -> list[Obj]:
    return [
        s
        for s in api.store.list("endpointslices", "default")
        if s["metadata"]["labels"].get("kubernetes.io/service-name") == svc
    ]


def endpoints(api: KubeAPIServer, svc: str) -> dict[str, Obj]:
    return {e["targetRef"]["name"]: e for s in slices(api, svc) for e in s["endpoints"] or []}


def test_endpointslice_controller(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    svc = core.create_namespaced_service(
        "default",
        {
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        },
    )
    # No pods: one placeholder slice, as kube-controller-manager v1.28 publishes it (its empty
    # lists come back from storage as null).
    placeholder = wait_for(lambda: slices(api, "web"))
    assert len(placeholder) == 1 and placeholder[0]["addressType"] == "IPv4"
    assert placeholder[0]["endpoints"] is None and placeholder[0]["ports"] is None
    for n in ("a", "b"):
        body = pod(n, node="n1", labels={"app": "web"})
        body["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": 8080}]
        core.create_namespaced_pod("default", body)
    set_ready(core, "a", "10.0.0.1")
    set_ready(core, "b", "10.0.0.2", ready=False)
    eps = wait_for(lambda: (e := endpoints(api, "web")) and len(e) == 2 and e)
    assert eps["a"]["conditions"] == {"ready": True, "serving": True, "terminating": False}
    assert eps["b"]["conditions"] == {"ready": False, "serving": False, "terminating": False}
    assert eps["a"]["addresses"] == ["10.0.0.1"] and eps["a"]["nodeName"] == "n1"
    assert eps["a"]["targetRef"]["kind"] == "Pod"
    s = slices(api, "web")[0]
    assert s["metadata"]["name"].startswith("web-")
    assert s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == (
        "endpointslice-controller.k8s.io"
    )
    assert s["metadata"]["ownerReferences"][0]["uid"] == svc.metadata.uid
    assert s["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    # terminating: listed, serving if Ready, not ready, until the pod is gone
    core.delete_namespaced_pod("a", "default")
    wait_for(
        lambda: (
            endpoints(api, "web")["a"]["conditions"]
            == {"ready": False, "serving": True, "terminating": True}
        )
    )
    api.store.finalize_delete("pods", "default", "a")
    wait_for(lambda: set(endpoints(api, "web")) == {"b"})
    # also readable with the official client
    disc = client.DiscoveryV1Api(api.api_client())
    lst = disc.list_namespaced_endpoint_slice(
        "default", label_selector="kubernetes.io/service-name=web"
    )
    assert lst.items[0].endpoints[0].target_ref.name == "b"
    # Scaled to zero: the placeholder again.
    core.delete_namespaced_pod("b", "default")
    api.store.finalize_delete("pods", "default", "b")
    wait_for(lambda: [(s["endpoints"], s["ports"]) for s in slices(api, "web")] == [(None, None)])
    core.delete_namespaced_service("web", "default")
    wait_for(lambda: not slices(api, "web"))


def test_endpointslices_split_by_resolved_ports_and_family(
    api: KubeAPIServer,
    core: client.CoreV1Api,
) -> None:
    core.create_namespaced_service(
        "default",
        {
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"app": "web"},
                "ipFamilyPolicy": "PreferDualStack",
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        },
    )
    for n, port in (("a", 8080), ("b", 9090)):
        body = pod(n, node="n1", labels={"app": "web"})
        body["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": port}]
        core.create_namespaced_pod("default", body)
    set_ready(core, "a", ["10.0.0.1", "fd00::1"])
    set_ready(core, "b", ["10.0.0.2", "fd00::2"])

    def shape() -> set[tuple[str, int, str]]:
        return {
            (s["addressType"], s["ports"][0]["port"], e["targetRef"]["name"])
            for s in slices(api, "web")
            if s["ports"]
            for e in s["endpoints"] or []
        }

    wait_for(
        lambda: (
            shape()
            == {("IPv4", 8080, "a"), ("IPv4", 9090, "b"), ("IPv6", 8080, "a"), ("IPv6", 9090, "b")}
        )
    )
    assert len(slices(api, "web")) == 4


# -- authentication / authorization ----------------------------------------------------------
def test_unauthenticated_is_401(api: KubeAPIServer) -> None:
    for token in (None, "wrong"):
        cfg = api.configuration(token="x")
        cfg.api_key = {"authorization": token} if token else {}
        with pytest.raises(ApiException) as e:
            client.CoreV1Api(client.ApiClient(cfg)).list_namespaced_pod("default")
        assert e.value.status == 401 and status_of(e.value)["reason"] == "Unauthorized"


def test_rbac_rules(api: KubeAPIServer) -> None:
    api.add_token(
        "agent",
        [
            Rule(verbs={"get", "list", "watch"}, resources={"pods"}),
            Rule(verbs={"patch"}, resources={"pods/status"}, namespaces={"default"}),
            Rule(
                verbs={"get", "update"},
                resources={"leases"},
                namespaces={"kube-system"},
                api_groups={"coordination.k8s.io"},
            ),
        ],
    )
    admin = client.CoreV1Api(api.api_client())
    admin.create_namespaced_pod("default", pod("p1"))
    core = client.CoreV1Api(api.api_client("agent"))
    assert len(core.list_pod_for_all_namespaces().items) == 1
    core.patch_namespaced_pod_status("p1", "default", {"status": {"phase": "Running"}})
    with pytest.raises(ApiException) as e:
        core.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {"a": "b"}}})
    assert e.value.status == 403
    with pytest.raises(ApiException) as e:
        core.list_service_for_all_namespaces()
    st = status_of(e.value)
    assert e.value.status == 403 and st["reason"] == "Forbidden"
    assert st["message"] == (
        'services is forbidden: User "system:serviceaccount:default:agent" cannot list '
        'resource "services" in API group "" at the cluster scope'
    )
    with pytest.raises(ApiException) as e:
        client.CoordinationV1Api(api.api_client("agent")).read_namespaced_lease("x", "default")
    assert status_of(e.value)["message"] == (
        'leases.coordination.k8s.io "x" is forbidden: User "system:serviceaccount:default:agent"'
        ' cannot get resource "leases" in API group "coordination.k8s.io" in the namespace '
        '"default"'
    )
    seen = [tuple(r[:6]) for r in api.requests]
    assert ("list", "services", None, None, None, 403) in seen
    assert ("patch", "pods", "status", "default", "p1", 200) in seen


# -- fault injection -------------------------------------------------------------------------
def test_fault_refuse_and_accept_same_port(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    port = api.port
    core.list_namespaced_pod("default")
    api.faults.refuse()
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))
    with pytest.raises(urllib3.exceptions.HTTPError):
        core.list_namespaced_pod("default", _request_timeout=1)
    api.faults.accept()
    assert api.port == port
    assert core.list_namespaced_pod("default").items == []


def test_fault_errors(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    api.faults.set_error(code=500, count=2)
    for _ in range(2):
        with pytest.raises(ApiException) as e:
            core.list_namespaced_pod("default")
        assert e.value.status == 500 and status_of(e.value)["reason"] == "InternalError"
    core.list_namespaced_pod("default")
    api.faults.set_error(code=429, retry_after=3, match=lambda info: info.verb == "create")
    core.list_namespaced_pod("default")
    with pytest.raises(ApiException) as e:
        core.create_namespaced_pod("default", pod("p"))
    assert e.value.status == 429 and e.value.headers["Retry-After"] == "3"
    assert status_of(e.value)["details"]["retryAfterSeconds"] == 3
    api.faults.clear()
    core.create_namespaced_pod("default", pod("p"))


def test_fault_latency(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    api.faults.set_latency(0.3)
    t = time.monotonic()
    core.list_namespaced_pod("default")
    assert time.monotonic() - t >= 0.3
    api.faults.set_latency(0)


def test_fault_cut_watches(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p1"))
    resp = core.list_namespaced_pod("default", watch=True, _preload_content=False)
    first = resp.readline() if hasattr(resp, "readline") else next(resp.stream(64))
    assert b"ADDED" in first
    wait_for(lambda: api.store._watchers)
    assert api.faults.cut_watches() == 1
    with pytest.raises(urllib3.exceptions.ProtocolError):
        resp.read()
    assert core.list_namespaced_pod("default").items  # server fine otherwise


def test_fault_freeze(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    api.faults.freeze(10)
    with pytest.raises(urllib3.exceptions.HTTPError):
        core.list_namespaced_pod("default", _request_timeout=(1, 0.1))
    api.faults.clear()
    core.list_namespaced_pod("default", _request_timeout=1)
    api.faults.freeze(0.3)  # answers come once the freeze is over
    t = time.monotonic()
    core.list_namespaced_pod("default", _request_timeout=2)
    assert time.monotonic() - t >= 0.25


# -- transport, lifecycle --------------------------------------------------------------------
def test_keep_alive(api: KubeAPIServer) -> None:
    ac = api.api_client()
    core = client.CoreV1Api(ac)
    for _ in range(10):
        core.list_namespaced_pod("default")
    list(watch.Watch().stream(core.list_namespaced_pod, "default", timeout_seconds=1))
    core.list_namespaced_pod("default")
    pools = list(ac.rest_client.pool_manager.pools._container.values())
    assert len(pools) == 1 and pools[0].num_connections == 1


def test_stop_is_quick_with_open_watch() -> None:
    api = KubeAPIServer().start()
    core = client.CoreV1Api(api.api_client())
    resp = core.list_namespaced_pod("default", watch=True, _preload_content=False)
    wait_for(lambda: api.store._watchers)
    t = time.monotonic()
    api.stop()
    assert time.monotonic() - t < 1.5
    with pytest.raises(urllib3.exceptions.ProtocolError):
        resp.read()


def test_standalone_module() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.testbed.kubeapi",
            "--listen",
            f"127.0.0.1:{port}",
            "--token",
            "me",
        ],
        stdout=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["url"] == f"http://127.0.0.1:{port}"
        cfg = client.Configuration()
        cfg.host = info["url"]
        cfg.api_key = {"authorization": "me"}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        assert client.CoreV1Api(client.ApiClient(cfg)).list_namespace().items
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
