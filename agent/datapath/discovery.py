"""Find network namespaces: netns bind mounts and ``/proc/<pid>/ns/net``, merged by inode."""

from __future__ import annotations

import errno
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import psutil

# kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice
# kubepods/burstable/pod<uid>/<container>
_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
)


@dataclass
class Candidate:
    """A namespace found on the host, with every way to open it."""

    inode: int
    paths: list[str] = field(default_factory=list)  # bind mounts first, then /proc paths
    pids: list[int] = field(default_factory=list)


def pod_uid_from_cgroup(text: str) -> str | None:
    """The pod UID in a ``/proc/<pid>/cgroup`` file (cgroup v1 or v2, cgroupfs or systemd)."""
    if "kubepods" not in text:
        return None
    match = _POD_UID.search(text)
    return match.group(1).replace("_", "-") if match else None


def nsfs_device() -> int:
    """The device number of the nsfs filesystem (namespace files live there)."""
    return os.stat("/proc/thread-self/ns/net").st_dev


def current_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def classify_oserror(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission"
    if exc.errno in (errno.ENOENT, errno.ESRCH, errno.ENOTDIR):
        return "vanished"
    return "error"


def discover(
    proc_root: str,
    netns_dirs: Iterable[str],
    skipped: Counter[str],
) -> dict[int, Candidate]:
    """Every network namespace visible from the host, by inode.

    Nothing is created or mounted: paths are only ``stat``-ed. Files in a netns directory
    that are not namespaces (a leftover unmounted file) and processes that vanish or cannot be
    read are skipped and counted in ``skipped`` by reason.
    """
    nsfs = nsfs_device()
    found: dict[int, Candidate] = {}
    # /var/run is usually a symlink to /run: list each real directory once.
    for directory in dict.fromkeys(os.path.realpath(p) for p in netns_dirs):
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            skipped[classify_oserror(exc)] += 1
            continue
        for entry in entries:
            try:
                st = os.stat(entry.path)
            except OSError as exc:
                skipped[classify_oserror(exc)] += 1
                continue
            if st.st_dev != nsfs:
                skipped["not_a_namespace"] += 1
                continue
            cand = found.setdefault(st.st_ino, Candidate(st.st_ino))
            if entry.path not in cand.paths:
                cand.paths.append(entry.path)
    psutil.PROCFS_PATH = proc_root
    for pid in psutil.pids():
        path = f"{proc_root}/{pid}/ns/net"
        try:
            st = os.stat(path)
        except OSError as exc:
            reason = classify_oserror(exc)
            if reason != "vanished":  # processes come and go all the time: not worth a count
                skipped[f"proc_{reason}"] += 1
            continue
        cand = found.setdefault(st.st_ino, Candidate(st.st_ino))
        cand.pids.append(pid)
        if len(cand.pids) <= 3:  # a few ways in are plenty; a namespace may hold 1000 pids
            cand.paths.append(path)
    return found


def pod_uid(proc_root: str, pids: Iterable[int], tries: int = 3) -> str | None:
    """The pod UID from the cgroup of the namespace's processes (first that tells)."""
    for n, pid in enumerate(pids):
        if n >= tries:
            break
        try:
            with open(f"{proc_root}/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
                uid = pod_uid_from_cgroup(f.read())
        except OSError:
            continue
        if uid:
            return uid
    return None
