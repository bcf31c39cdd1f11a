"""Fixtures of the real-cluster tier: the cluster, HAProxy on the node, podlb as deployed.

The tier needs root, the Kubernetes binaries (``assets.py``) and the Debian packages the
Makefile installs. Without the binaries it says so in one loud line and skips only this tier,
unless ``PODLB_REQUIRE_CLUSTER=1`` (``make e2e-cluster``), which fails instead.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator

import pytest

from tests.cluster import hoststate
from tests.cluster.assets import AssetsMissing, k8s_assets
from tests.cluster.cluster import Cluster
from tests.cluster.images import agent_image, app_image, have_builders, pause_image
from tests.cluster.podlb import NodeLB, Podlb, node_haproxy

_REASON: list[str] = []


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        k8s_assets()
    except AssetsMissing as e:
        return str(e)
    missing = have_builders() + [
        t for t in ("etcd", "containerd", "runc", "haproxy", "iptables") if shutil.which(t) is None
    ]
    if missing:
        return f"missing tools: {', '.join(missing)} (make sysdeps installs them)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [i for i in items if "tests/cluster/" in str(i.path)]
    if not ours:
        return
    reason = _unavailable()
    if reason is None:
        return
    if os.environ.get("PODLB_REQUIRE_CLUSTER") == "1":
        raise pytest.UsageError(f"real-cluster tier required but unavailable: {reason}")
    _REASON.append(reason)
    skip = pytest.mark.skip(reason=f"real-cluster tier unavailable: {reason}")
    for item in ours:
        item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for reason in _REASON:
        terminalreporter.write_line(
            f"!!! REAL-CLUSTER TIER SKIPPED: {reason} !!!", red=True, bold=True
        )


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    started = time.monotonic()
    images = (pause_image(), agent_image(), app_image())
    built = time.monotonic() - started
    c = Cluster()
    c.start(images=images)
    print(f"\ncluster: images ready in {built:.1f} s, cluster up in {c.up_seconds:.1f} s",
          file=sys.stderr)  # fmt: skip
    try:
        yield c
    finally:
        c.stop()
        left = hoststate.leftovers()
        assert not left, f"host state left behind: {left}"


@pytest.fixture(scope="package")
def lb(cluster: Cluster) -> Iterator[NodeLB]:
    del cluster  # HAProxy reaches pod IPs on the cluster's bridge
    with node_haproxy() as node_lb:
        yield node_lb


@pytest.fixture(scope="package")
def deployment(cluster: Cluster, lb: NodeLB) -> Iterator[Podlb]:
    del lb
    deployed = Podlb(cluster)
    try:
        yield deployed
    finally:
        deployed.uninstall()


@pytest.fixture(scope="module")
def podlb(deployment: Podlb) -> Podlb:
    """The default install, in place when a module starts (one may replace it: the split)."""
    deployment.install()
    return deployment
