"""A real HAProxy for tests: generated config, Runtime API, always cleaned up.

::

    with HAProxy(["be"], server_options="check inter 500ms fall 2 rise 1") as lb:
        lb.add_server("be", "s1", "10.244.0.2", 8080)   # add server + enable health + enable
        lb.runtime("show servers state be")
        http.client.HTTPConnection("127.0.0.1", lb.port)  # the frontend

Backends start empty (no ``server-template``): servers are added at run time with the Runtime
API command ``add server <be>/<srv> <addr>:<port> [options]``, which needs **HAProxy >= 2.4**
(:func:`haproxy_version` / :func:`supports_dynamic_servers`; the tests skip on older ones).

Pitfalls of dynamic servers (checked on 2.6):

* ``default-server`` lines do **not** apply to servers made with ``add server``; the options
  must be repeated on each ``add server`` (:meth:`HAProxy.add_server` appends
  ``server_options`` for this reason; the config also carries them as ``default-server`` so
  static servers would get the same);
* a new server starts in maintenance (``enable server`` is needed) and, with ``check``, with
  health checks off (``enable health``);
* ``del server`` needs the server in maintenance and without sessions;
* :meth:`HAProxy.restart` loses every dynamic server (a fresh process with the same config on
  the same ports) -- use it to test that a provider re-applies its state.

The Runtime API listens on a unix socket (``level admin expose-fd listeners``) in a private temp
dir, and optionally on ``127.0.0.1:<port>`` (``tcp_runtime=True``).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

DEFAULT_SERVER_OPTIONS = "check inter 500ms fall 2 rise 1"
DEFAULT_TIMEOUTS: Mapping[str, str] = {
    "connect": "2s",
    "client": "30s",
    "server": "30s",
    "http-request": "10s",
    "http-keep-alive": "10s",
    "queue": "5s",
    "check": "1s",
}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@functools.cache
def haproxy_version(binary: str = "haproxy") -> tuple[int, int, int] | None:
    """``(major, minor, patch)`` of ``binary -v``, or None when it is missing."""
    path = shutil.which(binary)
    if path is None:
        return None
    out = subprocess.run([path, "-v"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", out)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def supports_dynamic_servers(binary: str = "haproxy") -> bool:
    """True when ``add server`` exists (HAProxy 2.4 and later)."""
    v = haproxy_version(binary)
    return v is not None and v[:2] >= (2, 4)


class HAProxyRuntimeError(RuntimeError):
    """HAProxy refused a Runtime API command."""


class HAProxy:
    """One HAProxy process with a generated config; a context manager.

    ``backends``: backend names (created empty). ``frontends``: backend name -> port on
    127.0.0.1 (0 picks a free port); by default one frontend on ``frontend_port`` sends to the
    first backend. ``mode``: ``http`` or ``tcp``. ``server_options`` go on ``default-server``
    and on every :meth:`add_server`. ``extra_global`` / ``extra_defaults`` /
    ``extra_backend`` add raw config lines. ``env`` is added to HAProxy's environment
    (``MALLOC_PERTURB_`` makes glibc fill freed memory, so a use after free crashes at once).
    """

    def __init__(
        self,
        backends: Sequence[str] = ("be",),
        *,
        frontend_port: int = 0,
        frontends: Mapping[str, int] | None = None,
        mode: str = "http",
        balance: str = "roundrobin",
        server_options: str = DEFAULT_SERVER_OPTIONS,
        health_check: str | None = "option httpchk GET /healthz",
        timeouts: Mapping[str, str] | None = None,
        tcp_runtime: bool = False,
        runtime_port: int = 0,
        extra_global: Sequence[str] = (),
        extra_defaults: Sequence[str] = (),
        extra_backend: Sequence[str] = (),
        binary: str = "haproxy",
        start_timeout: float = 5.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not backends:
            raise ValueError("at least one backend")
        self.binary = shutil.which(binary) or binary
        self.backends = list(backends)
        fronts = dict(frontends) if frontends is not None else {self.backends[0]: frontend_port}
        for be in fronts:
            if be not in self.backends:
                raise ValueError(f"frontend for unknown backend {be!r}")
        # Ports are fixed once, so restart() binds the same ones.
        self.ports: dict[str, int] = {be: p or free_port() for be, p in fronts.items()}
        self.mode = mode
        self.balance = balance
        self.server_options = server_options
        self.health_check = health_check if mode == "http" else None
        self.timeouts = {**DEFAULT_TIMEOUTS, **(timeouts or {})}
        self.runtime_port: int | None = (runtime_port or free_port()) if tcp_runtime else None
        self.extra_global = list(extra_global)
        self.extra_defaults = list(extra_defaults)
        self.extra_backend = list(extra_backend)
        self.start_timeout = start_timeout
        self.env = {**os.environ, **env} if env else None
        self._tmp = Path(tempfile.mkdtemp(prefix="podlb-haproxy-"))
        self.socket_path = str(self._tmp / "admin.sock")
        self.config_path = self._tmp / "haproxy.cfg"
        self.log_path = self._tmp / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: io.BufferedWriter | None = None
        self.config_path.write_text(self.config())

    # -- config -------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """Port of the first frontend."""
        return next(iter(self.ports.values()))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def runtime_addr(self) -> tuple[str, int] | None:
        return ("127.0.0.1", self.runtime_port) if self.runtime_port else None

    def config(self) -> str:
        g = [
            "global",
            f"    stats socket {self.socket_path} mode 600 level admin expose-fd listeners",
        ]
        if self.runtime_port:
            g.append(f"    stats socket ipv4@127.0.0.1:{self.runtime_port} level admin")
        g += ["    stats timeout 30s", *(f"    {x}" for x in self.extra_global)]
        d = ["defaults", f"    mode {self.mode}", "    option dontlognull"]
        d += [f"    timeout {k} {v}" for k, v in self.timeouts.items()]
        d += [f"    {x}" for x in self.extra_defaults]
        parts = ["\n".join(g), "\n".join(d)]
        for be, port in self.ports.items():
            parts.append(
                "\n".join(
                    [f"frontend fe_{be}", f"    bind 127.0.0.1:{port}", f"    default_backend {be}"]
                )
            )
        for be in self.backends:
            b = [f"backend {be}", f"    balance {self.balance}"]
            if self.health_check:
                b.append(f"    {self.health_check}")
            if self.server_options:
                b.append(f"    default-server {self.server_options}")
            b += [f"    {x}" for x in self.extra_backend]
            parts.append("\n".join(b))
        return "\n\n".join(parts) + "\n"

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> HAProxy:
        if self.proc is not None:
            raise RuntimeError("already running")
        check = subprocess.run(
            [self.binary, "-c", "-q", "-f", str(self.config_path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0:
            raise RuntimeError(f"haproxy config invalid:\n{check.stderr}\n{self.config()}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        # -db: stay in the foreground, no daemon, no master; we own the process.
        self.proc = subprocess.Popen(
            [self.binary, "-db", "-f", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                if "Pid:" in self.runtime("show info", timeout=1.0):
                    for port in self.ports.values():
                        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"haproxy not ready in {self.start_timeout}s: {self.log()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """Hard stop (SIGTERM, SIGKILL after ``timeout``); safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """Stop and start again: same config, same ports; dynamic servers are lost."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> HAProxy:
        if self.proc is None:
            try:
                self.start()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Runtime API --------------------------------------------------------------------
    def runtime(self, cmd: str, *, timeout: float = 5.0, tcp: bool = False) -> str:
        """Send one command (non-interactive mode) and return the whole answer."""
        if tcp:
            if not self.runtime_port:
                raise ValueError("no TCP runtime socket (tcp_runtime=False)")
            sock = socket.create_connection(("127.0.0.1", self.runtime_port), timeout=timeout)
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self.socket_path)
            except OSError:
                sock.close()
                raise
        with sock:
            sock.sendall(cmd.encode() + b"\n")
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
        return b"".join(chunks).decode(errors="replace")

    def runtime_ok(self, cmd: str, **kw: object) -> str:
        """:meth:`runtime`, raising :class:`HAProxyRuntimeError` on an error answer."""
        out = self.runtime(cmd, **kw)  # type: ignore[arg-type]
        low = out.lower()
        if any(w in low for w in ("unknown", "error", "can't", "cannot", "not found", "denied")):
            raise HAProxyRuntimeError(f"{cmd!r}: {out.strip()}")
        return out

    def add_server(
        self,
        backend: str,
        name: str,
        addr: str,
        port: int,
        options: str | None = None,
        *,
        enable: bool = True,
    ) -> None:
        """``add server`` with ``server_options`` (or ``options``), then enable health/server."""
        opts = self.server_options if options is None else options
        out = self.runtime(f"add server {backend}/{name} {addr}:{port} {opts}".strip())
        if "New server registered" not in out:
            raise HAProxyRuntimeError(f"add server {backend}/{name}: {out.strip()}")
        if " check" in f" {opts}":
            self.runtime_ok(f"enable health {backend}/{name}")
        if enable:
            self.runtime_ok(f"enable server {backend}/{name}")

    def del_server(self, backend: str, name: str) -> None:
        """Maintenance, kill its sessions, then ``del server``."""
        self.runtime_ok(f"disable server {backend}/{name}")
        self.runtime(f"shutdown sessions server {backend}/{name}")
        out = self.runtime(f"del server {backend}/{name}")
        if "Server deleted" not in out:
            raise HAProxyRuntimeError(f"del server {backend}/{name}: {out.strip()}")

    def stats(self) -> list[dict[str, str]]:
        """``show stat`` as dicts (``pxname``, ``svname``, ``status``, ``scur``, ...)."""
        out = self.runtime("show stat")
        text = out.lstrip("# ")
        return [dict(row) for row in csv.DictReader(io.StringIO(text)) if row.get("pxname")]

    def servers(self, backend: str) -> dict[str, dict[str, str]]:
        """Server name -> its ``show stat`` row for one backend (no FRONTEND/BACKEND rows)."""
        return {
            r["svname"]: r
            for r in self.stats()
            if r["pxname"] == backend and r["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_status(self, backend: str, name: str, want: str = "UP", timeout: float = 10.0) -> str:
        """Wait until the server's ``show stat`` status is exactly ``want`` (``UP``, ``DOWN``,
        ``MAINT``, ``DRAIN``, ``no check``; ``UP 1/2`` means UP but failing, so it does not
        count as ``UP``); return it."""
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = self.servers(backend).get(name, {}).get("status", "")
            if status == want:
                return status
            time.sleep(0.05)
        raise TimeoutError(f"{backend}/{name} status {status!r}, wanted {want!r}")
