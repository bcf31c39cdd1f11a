"""How the simulated kubelet (:mod:`tests.testbed.node`) notices that a pod's containers
started: each app writes a ready file into the kubelet's run directory once it listens (the
container runtime's start event, in effect), and one thread watches for them for every pod.

One watcher, not one polling thread per starting pod: with 300 pods created at once, 300
threads each looking at their files every 10 ms woke 30,000 times a second in the kubelet's
interpreter, and the API double's request threads, in the same interpreter, waited seconds
for the GIL (pod creates timed out after 10 s). The watcher lists the directory once a tick.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PERIOD = 0.01  # how often the ready files are looked for, seconds
PROC_EVERY = 10  # processes (an app that exited before it listened) every this many ticks


@dataclass(eq=False)
class _Waiter:
    names: frozenset[str]
    procs: Sequence[subprocess.Popen[bytes]]
    cancelled: Callable[[], bool]
    done: threading.Event = field(default_factory=threading.Event)


class StartWatcher:
    """Wakes :meth:`wait` callers when their ready files exist in ``run_dir`` (or one of their
    processes exited, or they are cancelled). Its thread runs only while someone waits."""

    def __init__(self, run_dir: Path, period: float = PERIOD) -> None:
        self.run_dir = run_dir
        self.period = period
        self._cond = threading.Condition()
        self._waiters: list[_Waiter] = []
        self._thread: threading.Thread | None = None

    def wait(
        self,
        files: Sequence[Path],
        procs: Sequence[subprocess.Popen[bytes]],
        timeout: float,
        cancelled: Callable[[], bool],
    ) -> bool:
        """Until every file in ``files`` (all in ``run_dir``) exists, a process in ``procs``
        has exited, ``cancelled()`` is true or ``timeout`` s are over; True unless the
        timeout ended it."""
        if any(f.parent != self.run_dir for f in files):
            raise ValueError(f"ready files must be in {self.run_dir}: {list(files)}")
        w = _Waiter(frozenset(f.name for f in files), procs, cancelled)
        with self._cond:
            self._waiters.append(w)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="starts", daemon=True)
                self._thread.start()
        try:
            return w.done.wait(timeout)
        finally:
            with self._cond:
                if w in self._waiters:
                    self._waiters.remove(w)

    def _loop(self) -> None:
        tick = 0
        while True:
            with self._cond:
                waiters = list(self._waiters)
                if not waiters:
                    self._thread = None
                    return
            try:
                present = set(os.listdir(self.run_dir))
            except FileNotFoundError:
                present = set()
            check_procs = tick % PROC_EVERY == 0
            for w in waiters:
                if (
                    w.names <= present
                    or w.cancelled()
                    or (check_procs and any(p.poll() is not None for p in w.procs))
                ):
                    w.done.set()
            tick += 1
            time.sleep(self.period)
