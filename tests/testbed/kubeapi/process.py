"""The API server double in a process of its own (``python -m tests.testbed.kubeapi``), as a
real API server runs beside its kubelets and controllers, not in their interpreter.

Scale runs need it: in one interpreter with the simulated kubelet of 300 pods (two threads a
pod, a readiness probe a second each), the double's request threads waited for the GIL
behind the kubelet's, and requests timed out. Tests that reach into the double (its store,
its faults) use :class:`~.server.KubeAPIServer` in-process instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import subprocess
import sys
from pathlib import Path
from typing import Any

from .auth import Rule
from .server import client_configuration

ROOT = Path(__file__).resolve().parents[3]


class KubeAPIProcess:
    """Starts the double with a token per entry of ``tokens`` (name -> rules) and stops it on
    exit; ``url``, ``admin_token``, ``configuration()`` and ``api_client()`` as the in-process
    one's."""

    def __init__(
        self, tokens: dict[str, list[Rule]] | None = None, startup_s: float = 30.0
    ) -> None:
        self.tokens = dict(tokens or {})
        self.startup_s = startup_s
        self.url = ""
        self.admin_token = ""
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> KubeAPIProcess:
        argv = [sys.executable, "-m", "tests.testbed.kubeapi", "--listen", "127.0.0.1:0"]
        for name, rules in self.tokens.items():
            argv += ["--token-rules", f"{name}={json.dumps([_rule_json(r) for r in rules])}"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        line = ""
        try:
            line = _readline(self._proc, self.startup_s)
            first = json.loads(line)
            self.url, self.admin_token = first["url"], first["admin_token"]
        except (ValueError, KeyError) as e:
            self.stop()
            raise RuntimeError(f"the API double did not start: {line!r}") from e
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        stop_process(proc, 10)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> KubeAPIProcess:
        return self.start()  # a start that fails stops the process itself

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def configuration(self, token: str | None = None) -> Any:
        return client_configuration(self.url, token or self.admin_token)

    def api_client(self, token: str | None = None) -> Any:
        from kubernetes import client

        return client.ApiClient(self.configuration(token))


def stop_process(proc: subprocess.Popen[Any], wait_s: float) -> None:
    """SIGTERM, and SIGKILL after ``wait_s`` seconds if it is still there."""
    proc.terminate()
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _rule_json(r: Rule) -> dict[str, Any]:
    return {k: None if v is None else sorted(v) for k, v in dataclasses.asdict(r).items()}


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    """The process's first line of output, or "" if it exits or stays silent for ``timeout``."""
    if proc.stdout is None:
        return ""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return proc.stdout.readline()
