"""The simulated kubelet's start watcher: one thread notices every pod's ready files."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.testbed.starts import StartWatcher


def test_wakes_each_waiter_when_its_files_exist(tmp_path: Path) -> None:
    w = StartWatcher(tmp_path)
    woken: dict[str, float] = {}

    def wait(name: str) -> None:
        assert w.wait([tmp_path / f"{name}-a", tmp_path / f"{name}-b"], [], 5, lambda: False)
        woken[name] = time.monotonic()

    threads = [threading.Thread(target=wait, args=(n,)) for n in ("p1", "p2")]
    for t in threads:
        t.start()
    (tmp_path / "p1-a").touch()
    (tmp_path / "p2-a").touch()
    time.sleep(0.1)
    assert woken == {}  # each waits for all of its files
    (tmp_path / "p2-b").touch()
    threads[1].join(2)
    assert "p2" in woken and "p1" not in woken
    made = time.monotonic()
    (tmp_path / "p1-b").touch()
    threads[0].join(2)
    assert woken["p1"] - made < 0.5
    time.sleep(0.05)
    assert w._thread is None  # no waiter, no thread


def test_an_exited_process_cancelled_or_timed_out_ends_the_wait(tmp_path: Path) -> None:
    w = StartWatcher(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert w.wait([tmp_path / "never"], [proc], 5, lambda: False)
    assert w.wait([tmp_path / "never"], [], 5, lambda: True)
    t0 = time.monotonic()
    assert not w.wait([tmp_path / "never"], [], 0.2, lambda: False)
    assert 0.2 <= time.monotonic() - t0 < 1


def test_files_must_be_in_the_run_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be in"):
        StartWatcher(tmp_path / "run").wait([tmp_path / "x"], [], 1, lambda: False)
