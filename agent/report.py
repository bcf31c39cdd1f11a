"""Render an inspector snapshot as the documented JSON document or a readable table.

The JSON schema (``podlb.io/inspect/v1``) is documented in README.md, "inspect JSON schema";
change both together.
"""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

from agent.model import Interface, LinkKind, NetnsInfo, Snapshot

SCHEMA = "podlb.io/inspect/v1"


def interface_json(iface: Interface) -> dict[str, Any]:
    return {
        "name": iface.name,
        "ifindex": iface.ifindex,
        "kind": iface.kind.value,
        "mode": iface.mode,
        "mac": iface.mac,
        "mtu": iface.mtu,
        "state": iface.state,
        "addresses": list(iface.addresses),
        "peer": dataclasses.asdict(iface.peer) if iface.peer else None,
        "parent": dataclasses.asdict(iface.parent) if iface.parent else None,
        "stats": dataclasses.asdict(iface.stats),
    }


def namespace_json(ns: NetnsInfo) -> dict[str, Any]:
    return {
        "inode": ns.inode,
        "path": ns.path,
        "paths": list(ns.paths),
        "pids": list(ns.pids),
        "pod": {"uid": ns.pod.uid, "ips": list(ns.pod.ips)} if ns.pod else None,
        "interfaces": [interface_json(i) for i in ns.interfaces],
        "tcp": {
            "listening": [{"address": s.address, "port": s.port} for s in ns.tcp.listening],
            "established": {str(port): n for port, n in ns.tcp.established.items()},
            "outbound": ns.tcp.outbound,
        },
    }


def snapshot_json(snap: Snapshot) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "host": {"hostname": socket.gethostname(), "netns_inode": snap.host_inode},
        "scanned_at": snap.started_at,
        "duration_ms": round(snap.duration_s * 1000, 3),
        "skipped": dict(sorted(snap.skipped.items())),
        "namespaces": [namespace_json(ns) for ns in snap.namespaces],
    }


_COLUMNS = (
    "NAMESPACE",
    "POD",
    "IFACE",
    "KIND",
    "STATE",
    "ADDRESSES",
    "PEER/PARENT",
    "RX/TX",
    "TCP",
)


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"  # pragma: no cover


def _tcp(ns: NetnsInfo) -> str:
    if not ns.tcp.listening:
        return "-"
    parts = []
    for port in sorted(ns.tcp.listening_ports()):
        parts.append(f"{port}({ns.tcp.established.get(port, 0)})")
    return "listen " + ",".join(parts)


def snapshot_table(snap: Snapshot) -> str:
    """One row per interface (loopback left out), namespace columns on its first row."""
    rows: list[tuple[str, ...]] = []
    for ns in snap.namespaces:
        label = ns.path
        pod = (ns.pod.uid or "?") if ns.pod else "-"
        first = True
        shown = [i for i in ns.interfaces if i.kind is not LinkKind.LOOPBACK] or list(
            ns.interfaces[:1]
        )
        for iface in shown:
            ref = iface.peer or iface.parent
            rows.append(
                (
                    label if first else "",
                    pod if first else "",
                    iface.name,
                    iface.kind.value + (f"/{iface.mode}" if iface.mode else ""),
                    iface.state,
                    " ".join(iface.addresses) or "-",
                    (ref.name or f"#{ref.ifindex}") if ref else "-",
                    f"{_bytes(iface.stats.rx_bytes)}/{_bytes(iface.stats.tx_bytes)}",
                    _tcp(ns) if first else "",
                )
            )
            first = False
    widths = [len(c) for c in _COLUMNS]
    for row in rows:
        widths = [max(w, len(v)) for w, v in zip(widths, row, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(_COLUMNS, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    skipped = ", ".join(f"{k}={v}" for k, v in sorted(snap.skipped.items())) or "none"
    lines.append(
        f"{len(snap.namespaces)} namespaces in {snap.duration_s * 1000:.1f} ms; skipped: {skipped}"
    )
    return "\n".join(lines)
