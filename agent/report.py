"""Render an inspector snapshot as the documented JSON document or a readable table.

The JSON schema (``podlb.io/inspect/v1``) is documented in README.md, "inspect JSON schema";
change both together.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Container, Iterable, Mapping, Sequence
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


# Why a namespace or process was skipped: the last line of the table names the reasons.
SKIP_REASONS = {
    "vanished": "gone during the scan",
    "permission": "a netns file that cannot be opened",
    "not_a_namespace": "a file in a netns directory that is not a namespace",
    "error": "a netns file that cannot be read",
    "proc_permission": "a process whose /proc/<pid>/ns/net cannot be read; usually PID 1 of "
    "the container or sandbox inspect runs in, harmless unless pods live under it",
    "proc_error": "a process whose /proc/<pid>/ns/net cannot be read",
    "dump_interrupted": "a netlink dump interrupted more than 5 times",
    "netlink_error": "netlink refused a dump",
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


def format_table(
    header: Sequence[str], rows: Iterable[Sequence[str]], right: Container[int] = ()
) -> str:
    """Columns two spaces apart, each as wide as its widest cell; ``right``: the indexes of
    right-aligned (numeric) columns."""
    body = [tuple(r) for r in rows]
    widths = [len(h) for h in header]
    for row in body:
        widths = [max(w, len(v)) for w, v in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join(line(r) for r in (tuple(header), *body))


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"  # pragma: no cover


def tcp_column(ports: Iterable[int], established: Mapping[int, int], drain_port: int = 0) -> str:
    """``listen 8080(1)``: listening ports with their established connections; podlb's own
    in-pod drain listener (``drain_port``) is named as such."""
    ports = sorted(set(ports))
    if not ports:
        return "-"
    parts = [
        f"{port}({established.get(port, 0)})" + (" podlb-drain" if port == drain_port else "")
        for port in ports
    ]
    return "listen " + ", ".join(parts)


def skipped_line(skipped: Mapping[str, int]) -> str:
    """``skipped: none`` or each reason with its count and what it means."""
    if not skipped:
        return "skipped: none"
    return "skipped: " + "; ".join(
        f"{k}={v} ({SKIP_REASONS[k]})" if k in SKIP_REASONS else f"{k}={v}"
        for k, v in sorted(skipped.items())
    )


def snapshot_table(snap: Snapshot, drain_port: int = 0) -> str:
    """One row per interface (loopback left out), namespace columns on its first row.

    ``POD`` is the pod UID from the cgroup of the namespace's processes, ``-`` without one;
    ``drain_port`` labels podlb's drain listener in the ``TCP`` column."""
    rows: list[tuple[str, ...]] = []
    for ns in snap.namespaces:
        pod = (ns.pod.uid if ns.pod else None) or "-"
        tcp = tcp_column(ns.tcp.listening_ports(), ns.tcp.established, drain_port)
        shown = [i for i in ns.interfaces if i.kind is not LinkKind.LOOPBACK] or list(
            ns.interfaces[:1]
        )
        for n, iface in enumerate(shown):
            ref = iface.peer or iface.parent
            rows.append(
                (
                    ns.path if n == 0 else "",
                    pod if n == 0 else "",
                    iface.name,
                    iface.kind.value + (f"/{iface.mode}" if iface.mode else ""),
                    iface.state,
                    " ".join(iface.addresses) or "-",
                    (ref.name or f"#{ref.ifindex}") if ref else "-",
                    f"{_bytes(iface.stats.rx_bytes)}/{_bytes(iface.stats.tx_bytes)}",
                    tcp if n == 0 else "",
                )
            )
    table = format_table(_COLUMNS, rows)
    summary = f"{len(snap.namespaces)} namespaces in {snap.duration_s * 1000:.1f} ms"
    return f"{table}\n{summary}; {skipped_line(snap.skipped)}"


_DRAIN_COLUMNS = (
    "ENDED",
    "POD",
    "SERVICE",
    "OUTCOME",
    "HELD s",
    "DEREGISTERED s",
    "CONNS DEREG/END",
    "NEW",
    "BYTES",
)


def drains_table(records: Iterable[Mapping[str, Any]]) -> str:
    """``/v1/drains`` records (README, "Drain records") as a table, oldest first. ``HELD``:
    from the deletion (as the node first saw it) to the hook's answer; ``DEREGISTERED``: to the
    LB's confirmation; ``CONNS``: on serving ports then and at the end; ``NEW`` and ``BYTES``:
    connections and bytes received after the LB's confirmation."""

    def cell(value: object, fmt: str = "{}") -> str:
        return "-" if value is None else fmt.format(value)

    rows = [
        (
            str(r["ended_at"]),
            f"{r['namespace']}/{r['pod']}",
            str(r["service"]),
            str(r["outcome"]),
            cell(r["seconds"], "{:.2f}"),
            cell(r["deregistered_s"], "{:.2f}"),
            "-"
            if r["connections_at_deregistered"] is None and r["connections_at_end"] is None
            else f"{cell(r['connections_at_deregistered'])}/{cell(r['connections_at_end'])}",
            cell(r["new_connections"]),
            cell(r["quiet_bytes"]),
        )
        for r in records
    ]
    if not rows:
        return "no drains yet"
    return format_table(_DRAIN_COLUMNS, rows, right={4, 5, 6, 7, 8})
