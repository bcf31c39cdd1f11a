"""``podlb-agent inspect``'s table (agent/report.py): aligned columns, the pod column, podlb's
own drain listener named, every skip reason explained."""

from __future__ import annotations

from agent.model import Interface, LinkKind, ListeningSocket, NetnsInfo, PodHint, Snapshot, TcpState
from agent.report import SKIP_REASONS, format_table, skipped_line, snapshot_table, tcp_column


def netns(path: str, pod: PodHint | None, ports: tuple[int, ...] = ()) -> NetnsInfo:
    iface = Interface("eth0", 2, LinkKind.VETH, None, None, 1500, "up", ("10.0.0.1/32",))
    tcp = TcpState(tuple(ListeningSocket("10.0.0.1", p) for p in ports), {8080: 2})
    return NetnsInfo(1, path, (path,), (), pod, (iface,), tcp)


def test_columns_are_two_spaces_apart_and_numbers_right_aligned() -> None:
    out = format_table(("mode", "drain p50 s", "drain p99 s"), [("podlb", "1.24", "10.25")],
                       right={1, 2})  # fmt: skip
    assert out.splitlines() == [
        "mode   drain p50 s  drain p99 s",
        "podlb         1.24        10.25",
    ]


def test_tcp_column_names_podlbs_drain_listener() -> None:
    assert tcp_column([9809, 8080], {8080: 2}, drain_port=9809) == (
        "listen 8080(2), 9809(0) podlb-drain"
    )
    assert tcp_column([9809], {}, drain_port=0) == "listen 9809(0)"  # --drain-port 0: none
    assert tcp_column([], {}) == "-"


def test_pod_column_is_the_uid_or_a_dash() -> None:
    snap = Snapshot(
        (
            netns("/run/netns/a", PodHint("1234-uid", ("10.0.0.1",)), (8080, 9809)),
            netns("/run/netns/b", PodHint(None, ("10.0.0.1",))),  # pod IPs, no pod cgroup
            netns("/run/netns/c", None),  # nothing pod-like at all
        ),
        host_inode=0,
        started_at=0.0,
        duration_s=0.001,
        skipped={"proc_permission": 1},
    )
    rows = snapshot_table(snap, drain_port=9809).splitlines()
    assert rows[1].split()[:2] == ["/run/netns/a", "1234-uid"]
    assert rows[1].endswith("listen 8080(2), 9809(0) podlb-drain")
    assert [r.split()[1] for r in rows[2:4]] == ["-", "-"]
    assert rows[-1].startswith("3 namespaces in 1.0 ms; skipped: proc_permission=1 (a process")
    assert "?" not in "\n".join(rows)


def test_every_skip_reason_is_explained() -> None:
    assert skipped_line({}) == "skipped: none"
    line = skipped_line({"vanished": 2, "proc_permission": 1})
    assert line == (
        f"skipped: proc_permission=1 ({SKIP_REASONS['proc_permission']}); "
        f"vanished=2 ({SKIP_REASONS['vanished']})"
    )
    assert skipped_line({"new_reason": 1}) == "skipped: new_reason=1"
