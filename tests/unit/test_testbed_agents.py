"""The testbed's agent processes leave nothing behind (tests/testbed/agents.py)."""

from __future__ import annotations

import gc
from pathlib import Path

from tests.testbed.agents import AgentProcess


def test_an_agents_directory_goes_with_it() -> None:
    agent = AgentProcess("http://127.0.0.1:1", "token", "n1")
    where = Path(agent.dir)
    assert (where / "token").read_text() == "token"
    del agent
    gc.collect()
    assert not where.exists()  # 1,259 of them were left in /tmp before
