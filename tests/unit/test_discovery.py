from __future__ import annotations

import pytest

from agent.datapath.discovery import pod_uid_from_cgroup

UID = "3f1c2a9e-6b1d-4c55-9d2e-0a1b2c3d4e5f"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # cgroup v2, systemd driver
        (
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
            + UID.replace("-", "_")
            + ".slice/cri-containerd-abc.scope\n",
            UID,
        ),
        # cgroup v1, cgroupfs driver
        (
            f"12:memory:/kubepods/besteffort/pod{UID}/0123abcd\n11:cpu:/kubepods/besteffort/pod{UID}\n",
            UID,
        ),
        # guaranteed QoS has no class directory
        (f"0::/kubepods/pod{UID}/deadbeef\n", UID),
        ("0::/system.slice/containerd.service\n", None),
        ("0::/user.slice/pod-not-a-uid\n", None),
        ("", None),
    ],
)
def test_pod_uid_from_cgroup(text: str, expected: str | None) -> None:
    assert pod_uid_from_cgroup(text) == expected
