"""The kubelet's handler actions, shared by readiness probes and ``preStop`` hooks.

``httpGet`` (HTTP only: ``host`` or the pod IP, ``port`` by number or name, ``path``,
``httpHeaders``), ``tcpSocket`` (a connect), ``exec``: **the command runs on the host, not in
the container**, with the container's literal env and ``POD_NAME``, ``POD_NAMESPACE``,
``POD_IP``. Each returns normally on success and raises :class:`HandlerFailed` (or
``OSError``) otherwise; ``timeout`` bounds it as the kubelet's ``timeoutSeconds`` does.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

Obj = dict[str, Any]
PortResolver = Callable[[int | str], int]


class HandlerFailed(Exception):
    """The action ran and failed (an HTTP status >= 400, a non-zero exit, a timeout)."""


MAX_RESPONSE = 10 * 1024  # the kubelet reads at most 10 KiB of a probe's answer


def http_get(
    action: Obj, pod_ip: str, port_of: PortResolver, default_port: int, timeout: float
) -> int:
    """``httpGet``: the response status (raises :class:`HandlerFailed` from 400 on, as the
    kubelet counts 200-399 as success). One request with ``Connection: close`` on a plain
    socket, its status line parsed and the rest read to the end: ``http.client`` (a name
    lookup, the email package's header parser) cost 1-2 ms a probe, and 300 pods probed every
    second took most of the simulated kubelet's interpreter."""
    if (action.get("scheme") or "HTTP").upper() != "HTTP":
        raise HandlerFailed(f"only HTTP, not {action.get('scheme')!r}")
    port = port_of(action.get("port", default_port))
    host = action.get("host") or pod_ip
    lines = [f"GET {action.get('path') or '/'} HTTP/1.1", f"Host: {_host_port(host, port)}",
             "User-Agent: kube-probe/1.28", "Accept: */*", "Connection: close"]  # fmt: skip
    lines += [f"{h['name']}: {h['value']}" for h in action.get("httpHeaders") or []]
    answer = b""
    with _connect(host, port, timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        while len(answer) < MAX_RESPONSE and (chunk := sock.recv(MAX_RESPONSE)):
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0].split(None, 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
        raise HandlerFailed(f"HTTP: no valid status line in {answer[:40]!r}")
    try:
        status = int(status_line[1])
    except ValueError:
        raise HandlerFailed(f"HTTP: bad status {status_line[1]!r}") from None
    if status >= 400:
        raise HandlerFailed(f"HTTP {status}")
    return status


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    """A connected socket; an IP address is not looked up."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.create_connection((host, port), timeout)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def tcp_socket(action: Obj, pod_ip: str, port_of: PortResolver, timeout: float) -> None:
    socket.create_connection(
        (action.get("host") or pod_ip, port_of(action["port"])), timeout
    ).close()


def exec_command(action: Obj, env: Mapping[str, str], timeout: float) -> None:
    """Run ``action["command"]`` on the host in its own session; killed on timeout."""
    full = dict(os.environ)
    full.update(env)
    proc = subprocess.Popen(action["command"], env=full, start_new_session=True)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise HandlerFailed("timed out") from None
    if code != 0:
        raise HandlerFailed(f"exit {code}")
