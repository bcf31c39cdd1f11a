"""The API server double: its lifecycle, tokens and clients, and what it recorded.

The request path is spread over the modules beside it: :mod:`.transport` (HTTP plumbing),
:mod:`.handler` (one request, start to end), :mod:`.routing` (what a request asks),
:mod:`.auth` (tokens and rules), :mod:`.routes` (one function per verb), :mod:`.lists`
(selectors, paging), :mod:`.watch` (streams), :mod:`.discovery` and :mod:`.faults`.
"""

from __future__ import annotations

import secrets
import threading
from typing import Any

from .auth import Rule
from .faults import Faults
from .handler import Handler
from .routing import RecordedRequest, RequestInfo
from .store import Store
from .transport import HTTPServer


class KubeAPIServer:
    """An in-process Kubernetes API server double for the official client. See README.md."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        watch_window: int = 1000,
        bookmark_interval: float = 1.0,
        endpointslice_controller: bool = True,
        grace_timer: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.bookmark_interval = bookmark_interval
        self.store = Store(watch_window=watch_window, grace_timer=grace_timer)
        self.faults = Faults(self)
        self.requests: list[RecordedRequest] = []
        self.admin_token = "admin-" + secrets.token_hex(8)
        self._tokens: dict[str, tuple[str, list[Rule]]] = {
            self.admin_token: ("system:admin", [Rule({"*"}, {"*"})])
        }
        self._httpd: HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._listener_lock = threading.Lock()
        self._controller: Any = None
        if endpointslice_controller:
            from .controller import EndpointSliceController

            self._controller = EndpointSliceController(self.store)

    # -- lifecycle
    def start(self) -> KubeAPIServer:
        self._stopping = False
        self._start_listener()
        if self._controller is not None:
            self._controller.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        if self._controller is not None:
            self._controller.stop()
        self.store.close()
        self._stop_listener()

    def __enter__(self) -> KubeAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_listener(self) -> None:
        with self._listener_lock:
            if self._httpd is not None:
                return
            httpd = HTTPServer((self.host, self.port), self, Handler)
            self.port = httpd.server_port
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"kubeapi-{self.port}",
                daemon=True,
            )
            self._thread.start()

    def _stop_listener(self) -> None:
        with self._listener_lock:
            httpd, self._httpd = self._httpd, None
            thread, self._thread = self._thread, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        self.store.cut_watches()
        httpd.close_all()
        if thread is not None:
            thread.join(timeout=2)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- auth
    def add_token(self, name: str, rules: list[Rule], user: str | None = None) -> str:
        """Register bearer token ``name`` (the token string is the name). The user is
        ``system:serviceaccount:<ns>:<sa>`` for a name "ns:sa", else namespace "default"."""
        if user is None:
            user = (
                f"system:serviceaccount:{name}"
                if ":" in name
                else f"system:serviceaccount:default:{name}"
            )
        self._tokens[name] = (user, list(rules))
        return name

    def configuration(self, token: str | None = None) -> Any:
        return client_configuration(self.url, token or self.admin_token)

    def api_client(self, token: str | None = None) -> Any:
        from kubernetes import client

        return client.ApiClient(self.configuration(token))

    def authenticate(self, token: str) -> tuple[str, list[Rule]] | None:
        """(user, rules) of a bearer token; None for an unknown one."""
        return self._tokens.get(token)

    def _record(self, info: RequestInfo, code: int) -> None:
        res = info.resource.name if info.resource else info.path
        self.requests.append(
            RecordedRequest(
                info.verb, res, info.subresource, info.namespace, info.name, code, info.user
            )
        )


def client_configuration(url: str, token: str) -> Any:
    """The official client's configuration for ``url`` with bearer ``token``."""
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = url
    cfg.api_key = {"authorization": token}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    return cfg
