"""Run ``podlb-agent run`` as real processes against the API double (one per simulated node)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AgentProcess:
    """One agent process. Logs go to a file (``log_text()``); always stopped by the owner. Its
    directory (token, log) is removed once the object is gone, or at the interpreter's exit."""

    def __init__(
        self,
        api_url: str,
        token: str,
        node: str,
        *,
        identity: str | None = None,
        namespace: str = "podlb-system",
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.node = node
        self.identity = identity or f"agent-{node}"
        self.port = port or free_port()  # a restarted agent may take its predecessor's
        self.dir = tempfile.mkdtemp(prefix="podlb-agent-")
        # Its token and log go when the object does (or at exit): the log is read after stop().
        weakref.finalize(self, shutil.rmtree, self.dir, ignore_errors=True)
        token_file = Path(self.dir, "token")
        token_file.write_text(token)
        self.log_path = Path(self.dir, "agent.log")
        self.argv = [
            sys.executable, "-m", "agent", "run",
            "--node-name", node,
            "--namespace", namespace,
            "--identity", self.identity,
            "--kube-server", api_url,
            "--kube-token-file", str(token_file),
            "--listen", f"127.0.0.1:{self.port}",
            "--scan-interval", "0.5",
            "--log-level", "debug",
            *extra,
        ]  # fmt: skip
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AgentProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env
        )
        return self

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get_json(self, path: str) -> Any:
        code, body = self.get(path)
        assert code == 200, (code, body)
        return json.loads(body)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.log_text()}")
            with contextlib.suppress(OSError):
                if self.get("/readyz", timeout=0.5)[0] == 200:
                    return
            time.sleep(0.05)
        raise AssertionError(f"agent on {self.node} not ready in {timeout}s:\n{self.log_text()}")

    def log_text(self, tail: int | None = 8000) -> str:
        """The agent's log: its last ``tail`` characters (for a failure's message), or all of
        it (``tail=None``: to look for a line, which a debug log pushes out of any tail)."""
        try:
            text = self.log_path.read_text(errors="replace")
            return text if tail is None else text[-tail:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not stop in ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@contextlib.contextmanager
def agents(
    api_url: str, token: str, nodes: Sequence[str], **kw: Any
) -> Iterator[list[AgentProcess]]:
    procs = [AgentProcess(api_url, token, n, **kw) for n in nodes]
    try:
        for p in procs:
            p.start()
        yield procs
    finally:
        for p in procs:
            p.stop()


def leaders(procs: Sequence[AgentProcess]) -> list[AgentProcess]:
    """The running agents whose /metrics say they lead (at most one, if election works)."""
    out = []
    for p in procs:
        if p.proc is None or p.proc.poll() is not None:
            continue
        try:
            if "\npodlb_leader_is_leader 1.0" in p.get("/metrics", timeout=1)[1].decode():
                out.append(p)
        except OSError:
            continue
    return out
