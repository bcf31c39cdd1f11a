"""The kubelet's handler actions, shared by readiness probes and ``preStop`` hooks.

``httpGet`` (HTTP only: ``host`` or the pod IP, ``port`` by number or name, ``path``,
``httpHeaders``), ``tcpSocket`` (a connect), ``exec``: **the command runs on the host, not in
the container**, with the container's literal env and ``POD_NAME``, ``POD_NAMESPACE``,
``POD_IP``. Each returns normally on success and raises :class:`HandlerFailed` (or
``OSError``) otherwise; ``timeout`` bounds it as the kubelet's ``timeoutSeconds`` does.
"""

from __future__ import annotations

import http.client
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


def http_get(
    action: Obj, pod_ip: str, port_of: PortResolver, default_port: int, timeout: float
) -> int:
    """``httpGet``: the response status (raises :class:`HandlerFailed` from 400 on, as the
    kubelet counts 200-399 as success)."""
    if (action.get("scheme") or "HTTP").upper() != "HTTP":
        raise HandlerFailed(f"only HTTP, not {action.get('scheme')!r}")
    port = port_of(action.get("port", default_port))
    conn = http.client.HTTPConnection(action.get("host") or pod_ip, port, timeout=timeout)
    try:
        headers = {h["name"]: h["value"] for h in action.get("httpHeaders") or []}
        conn.request("GET", action.get("path", "/"), headers=headers)
        resp = conn.getresponse()
        resp.read()
    except http.client.HTTPException as e:
        raise HandlerFailed(f"HTTP: {e!r}") from e
    finally:
        conn.close()
    if resp.status >= 400:
        raise HandlerFailed(f"HTTP {resp.status}")
    return resp.status


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
