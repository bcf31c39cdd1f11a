"""The scale benchmarks' ControlPlane runs beside a node Cluster: no fixed port of its own."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.cluster import cluster


def test_the_controller_manager_binds_a_free_port_not_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster, "k8s_assets", lambda: tmp_path)
    spawned: dict[str, list[str]] = {}
    cp = cluster.ControlPlane()
    try:
        monkeypatch.setattr(cp, "_spawn", lambda name, argv, env=None: spawned.update({name: argv}))
        monkeypatch.setattr(cp, "_component_kubeconfig", lambda *a: tmp_path / "kubeconfig")
        cp.pki = SimpleNamespace(ca=tmp_path / "ca.crt", ca_key=tmp_path / "ca.key")  # type: ignore[assignment]
        cp.sa_key = tmp_path / "sa.key"
        cp._controller_manager()
    finally:
        cp.stop()
    ports = [
        a.split("=", 1)[1]
        for a in spawned["kube-controller-manager"]
        if a.startswith("--secure-port=")
    ]
    assert len(ports) == 1 and ports[0] != "10257"
    with socket.socket() as s:  # free when chosen (nothing else holds it)
        s.bind(("127.0.0.1", int(ports[0])))
