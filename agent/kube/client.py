"""Build the Kubernetes API client: in-cluster config, a kubeconfig, or host + token.

Every request of the client has a connect and a read timeout (the generated client honours
``_request_timeout`` only as an int or a ``(connect, read)`` tuple and silently ignores a float,
so it is normalized here, and a request without one gets the default), and its connections have
TCP keepalive on: a half-open connection (an API LB failover, a NAT entry dropped) ends in an
error instead of a wait without end.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from urllib3.connection import HTTPConnection

from agent.errors import PermanentError

Timeout = tuple[float, float]  # (connect, read) seconds; read: the longest wait for a byte

# An idle connection is probed after 30 s, every 10 s; three lost probes end it (client-go
# dials with a 30 s keepalive too).
KEEPALIVE = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
]


def as_timeout(value: object, default: Timeout) -> Timeout:
    """``_request_timeout`` as the client honours it: always a (connect, read) pair."""
    if isinstance(value, tuple) and len(value) == 2:
        return (float(value[0]), float(value[1]))
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return (float(value), float(value))
    return default


class _TimedApiClient(client.ApiClient):  # type: ignore[misc]
    """An ``ApiClient`` whose every request has a (connect, read) timeout."""

    def __init__(self, configuration: client.Configuration, timeout: Timeout) -> None:
        super().__init__(configuration)
        self.default_timeout = timeout

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        kwargs["_request_timeout"] = as_timeout(
            kwargs.get("_request_timeout"), self.default_timeout
        )
        return super().request(method, url, *args, **kwargs)


@dataclass(frozen=True, slots=True)
class KubeAccess:
    """How to reach the API server. With nothing set, the in-cluster service account is used."""

    kubeconfig: str | None = None
    context: str | None = None
    host: str | None = None  # with token: an explicit server (tests, the testbed)
    token: str | None = None
    timeout_s: float = 10.0  # connect and read timeout of every request (not watch streams)
    watch_idle_s: float = 90.0  # a watch silent this long (not even a bookmark) is reopened


def api_client(access: KubeAccess) -> client.ApiClient:
    cfg = client.Configuration()
    try:
        if access.host:
            cfg.host = access.host
            if access.token:
                cfg.api_key = {"authorization": access.token}
                cfg.api_key_prefix = {"authorization": "Bearer"}
        elif access.kubeconfig:
            config.load_kube_config(
                config_file=access.kubeconfig, context=access.context, client_configuration=cfg
            )
        else:
            config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException as exc:
        raise PermanentError(f"cannot configure the Kubernetes client: {exc}") from exc
    except OSError as exc:
        raise PermanentError(f"cannot read the kubeconfig {access.kubeconfig}: {exc}") from exc
    cfg.retries = 0  # retries are ours (bounded, classified), not urllib3's
    # Kept connections to the API server (the client's default is 5 per CPU): the watches,
    # the Lease and up to 8 condition writers per role at once; beyond the pool each
    # request would open and drop its own TLS connection.
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize, 32)
    api = _TimedApiClient(cfg, (access.timeout_s, access.timeout_s))
    api.rest_client.pool_manager.connection_pool_kw["socket_options"] = [
        *HTTPConnection.default_socket_options,
        *KEEPALIVE,
    ]
    return api
