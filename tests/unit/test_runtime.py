"""``agent.runtime.run``: what is in place before the first worker starts."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest

from agent import runtime
from tests.unit.test_settings import parse


class Built(Exception):
    """Raised by the patched builder once it has seen what it came for."""


@pytest.fixture
def saved_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.mark.parametrize(("role", "builder"), [("all", "build_node"), ("leader", "build_leader")])
def test_stop_signals_are_handled_before_any_worker_starts(
    role: str, builder: str, monkeypatch: pytest.MonkeyPatch, saved_handlers: None
) -> None:
    # CI once sent SIGTERM right after /readyz answered and the agent died of it (-15): the
    # node API was serving before the handlers were installed.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    seen: list[Any] = []

    def build(*args: object, **kwargs: object) -> None:
        seen.append(signal.getsignal(signal.SIGTERM))
        raise Built

    monkeypatch.setattr(runtime, builder, build)
    with pytest.raises(Built):
        runtime.run(parse(["--role", role]))
    assert len(seen) == 1 and callable(seen[0]), seen
