"""Linux capability checks, so a missing privilege is a clear message and not a traceback."""

from __future__ import annotations

CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21

CAP_NAMES = {CAP_SYS_PTRACE: "CAP_SYS_PTRACE", CAP_SYS_ADMIN: "CAP_SYS_ADMIN"}

# Why each is needed (also in docs/security.md).
INSPECT_CAPS = {
    CAP_SYS_ADMIN: "setns() into pod network namespaces",
}
# Used when held, not required: container runtimes bind-mount every pod sandbox's namespace
# (containerd, CRI-O: /var/run/netns), which CAP_SYS_ADMIN alone opens.
OPTIONAL_CAPS = {
    CAP_SYS_PTRACE: (
        "read /proc/<pid>/ns/net of processes owned by other users; without it namespaces are "
        "found through the bind mounts in the netns directories only, and other users' "
        "processes are skipped (proc_permission)"
    ),
}


def effective_caps(status_path: str = "/proc/self/status") -> int:
    with open(status_path, encoding="ascii") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def missing(required: dict[int, str], caps: int | None = None) -> dict[int, str]:
    """The required capabilities this process lacks (capability -> why it is needed)."""
    have = effective_caps() if caps is None else caps
    return {cap: why for cap, why in required.items() if not have & (1 << cap)}


def describe(missing_caps: dict[int, str]) -> str:
    return "; ".join(f"{CAP_NAMES.get(c, c)} ({why})" for c, why in sorted(missing_caps.items()))
