"""The proof of the drain: a rolling update under load through HAProxy loses no request with
podlb's gate and hook, and does lose requests without them (so the scenario is sharp)."""

from __future__ import annotations

import pytest

from tests.testbed.rollout import run_scenario

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def test_rolling_update_with_podlb_loses_nothing_and_drains_fast() -> None:
    result = run_scenario("podlb", replicas=6)
    assert result.requests > 1000
    assert result.failed == 0, result.as_dict()
    assert len(result.drain_s) == 6  # every old pod's hook was held, then released
    assert result.drain_p(0.5) is not None and result.drain_p(0.5) < 3.0, result.drain_s
    assert max(result.drain_s) < 10.0  # never the fixed 40 s
    # Every drain ended on its signals (the LB's Deregistered, then quiet), none by a timer,
    # and the LB sent no new connection after it confirmed (the agents' /v1/drains).
    assert result.signal_ended() == (6, 6), result.drains
    assert all(d["deregistered_s"] is not None for d in result.drains), result.drains
    assert sum(d["new_connections"] for d in result.drains) == 0, result.drains
    # Nor did HAProxy end a session abnormally (no failed connect, abort or timeout there).
    assert result.lb_abnormal == []


def test_rolling_update_without_hook_and_gate_fails() -> None:
    result = run_scenario("nohook", replicas=6)
    assert result.requests > 500
    assert result.failed > 0, "the baseline must fail, else the scenario proves nothing"
    # Each failure has a named cause (HAProxy's 503 for a pod already gone, a reset keep-alive
    # connection...): none left unexplained as "other", and no answer from outside the testbed.
    assert set(result.errors()) <= {"5xx", "reset", "refused", "unreachable", "timeout"}, (
        result.errors(),
        result.new_conn.error_events[:5] if result.new_conn else None,
    )
    # HAProxy's side of them: each 503 the clients got is in its log, with the server it picked.
    assert result.lb_abnormal
    assert len(result.lb_abnormal) >= result.errors().get("5xx", 0), result.errors()
    assert all("shop.web.http/" in line for line in result.lb_abnormal), result.lb_abnormal[:3]


def test_exec_hook_variant_loses_nothing() -> None:
    result = run_scenario("exec", replicas=3)
    assert result.failed == 0, result.as_dict()
    assert len(result.drain_s) == 3 and max(result.drain_s) < 10.0, result.drain_s
    assert result.signal_ended() == (3, 3), result.drains


def test_observe_mode_against_the_clb_double_loses_nothing() -> None:
    """TKE direct mode: the cloud's controller registers the pods in the CLB (the API double,
    HAProxy as its data plane); podlb only reads the CLB, through the Tencent SDK. The drain
    ends when the CLB has dropped the pod and the pod went quiet, not after a fixed sleep."""
    result = run_scenario("observe", replicas=3, lb_delay_s=1.0)
    assert result.requests > 500
    assert result.failed == 0, result.as_dict()
    assert len(result.drain_s) == 3, result.drain_s
    # the CLB's deregistration delay (1 s) + the quiet period, not 40 s
    assert max(result.drain_s) < 6.0, result.drain_s
    assert result.signal_ended() == (3, 3), result.drains
