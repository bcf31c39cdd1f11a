"""The kubelet timing facts judge what a run shows: here, the default probe period's."""

from __future__ import annotations

import pytest

from tests.testbed.timeline import Timeline, check_defaults


def timeline(listening: float, ready: float, failed: list[float]) -> Timeline:
    conditions = [(0.1, "PodScheduled=True"), (0.2, "Initialized=True")]
    return Timeline(
        name="defaults", created=0.0, listening=listening,
        events=[*conditions, (ready, "ContainersReady=True"), (ready, "Ready=True")],
        probes=[ready - 0.02, ready + 9.98], probes_fetched=ready + 12.0, failed_probes=failed,
    )  # fmt: skip


def test_ready_soon_after_the_app_listens() -> None:
    check_defaults(timeline(listening=0.6, ready=1.3, failed=[]))


def test_an_app_listening_after_the_first_probe_is_ready_a_period_after_it() -> None:
    # The kubelet's probe at 1.33 s was refused (its Event says 1 s), the app listened at
    # 1.86 s, the ticker's next probe made it ready: the real node did this once.
    check_defaults(timeline(listening=1.86, ready=11.355, failed=[1.0]))


def test_a_late_ready_with_no_refused_probe_is_not_the_fact() -> None:
    # Listening at 0.6 s and ready only 10 s later, no probe failed: no probe at the start.
    with pytest.raises(AssertionError):
        check_defaults(timeline(listening=0.6, ready=10.6, failed=[]))
    # A probe that failed, but long after the app listened, does not explain it either.
    with pytest.raises(AssertionError):
        check_defaults(timeline(listening=0.6, ready=10.6, failed=[5.0]))
