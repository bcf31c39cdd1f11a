"""Running the pod app (:mod:`tests.testbed.app`) for tests, the simulated kubelet, benches
and the demo: its command line and environment, started on the host or in a pod namespace,
and waiting until it listens.

The app itself stays one self-contained module (the real-cluster tests copy it into an
image), so these helpers live here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.testbed.netns import Pod, socket_in_netns


def app_argv(port: int, name: str, *, delay_ms: int = 0, host: str = "0.0.0.0") -> list[str]:
    """The app's command line: ``-S`` skips ``site`` (the virtualenv's packages and their
    import hooks, which the app does not use: a third of its start-up); ``PYTHONPATH`` (see
    :func:`app_env`) or the working directory finds ``tests``."""
    argv = [sys.executable, "-S", "-m", "tests.testbed.app", "--port", str(port), "--name", name]
    argv += ["--host", host]
    if delay_ms:
        argv += ["--delay-ms", str(delay_ms)]
    return argv


def wait_listening(
    host: str,
    port: int,
    timeout: float = 5.0,
    proc: subprocess.Popen[bytes] | None = None,
    netns: str | None = None,
) -> None:
    """Poll until ``host:port`` accepts a TCP connection (from inside ``netns`` if given)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"app exited with {proc.returncode} before listening")
        try:
            if netns:
                s = socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(0.5)
                with s:
                    s.connect((host, port))
            else:
                socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host}:{port} not listening after {timeout}s") from None
            time.sleep(0.01)


def spawn_local(
    port: int, name: str, *, delay_ms: int = 0, host: str = "127.0.0.1", timeout: float = 5.0
) -> subprocess.Popen[bytes]:
    """Run the app on the host (``127.0.0.1``) and wait until it listens."""
    proc = subprocess.Popen(
        app_argv(port, name, delay_ms=delay_ms, host=host), cwd=repo_root(), env=app_env()
    )
    try:
        wait_listening(host, port, timeout, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def spawn_in_pod(
    pod: Pod, port: int, name: str | None = None, *, delay_ms: int = 0, timeout: float = 5.0
) -> subprocess.Popen[bytes]:
    """Run the app inside a :class:`~tests.testbed.netns.Pod` and wait until it listens on the
    pod IP. The process is also killed when the pool closes."""
    proc = pod.popen(
        app_argv(port, name or pod.name, delay_ms=delay_ms), cwd=repo_root(), env=app_env()
    )
    try:
        wait_listening(pod.ip, port, timeout, proc, netns=pod.name)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def app_env() -> dict[str, str]:
    """The app's environment: ``PYTHONPATH`` finds ``tests``; its bytecode is cached outside
    the tree (``PYTHONPYCACHEPREFIX``) even where ``PYTHONDONTWRITEBYTECODE`` is set, since
    compiling the module again costs each pod about 10 ms of CPU at start."""
    env = dict(os.environ)
    root = repo_root()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    tmp = env.get("TMPDIR") or "/tmp"
    env.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tmp, "podlb-testbed-pycache"))
    return env
