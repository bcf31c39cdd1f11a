"""The API server driven raw (many requests in parallel), the agents' processes (RSS, CPU,
metrics) and reading their metrics."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# as the Dockerfile runs the agent
IMAGE_ENV = {"PYTHONOPTIMIZE": "2", "MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072"}


# -- the API, raw ----------------------------------------------------------------------------
class Api:
    """Raw JSON requests as cluster-admin (no client-side models): one client per thread."""

    GROUPS = {
        "core": "CoreV1Api",
        "discovery": "DiscoveryV1Api",
        "coordination": "CoordinationV1Api",
    }

    def __init__(self, cp: Any) -> None:
        self.cp = cp
        self.local = threading.local()

    def core(self, api: str = "core") -> Any:
        apis = getattr(self.local, "apis", None)
        if apis is None:
            from kubernetes import client

            base = self.cp.api_client()
            apis = {k: getattr(client, v)(base) for k, v in self.GROUPS.items()}
            self.local.apis = apis
        return apis[api]

    def call(self, fn: str, *args: Any, api: str = "core", **kw: Any) -> Any:
        resp = getattr(self.core(api), fn)(*args, _preload_content=False, **kw)
        return json.loads(resp.data) if resp.data else None

    def list_pages(
        self, fn: str, limit: int = 500, api: str = "core", **kw: Any
    ) -> Iterator[dict[str, Any]]:
        cont = None
        while True:
            page = self.call(fn, limit=limit, _continue=cont, api=api, **kw)
            yield page
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                return


def run_parallel(
    threads: int, jobs: list[Any], fn: Callable[[Any], None], what: str
) -> tuple[float, int]:
    """Run ``fn`` over ``jobs`` on ``threads`` threads; retries each job 5 times."""
    failures = [0]

    def one(job: Any) -> None:
        for attempt in range(5):
            try:
                fn(job)
                return
            except Exception as exc:
                failures[0] += 1
                if attempt == 4:
                    raise RuntimeError(f"{what}: {exc}") from exc
                time.sleep(0.5 * (attempt + 1))

    t0 = time.monotonic()
    done = 0
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(one, jobs):
            done += 1
            if done % 5000 == 0:
                rate = done / (time.monotonic() - t0)
                print(f"  {what}: {done}/{len(jobs)} ({rate:.0f}/s)", file=sys.stderr)
    return time.monotonic() - t0, failures[0]


# -- processes -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_kib(pid: int, field_name: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


class OutOfMemory(RuntimeError):
    """The machine is running out of memory: the run stops before the kernel's OOM killer
    picks a victim (an agent whose list never fits makes the API server balloon too)."""


def guard_memory(floor: float = 0.1) -> None:
    text = Path("/proc/meminfo").read_text()
    total, available = (
        int(re.search(rf"^{k}:\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
        for k in ("MemTotal", "MemAvailable")
    )
    if available < floor * total:
        raise OutOfMemory(f"only {available // 1024} MiB of {total // 1024} MiB available")


def loadavg() -> str:
    """The machine's load average over 1, 5 and 15 minutes (a shared machine's runs vary)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


@dataclass
class Agent:
    name: str
    argv: list[str]
    cwd: Path
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    peak_kib: int = 0  # VmHWM, polled
    peak_at_s: float = 0.0  # when it last grew, seconds after the start (to the poll)
    started: float = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(IMAGE_ENV)
        env["PYTHONPATH"] = str(self.cwd)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def poll(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"agent {self.name} exited with {self.proc.returncode}:\n{tail}")
        hwm = proc_kib(self.proc.pid, "VmHWM")
        if hwm > self.peak_kib:
            self.peak_kib, self.peak_at_s = hwm, time.monotonic() - self.started
        guard_memory()

    def rss_kib(self) -> int:
        assert self.proc is not None
        return proc_kib(self.proc.pid, "VmRSS")

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def cpu_s(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def requests_by_kind(metrics: str) -> dict[str, float]:
    """``podlb_kube_requests_total`` summed by "verb resource"."""
    out: dict[str, float] = {}
    for m in re.finditer(r"^podlb_kube_requests_total\{([^}]*)\} (\S+)", metrics, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        key = f"{labels.get('verb')} {labels.get('resource')}"
        out[key] = out.get(key, 0.0) + float(m.group(2))
    return out


def is_leader(agent: Agent) -> bool:
    try:
        return bool(re.search(r"^podlb_leader_is_leader 1\.0$", agent.metrics(), re.M))
    except OSError:
        return False


def precompile(agent_dir: Path) -> None:
    """The image compiles its bytecode at build time (``PYTHONOPTIMIZE=2``): so do we, once."""
    site = sysconfig.get_paths()["purelib"]
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-o", "2", str(agent_dir / "agent"), site],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def metric_sum(metrics: str, name: str, **labels: str) -> float:
    total = 0.0
    for m in re.finditer(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)", metrics, re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def histogram_bound(metrics: str, name: str, q: float, **labels: str) -> float | None:
    """The upper bound of the histogram bucket that holds the ``q`` quantile (None: no
    samples, or no such histogram)."""
    buckets = []
    for m in re.finditer(rf"^{name}_bucket\{{([^}}]*)\}} (\S+)", metrics, re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(got.get(k) == v for k, v in labels.items()):
            buckets.append((float(got["le"]), float(m.group(2))))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    return next(le for le, n in buckets if n >= q * buckets[-1][1])
