"""The informer against the API double: list, watch, 410 Gone mid-stream, cut watches."""

from __future__ import annotations

import threading
import time
from typing import Any

from kubernetes import client

from agent.clock import Clock
from agent.kube.calls import Calls
from agent.kube.convert import pod_from_dict
from agent.kube.informer import Informer
from tests.integration.kubeobjects import pod
from tests.testbed.kubeapi import KubeAPIServer
from tests.testbed.waiting import wait_for


def test_relists_on_410_in_the_stream_and_resumes_after_cut_watches() -> None:
    with KubeAPIServer(port=0, watch_window=5) as api:
        core = client.CoreV1Api(api.api_client())
        core.create_namespaced_pod("default", pod("a"))
        seen: list[tuple[str, str]] = []
        informer = Informer(
            "pods", core.list_pod_for_all_namespaces, pod_from_dict, Calls(), Clock(),
            on_change=seen.append, watch_timeout_s=30,
        )  # fmt: skip
        stop = threading.Event()
        thread = threading.Thread(target=informer.run, args=(stop,), daemon=True)
        thread.start()
        try:
            wait_for(lambda: informer.synced.is_set(), 10, "listed")
            core.create_namespaced_pod("default", pod("b"))
            wait_for(lambda: informer.get(("default", "b")) is not None, 10, "watch event")
            # Cut the watch, then make its resourceVersion fall out of the retained window:
            # the resumed watch gets an ERROR event with 410, and the informer relists.
            api.faults.freeze(1.0)
            api.faults.cut_watches()
            for i in range(10):
                api.store.create("configmaps", {"metadata": {"name": f"c{i}"}}, "default")
            core.create_namespaced_pod("default", pod("c"))
            wait_for(lambda: informer.get(("default", "c")) is not None, 15, "relisted")
            assert informer.relists >= 2
            assert {p.name for p in informer.items()} == {"a", "b", "c"}
            core.delete_namespaced_pod("a", "default", grace_period_seconds=0)
            wait_for(lambda: informer.get(("default", "a")) is None, 10, "deletion seen")
        finally:
            stop.set()
            informer.stop_watch()
            thread.join(5)
        assert not thread.is_alive()


def run_informer(informer: Informer[Any]) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=informer.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def test_a_connection_dropped_mid_list_body_is_retried_not_fatal() -> None:
    """Issue 17, defect 5: the list body was read outside the error handling, so urllib3's
    ProtocolError ended the informer thread (and the supervisor ended the agent)."""
    with KubeAPIServer(port=0) as api:
        core = client.CoreV1Api(api.api_client())
        for i in range(20):
            core.create_namespaced_pod("default", pod(f"p{i}"))
        api.faults.cut_lists(count=2)
        informer = Informer(
            "pods", core.list_pod_for_all_namespaces, pod_from_dict, Calls(), Clock(),
            watch_timeout_s=30,
        )  # fmt: skip
        stop, thread = run_informer(informer)
        try:
            wait_for(lambda: informer.synced.is_set() or not thread.is_alive(), 10, "listed")
            assert thread.is_alive(), "the informer died on a cut list body"
            assert len(informer) == 20
            assert informer.failures == 2
            cut = [r for r in api.requests if r.verb == "list"]
            assert len(cut) == 3
        finally:
            stop.set()
            informer.stop_watch()
            thread.join(5)


def test_a_watch_that_ends_at_once_is_reopened_with_backoff() -> None:
    """A server that ends every watch at once (timeoutSeconds honoured as 0, a proxy closing
    streams) must not be hammered in a tight loop."""
    with KubeAPIServer(port=0) as api:
        core = client.CoreV1Api(api.api_client())
        core.create_namespaced_pod("default", pod("a"))
        informer = Informer(
            "pods", core.list_pod_for_all_namespaces, pod_from_dict, Calls(), Clock(),
            watch_timeout_s=0,  # the testbed ends such a watch at once, cleanly
        )  # fmt: skip
        stop, thread = run_informer(informer)
        try:
            wait_for(lambda: informer.synced.is_set(), 10, "listed")
            time.sleep(2.0)
            watches = [r for r in api.requests if r.verb == "watch"]
            # backoff 0.5 s doubling: about 3 watches in 2 s, never hundreds
            assert 1 <= len(watches) <= 6, len(watches)
            assert thread.is_alive()
        finally:
            stop.set()
            informer.stop_watch()
            thread.join(5)
        assert not thread.is_alive()


def test_lists_in_pages_and_starts_over_when_the_continue_token_expires() -> None:
    """Against the API double: the informer's list is paged (limit / continue, never without
    a limit); a continue token that expires mid-list (410 Expired: the first page's
    resourceVersion was compacted) makes it list again from the first page, and the cache
    ends up exactly the API's."""
    with KubeAPIServer(port=0, watch_window=20) as api:
        core = client.CoreV1Api(api.api_client())
        for i in range(25):
            core.create_namespaced_pod("default", pod(f"p{i:02d}"))
        calls: list[dict[str, object]] = []

        def list_pods(**kw: object) -> object:
            calls.append(kw)
            resp = core.list_pod_for_all_namespaces(**kw)
            if len(calls) == 1:  # after the first page: enough writes to compact its version
                core.delete_namespaced_pod("p24", "default", grace_period_seconds=0)
                for i in range(25):
                    api.store.create("configmaps", {"metadata": {"name": f"c{i}"}}, "default")
            return resp

        informer = Informer(
            "pods", list_pods, pod_from_dict, Calls(), Clock(), watch_timeout_s=30, page_size=10,
        )  # fmt: skip
        stop, thread = run_informer(informer)
        try:
            wait_for(lambda: informer.synced.is_set(), 10, "listed")
            lists = [c for c in calls if not c.get("watch")]
            assert all(c.get("limit") == 10 for c in lists), lists
            assert [c.get("_continue") is not None for c in lists] == [
                False, True, False, True, True,
            ]  # fmt: skip
            expired = [r for r in api.requests if r.verb == "list" and r.code == 410]
            assert len(expired) == 1
            assert sorted(p.name for p in informer.items()) == [f"p{i:02d}" for i in range(24)]
            core.create_namespaced_pod("default", pod("late"))
            wait_for(lambda: informer.get(("default", "late")) is not None, 10, "watched")
        finally:
            stop.set()
            informer.stop_watch()
            thread.join(5)
