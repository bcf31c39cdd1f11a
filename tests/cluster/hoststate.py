"""Every piece of host state the cluster creates, and its removal.

The removal is idempotent and derived from fixed names (the state directory, the bridge, chain
prefixes, the kubelet's hard-coded paths), so it runs the same at the end of a run, after a
failed start, and at the start of the next run when an interrupted one left a marker behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

STATE_DIR = Path("/var/lib/podlb-test-cluster")
ETCD_DIR = Path("/dev/shm/podlb-test-etcd")
MARKER = STATE_DIR / "marker.json"
BRIDGE = "podlbk8s0"
# Paths the kubelet and containerd hard-code: created (and removed) only by us.
FIXED_DIRS = (
    Path("/var/lib/kubelet"),
    Path("/var/log/pods"),
    Path("/var/log/containers"),
    Path("/var/lib/cni"),
)
NETNS_DIRS = (Path("/var/run/netns"), Path("/run/netns"))
CHAIN_PREFIXES = ("KUBE-", "CNI-")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_NAME = "kubepods"
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/netfilter/nf_conntrack_max",
    "kernel/panic",
    "kernel/panic_on_oops",
    "vm/overcommit_memory",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)


class HostBusy(RuntimeError):
    """A path the cluster needs is in use by something that is not ours."""


@dataclass
class Marker:
    """What a run recorded before it changed anything: enough to undo it later."""

    pids: list[int] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    created_dirs: list[str] = field(default_factory=list)
    root_was_shared: bool = False
    chains: dict[str, list[str]] = field(default_factory=dict)  # "iptables:nat" -> chains before

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = MARKER.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__))
        tmp.rename(MARKER)

    @classmethod
    def load(cls) -> Marker | None:
        try:
            return cls(**json.loads(MARKER.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def _run(argv: list[str], *, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


def _read_sysctl(name: str) -> str | None:
    try:
        return (Path("/proc/sys") / name).read_text().strip()
    except OSError:
        return None


def _write_sysctl(name: str, value: str) -> None:
    with contextlib.suppress(OSError):
        (Path("/proc/sys") / name).write_text(value)


def root_is_shared() -> bool:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return any(f.startswith("shared:") for f in fields[6 : fields.index("-")])
    return False


def _tables() -> Iterator[tuple[str, str]]:
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("filter", "nat", "mangle"):
            yield tool, table


def _chains(tool: str, table: str) -> list[str]:
    out = _run([tool, "-w", "5", "-t", table, "-S"]).stdout
    return [line.split()[1] for line in out.splitlines() if line.startswith(("-N ", "-P "))]


def snapshot(marker: Marker) -> None:
    """Record, before the first change, what must be put back."""
    marker.root_was_shared = root_is_shared()
    for name in SYSCTLS:
        value = _read_sysctl(name)
        if value is not None:
            marker.sysctls[name] = value
    for tool, table in _tables():
        marker.chains[f"{tool}:{table}"] = _chains(tool, table)
    for d in FIXED_DIRS:
        if d.exists() and any(d.iterdir()):
            raise HostBusy(f"{d} exists and is not empty: another kubelet or a foreign run?")
        if not d.exists():
            marker.created_dirs.append(str(d))


def make_root_shared() -> None:
    """A pod volume with HostToContainer propagation needs "/" shared or slave."""
    if not root_is_shared():
        _run(["mount", "--make-rshared", "/"], check=True)


def _mounts_below(prefixes: Iterable[Path]) -> list[str]:
    roots = [str(p).rstrip("/") for p in prefixes]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == r or point.startswith(r + "/") for r in roots):
            found.append(point)
    return found


def _unmount_below(prefixes: Iterable[Path]) -> None:
    for _ in range(3):
        points = sorted(set(_mounts_below(prefixes)), key=len, reverse=True)
        if not points:
            return
        for point in points:
            _run(["umount", "-l", point])


def _kill_pids(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _pids_where(pred: str) -> list[int]:
    """Processes whose command line mentions ``pred`` (our state dir or socket)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pred in cmdline:
            found.append(int(entry.name))
    return found


def _cgroup_dirs() -> list[Path]:
    dirs: list[Path] = []
    if not CGROUP_ROOT.exists():
        return dirs
    for hierarchy in CGROUP_ROOT.iterdir():
        top = hierarchy / CGROUP_NAME
        if top.is_dir():
            dirs.extend(
                sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            )
            dirs.append(top)
    return dirs


def _cgroup_pids() -> set[int]:
    pids: set[int] = set()
    for d in _cgroup_dirs():
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
    return pids


def stop_processes(marker: Marker | None, *, grace: float = 10.0) -> None:
    """SIGTERM ours (recorded pids, anything naming the state dir), then SIGKILL what is left."""
    recorded = set(marker.pids if marker else [])
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        ours = _pids_where(str(STATE_DIR)) + _pids_where(str(ETCD_DIR))
        targets = (recorded | set(ours) | _cgroup_pids()) - {os.getpid()}
        alive = [p for p in targets if Path(f"/proc/{p}").exists()]
        if not alive:
            return
        _kill_pids(alive, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not any(_alive(p) for p in alive):
                break
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _remove_chains(marker: Marker) -> None:
    for tool, table in _tables():
        before = set(marker.chains.get(f"{tool}:{table}", []))
        ours = [c for c in _chains(tool, table) if c.startswith(CHAIN_PREFIXES) and c not in before]
        if not ours:
            continue
        rules = _run([tool, "-w", "5", "-t", table, "-S"]).stdout.splitlines()
        # Jumps into our chains from chains that are not ours.
        for rule in rules:
            parts = rule.split()
            if parts[:1] != ["-A"] or parts[1] in ours:
                continue
            if any(p in ours for p in parts[2:]):
                _run([tool, "-w", "5", "-t", table, "-D", *parts[1:]])
        for chain in ours:
            _run([tool, "-w", "5", "-t", table, "-F", chain])
        for chain in ours:
            _run([tool, "-w", "5", "-t", table, "-X", chain])


def _remove_netns() -> None:
    for d in NETNS_DIRS:
        if not d.is_dir():
            continue
        for ns in d.glob("cni-*"):
            _run(["umount", "-l", str(ns)])
            with contextlib.suppress(OSError):
                ns.unlink()


def cleanup(marker: Marker | None) -> None:
    """Undo everything a run did; safe to call twice and after a partial start."""
    stop_processes(marker)
    _remove_netns()
    _unmount_below([*FIXED_DIRS, STATE_DIR])
    for d in _cgroup_dirs():
        with contextlib.suppress(OSError):
            d.rmdir()
    _run(["ip", "link", "del", BRIDGE])
    if marker is not None:
        _remove_chains(marker)
        for name, value in marker.sysctls.items():
            if _read_sysctl(name) != value:
                _write_sysctl(name, value)
        for created in marker.created_dirs:
            shutil.rmtree(created, ignore_errors=True)
        if not marker.root_was_shared and root_is_shared():
            _run(["mount", "--make-rprivate", "/"])
    shutil.rmtree(ETCD_DIR, ignore_errors=True)
    shutil.rmtree(STATE_DIR, ignore_errors=True)


def leftovers() -> list[str]:
    """What of ours is still on the host (a test asserts this is empty after teardown)."""
    found = []
    if STATE_DIR.exists():
        found.append(str(STATE_DIR))
    if ETCD_DIR.exists():
        found.append(str(ETCD_DIR))
    if _run(["ip", "link", "show", BRIDGE]).returncode == 0:
        found.append(f"link {BRIDGE}")
    found += [f"mount {m}" for m in _mounts_below([*FIXED_DIRS, STATE_DIR])]
    found += [f"cgroup {d}" for d in _cgroup_dirs()]
    found += [f"netns {ns}" for d in NETNS_DIRS if d.is_dir() for ns in d.glob("cni-*")]
    found += [f"pid {p}" for p in _pids_where(str(STATE_DIR))]
    return found
