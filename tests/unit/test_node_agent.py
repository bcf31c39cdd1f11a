"""The node agent's loop: a pod being created gets no False verdict, and a scan that predates a
pod's change does not mark the pod False."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from prometheus_client import CollectorRegistry

from agent.clock import FakeClock
from agent.metrics import Metrics
from agent.model import (
    DATAPATH_READY,
    LB_READY,
    Condition,
    ContainerPort,
    Interface,
    LinkKind,
    ListeningSocket,
    NetnsInfo,
    Pod,
    PodHint,
    PodKey,
    Snapshot,
    TcpState,
)
from agent.node.agent import NodeAgent
from agent.node.reporter import ConditionReporter
from tests.fakes import FakeStatusSink

IP = "10.244.1.7"
KEY = PodKey("shop", "web-1")
STARTING = Pod(
    namespace="shop", name="web-1", uid="u1", node_name="n1", ips=(), phase="Pending",
    readiness_gates=(LB_READY,), ports=(ContainerPort(8080, "http"),),
)  # fmt: skip
READY = replace(
    STARTING,
    ips=(IP,),
    phase="Running",
    conditions=(Condition("ContainersReady", "True"),),
)


def netns() -> NetnsInfo:
    eth0 = Interface("eth0", 2, LinkKind.VETH, None, None, 1500, "up", (f"{IP}/32",))
    return NetnsInfo(
        inode=7, path="/run/netns/p", paths=("/run/netns/p",), pids=(), pod=PodHint(None, (IP,)),
        interfaces=(eth0,), tcp=TcpState((ListeningSocket("0.0.0.0", 8080),)),
    )  # fmt: skip


class Scanner:
    """Returns the namespaces it is given; ``during`` runs inside the scan (after the
    namespaces were read), as a watch event arriving meanwhile."""

    def __init__(self) -> None:
        self.namespaces: tuple[NetnsInfo, ...] = ()
        self.during: Callable[[], None] = lambda: None

    def scan(self) -> Snapshot:
        namespaces = self.namespaces
        self.during()
        self.during = lambda: None
        return Snapshot(namespaces, host_inode=1, started_at=0.0, duration_s=0.1, skipped={})


class Node:
    def __init__(self, pod: Pod) -> None:
        self.pods = {KEY: pod}
        self.scanner = Scanner()
        self.registry = CollectorRegistry()
        sink = FakeStatusSink()
        self.reporter = ConditionReporter(
            DATAPATH_READY, sink, lambda k: self.pods.get(k), FakeClock()
        )
        self.agent = NodeAgent(
            "n1", self.scanner, lambda: list(self.pods.values()), lambda: [],
            self.reporter, Metrics(self.registry), FakeClock(),
        )  # fmt: skip

    def change(self, pod: Pod) -> None:
        self.pods[KEY] = pod
        self.agent.pod_changed(KEY)

    def reason(self) -> str | None:
        desired = self.reporter.desired(KEY)
        return desired.reason if desired else None

    def deferred(self, reason: str) -> float:
        value = self.registry.get_sample_value(
            "podlb_scan_verdicts_deferred_total", {"reason": reason}
        )
        return value or 0.0


def test_a_pod_being_created_gets_no_false_verdict() -> None:
    node = Node(STARTING)
    node.agent.scan_once()
    assert node.reason() is None  # no IP yet: nothing to tell
    node.change(replace(READY, conditions=()))  # an IP, its app not listening yet
    node.scanner.namespaces = (replace(netns(), tcp=TcpState(())),)
    node.agent.scan_once()
    assert node.reason() is None
    node.change(READY)
    node.scanner.namespaces = (netns(),)
    node.agent.scan_once()
    assert node.reason() == "Ready"  # its first condition: the verdict once it is ready


def test_a_pod_with_a_condition_or_one_on_its_way_gets_its_false_verdict() -> None:
    had = replace(STARTING, conditions=(Condition(DATAPATH_READY, "True", "Ready"),))
    node = Node(had)
    node.agent.scan_once()
    assert node.reason() == "NoPodIP"  # it had one: the change is news
    node = Node(READY)
    node.scanner.namespaces = (netns(),)
    node.agent.scan_once()
    assert node.reason() == "Ready"  # queued, not written yet (the pod shows no condition)
    node.change(replace(READY, conditions=(Condition("ContainersReady", "False"),)))
    node.scanner.namespaces = (replace(netns(), tcp=TcpState(())),)
    node.agent.scan_once()
    assert node.reason() == "NotListening"  # not the queued True


def test_a_pod_ready_while_the_scan_ran_is_not_marked_false_by_it() -> None:
    node = Node(STARTING)
    node.agent.scan_once()
    # The pod gets its IP and its app listens while a scan runs that read the namespaces
    # before the pod's namespace was there.
    node.scanner.during = lambda: node.change(READY)
    node.agent.scan_once()
    assert node.reason() is None  # not NamespaceNotFound: that scan predates the pod
    assert node.deferred("NamespaceNotFound") == 1
    node.scanner.namespaces = (netns(),)
    node.agent.scan_once()  # the next scan, which the change woke
    assert node.reason() == "Ready"


def test_a_false_verdict_is_held_for_one_scan_only() -> None:
    node = Node(STARTING)
    node.agent.scan_once()
    node.scanner.during = lambda: node.change(READY)
    node.agent.scan_once()
    node.agent.scan_once()  # began after the change, and still no namespace: the truth
    assert node.reason() == "NamespaceNotFound"
    assert node.deferred("NamespaceNotFound") == 1


def test_a_change_the_scan_does_not_depend_on_does_not_hold_a_false_verdict() -> None:
    node = Node(READY)
    node.scanner.namespaces = (netns(),)
    node.agent.scan_once()
    assert node.reason() == "Ready"
    # The namespace is gone; meanwhile the pod changed, but not its UID, IPs or readiness
    # (another condition, an annotation): the scan's verdict stands.
    node.scanner.namespaces = ()
    annotated = replace(READY, annotations=(("note", "x"),))
    node.scanner.during = lambda: node.change(annotated)
    node.agent.scan_once()
    assert node.reason() == "NamespaceNotFound"
    assert node.deferred("NamespaceNotFound") == 0


def test_a_change_before_the_scan_began_does_not_hold_its_verdict() -> None:
    node = Node(STARTING)
    node.agent.scan_once()
    node.change(READY)  # seen by the next scan, which finds no namespace for it
    node.agent.scan_once()
    assert node.reason() == "NamespaceNotFound"
    assert node.deferred("NamespaceNotFound") == 0


def test_a_pod_being_stopped_gets_no_false_verdict() -> None:
    """Its app stops listening because it is stopped: that is no news worth a write and an
    Event for each pod of a rollout, and the leader does not read it (a stopping pod is a
    draining backend whatever its datapath says)."""
    node = Node(READY)
    node.scanner.namespaces = (netns(),)
    node.agent.scan_once()
    assert node.reason() == "Ready"
    node.change(replace(READY, terminating=True))
    node.scanner.namespaces = (replace(netns(), tcp=TcpState(())),)
    node.agent.scan_once()
    assert node.reason() == "Ready"
