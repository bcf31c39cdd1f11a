"""The HTTP front end: routing, authentication/authorization, watches, fault injection."""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import secrets
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

from .errors import ApiError, bad_request, status_body
from .patches import json_patch, merge_patch, strategic_merge_patch
from .resources import BY_GV, GROUPS, RESOURCES, Resource
from .selectors import parse_field_selector, parse_label_selector
from .store import RETURN_DELETED, Expired, Obj, Store, Watcher

NAMESPACE_SUBRESOURCES = {"status", "finalize"}
NON_RESOURCE_OK = {"/healthz", "/livez", "/readyz"}


@dataclass
class Rule:
    """An RBAC-like rule. ``None`` namespaces = all namespaces and cluster scope; ``None``
    api_groups = any group. Resources may name subresources ("pods/status"); "*" matches all."""

    verbs: Collection[str]
    resources: Collection[str]
    namespaces: Collection[str] | None = None
    api_groups: Collection[str] | None = None

    def allows(self, info: RequestInfo) -> bool:
        if "*" not in self.verbs and info.verb not in self.verbs:
            return False
        res = info.resource.name if info.resource else ""
        full = f"{res}/{info.subresource}" if info.subresource else res
        if "*" not in self.resources and full not in self.resources:
            return False
        group = info.resource.group if info.resource else ""
        if (
            self.api_groups is not None
            and "*" not in self.api_groups
            and (group not in self.api_groups)
        ):
            return False
        return self.namespaces is None or bool(info.namespace and info.namespace in self.namespaces)


class RecordedRequest(NamedTuple):
    verb: str
    resource: str
    subresource: str | None
    namespace: str | None
    name: str | None
    code: int
    user: str = ""  # who made it ("" when unauthenticated)


@dataclass
class RequestInfo:
    method: str
    path: str
    query: dict[str, str]
    verb: str = ""
    resource: Resource | None = None
    subresource: str | None = None
    namespace: str | None = None
    name: str | None = None
    discovery: Any = None  # a non-resource document to serve
    user: str = ""  # set once the bearer token is known


@dataclass
class _Error:
    code: int
    retry_after: int | None
    count: int | None
    match: Callable[[RequestInfo], bool] | None
    message: str | None


class Faults:
    """Fault injection for an API server."""

    def __init__(self, api: KubeAPIServer) -> None:
        self._api = api
        self._lock = threading.Lock()
        self._error: _Error | None = None
        self._latency = 0.0
        self._frozen_until = 0.0
        self.refused = False
        self._cut_lists: tuple[int, Callable[[RequestInfo], bool] | None] = (0, None)
        self._blackhole: Callable[[RequestInfo], bool] | None = None
        self._dead: set[int] = set()  # connections that never answer again
        self._streams: dict[int, RequestInfo] = {}  # open watch streams by connection

    def refuse(self) -> None:
        """Close the listening socket (and open connections): clients get ECONNREFUSED."""
        self.refused = True
        self._api._stop_listener()

    def accept(self) -> None:
        """Listen again on the same port."""
        if self.refused:
            self._api._start_listener()
            self.refused = False

    def set_error(
        self,
        code: int = 500,
        retry_after: int | None = 1,
        count: int | None = None,
        match: Callable[[RequestInfo], bool] | None = None,
        message: str | None = None,
    ) -> None:
        """Answer matching requests with ``code`` and a Status body (``count`` times, or until
        cleared). ``match(info)`` gets a RequestInfo (verb, resource, namespace, name...)."""
        with self._lock:
            self._error = _Error(code, retry_after, count, match, message)

    def set_latency(self, seconds: float) -> None:
        self._latency = seconds

    def cut_watches(self) -> int:
        """Abruptly close every open watch stream; returns how many were cut."""
        return self._api.store.cut_watches()

    def freeze(self, seconds: float) -> None:
        """Accept connections but answer nothing (watches go silent too) for ``seconds``."""
        self._frozen_until = time.monotonic() + seconds

    def cut_lists(self, count: int = 1, match: Callable[[RequestInfo], bool] | None = None) -> None:
        """Drop the connection half-way through the body of the next ``count`` matching list
        answers (headers and Content-Length sent in full: the client reads a short body)."""
        with self._lock:
            self._cut_lists = (count, match)

    def blackhole(self, match: Callable[[RequestInfo], bool] | None = None) -> None:
        """Half-open connections: matching requests are read and never answered, and the
        connections they arrive on (watch streams open now too) stay silent for good, even
        after :meth:`heal` — like a NAT entry or an API LB that dropped them without a reset.
        ``match(info)`` sees ``info.user`` (set once the token is known)."""
        with self._lock:
            self._blackhole = match or (lambda info: True)
            self._dead |= {c for c, info in self._streams.items() if self._blackhole(info)}

    def heal(self) -> None:
        """New requests are answered again; connections swallowed before stay dead."""
        with self._lock:
            self._blackhole = None

    def clear(self) -> None:
        with self._lock:
            self._error = None
            self._cut_lists = (0, None)
            self._blackhole = None
        self._latency = 0.0
        self._frozen_until = 0.0
        self.accept()

    # -- used by the handler
    def wait_frozen(self) -> None:
        while time.monotonic() < self._frozen_until and not self._api._stopping:
            time.sleep(min(0.02, max(0.0, self._frozen_until - time.monotonic())))

    def delay(self) -> None:
        if self._latency > 0:
            time.sleep(self._latency)

    def swallowed(self, conn: socket.socket, info: RequestInfo | None) -> bool:
        """Whether this connection is (now) dead: then the handler must never answer."""
        with self._lock:
            if id(conn) in self._dead:
                return True
            if self._blackhole is not None and info is not None and self._blackhole(info):
                self._dead.add(id(conn))
                return True
        return False

    def track_stream(self, conn: socket.socket, info: RequestInfo | None) -> None:
        """A watch stream opens (``info``) or ends (None) on ``conn``."""
        with self._lock:
            if info is None:
                self._streams.pop(id(conn), None)
            else:
                self._streams[id(conn)] = info

    def take_cut_list(self, info: RequestInfo) -> bool:
        with self._lock:
            count, match = self._cut_lists
            if count <= 0 or (match is not None and not match(info)):
                return False
            self._cut_lists = (count - 1, match)
            return True

    def check(self, info: RequestInfo) -> ApiError | None:
        with self._lock:
            e = self._error
            if e is None or (e.match is not None and not e.match(info)):
                return None
            if e.count is not None:
                e.count -= 1
                if e.count <= 0:
                    self._error = None
        headers: dict[str, str] = {}
        details: dict[str, Any] | None = None
        if e.retry_after is not None and e.code in (429, 503):
            headers["Retry-After"] = str(e.retry_after)
            details = {"retryAfterSeconds": e.retry_after}
        default = {
            429: "Too many requests, please try again later.",
            503: "The server is currently unable to handle the request",
            504: "The server was unable to return a response in the time allotted",
        }.get(e.code, "Internal error occurred: injected fault")
        return ApiError(e.code, e.message or default, None, details, headers)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, addr: tuple[str, int], api: KubeAPIServer) -> None:
        self.api = api
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def server_bind(self) -> None:  # no reverse DNS lookup
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-request (a cut watch, an agent killed) is normal here.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conns_lock:
            self.conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conns_lock:
            self.conns.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        with self.conns_lock:
            conns = list(self.conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


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
        self._httpd: _HTTPServer | None = None
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
            httpd = _HTTPServer((self.host, self.port), self)
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
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        cfg.api_key = {"authorization": token or self.admin_token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return cfg

    def api_client(self, token: str | None = None) -> Any:
        from kubernetes import client

        return client.ApiClient(self.configuration(token))

    def _record(self, info: RequestInfo, code: int) -> None:
        res = info.resource.name if info.resource else info.path
        self.requests.append(
            RecordedRequest(
                info.verb, res, info.subresource, info.namespace, info.name, code, info.user
            )
        )

    # -- discovery
    def _discovery(self, path: str) -> Any:
        if path == "/version":
            return {
                "major": "1",
                "minor": "34",
                "gitVersion": "v1.34.0-podlb-testbed",
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z",
                "goVersion": "go1.24.0",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        if path == "/api":
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                ],
            }
        if path == "/apis":
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [_group_doc(g) for g in GROUPS],
            }
        if path == "/api/v1":
            return _resource_list("", "v1")
        parts = path.strip("/").split("/")
        if parts[0] == "apis" and len(parts) == 2 and parts[1] in GROUPS:
            return {"kind": "APIGroup", "apiVersion": "v1", **_group_doc(parts[1])}
        if parts[0] == "apis" and len(parts) == 3 and parts[2] in GROUPS.get(parts[1], []):
            return _resource_list(parts[1], parts[2])
        return None


def _group_doc(group: str) -> dict[str, Any]:
    versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in GROUPS[group]]
    return {"name": group, "versions": versions, "preferredVersion": versions[0]}


def _resource_list(group: str, version: str) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for r in RESOURCES:
        if r.group != group or r.version != version:
            continue
        out.append(
            {
                "name": r.name,
                "singularName": r.singular,
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": list(r.verbs),
                "shortNames": list(r.short_names),
                "storageVersionHash": "",
            }
        )
        for sub in r.subresources:
            if sub == "binding":
                out.append(
                    {
                        "name": f"{r.name}/binding",
                        "singularName": "",
                        "namespaced": True,
                        "kind": "Binding",
                        "verbs": ["create"],
                    }
                )
            else:
                out.append(
                    {
                        "name": f"{r.name}/{sub}",
                        "singularName": "",
                        "namespaced": r.namespaced,
                        "kind": r.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}


def _parse(method: str, raw_path: str) -> RequestInfo:
    parsed = urllib.parse.urlsplit(raw_path)
    query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query).items()}
    path = parsed.path.rstrip("/") or "/"
    info = RequestInfo(method, path, query)
    parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif parts[0] == "apis" and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        rest = []
        group = version = ""
    if not rest:
        info.verb = method.lower()
        return info
    ns: str | None = None
    if (
        rest[0] == "namespaces"
        and len(rest) >= 3
        and not (len(rest) == 3 and rest[2] in NAMESPACE_SUBRESOURCES)
    ):
        ns, rest = rest[1], rest[2:]
    res = BY_GV.get((group, version, rest[0]))
    if res is None:
        raise ApiError(404, "the server could not find the requested resource", "NotFound", {})
    info.resource = res
    info.namespace = ns
    if len(rest) >= 2:
        info.name = rest[1]
    if len(rest) >= 3:
        info.subresource = rest[2]
    if len(rest) > 3 or (info.subresource and info.subresource not in res.subresources):
        raise ApiError(404, "the server could not find the requested resource", "NotFound", {})
    if not res.namespaced and ns:
        raise ApiError(404, "the server could not find the requested resource", "NotFound", {})
    if res.namespaced and info.name and not ns:
        raise ApiError(404, "the server could not find the requested resource", "NotFound", {})
    watch = query.get("watch", "").lower() in ("true", "1")
    if method == "GET":
        info.verb = "watch" if watch else ("get" if info.name else "list")
    elif method == "POST":
        info.verb = "create"
    elif method == "PUT":
        info.verb = "update"
    elif method == "PATCH":
        info.verb = "patch"
    elif method == "DELETE":
        info.verb = "delete" if info.name else "deletecollection"
    else:
        info.verb = method.lower()
    if method in ("PUT", "PATCH") and not info.name:
        raise ApiError(
            405,
            "the server does not allow this method on the requested resource",
            "MethodNotAllowed",
            {},
        )
    if method == "POST" and info.name and info.subresource != "binding":
        raise ApiError(
            405,
            "the server does not allow this method on the requested resource",
            "MethodNotAllowed",
            {},
        )
    return info


def _forbidden(user: str, info: RequestInfo) -> ApiError:
    res = info.resource
    assert res is not None
    full = f"{res.name}/{info.subresource}" if info.subresource else res.name
    what = f"{res.name}.{res.group}" if res.group else res.name
    if info.name:
        what += f' "{info.name}"'
    scope = f'in the namespace "{info.namespace}"' if info.namespace else "at the cluster scope"
    msg = (
        f'{what} is forbidden: User "{user}" cannot {info.verb} resource "{full}" in API group '
        f'"{res.group}" {scope}'
    )
    details: dict[str, Any] = {"kind": res.name}
    if info.name:
        details["name"] = info.name
    if res.group:
        details["group"] = res.group
    return ApiError(403, msg, "Forbidden", details)


CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token "
    "results in an inconsistent list - objects that were created, modified, or deleted between "
    "the time the first chunk was returned and now may show up in the list."
)


def _list_key(obj: Obj) -> tuple[str, str]:
    meta = obj["metadata"]
    return (meta.get("namespace", ""), meta["name"])


def _encode_continue(rv: int, last: tuple[str, str]) -> str:
    start = f"{last[0]}/{last[1]}" if last[0] else last[1]
    token = {"v": "meta.k8s.io/v1", "rv": rv, "start": start + "\x00"}
    return base64.urlsafe_b64encode(json.dumps(token).encode()).decode()


def _decode_continue(cont: str) -> tuple[int, tuple[str, str]]:
    """(resourceVersion, the last key listed) of a continue token; 400 if it is not one."""
    try:
        token = json.loads(base64.urlsafe_b64decode(cont.encode()))
        rv, start = int(token["rv"]), str(token["start"]).rstrip("\x00")
        if token.get("v") != "meta.k8s.io/v1" or rv < 1:
            raise ValueError(cont)
    except (ValueError, TypeError, KeyError):
        raise ApiError(400, "continue key is not valid", "BadRequest") from None
    ns, _, name = start.rpartition("/")
    return rv, (ns, name)


def _strip_list_item(obj: Obj) -> Obj:
    obj.pop("kind", None)
    obj.pop("apiVersion", None)
    return obj


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    server_version = "kubeapi-testbed"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def api(self) -> KubeAPIServer:
        return self.server.api

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    # -- low level
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        if isinstance(body, bytes | str):
            data = body.encode() if isinstance(body, str) else body
            ctype = "text/plain; charset=utf-8"
        else:
            data = json.dumps(body, separators=(",", ":")).encode()
            ctype = "application/json"
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_error(self, err: ApiError) -> None:
        self._send(err.code, err.body(), err.headers)

    def _send_cut(self, code: int, body: Any) -> None:
        """Headers and half the body, then the connection is dropped (no reset, no rest)."""
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _park(self) -> None:
        """A swallowed request: never answer (until the server stops)."""
        api = self.api
        while not api._stopping:
            time.sleep(0.05)
        self.close_connection = True

    def _body_json(self, raw: bytes) -> Any:
        if not raw:
            raise bad_request("the body of the request was empty")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise bad_request(f"couldn't get version/kind; json parse error: {e}") from None

    # -- dispatch
    def _handle(self) -> None:
        api = self.api
        if api.faults.swallowed(self.connection, None):
            self._park()
            return
        api.faults.wait_frozen()
        api.faults.delay()
        info = RequestInfo(self.command, self.path, {})
        code = 500
        try:
            raw = self._read_body()
            info = _parse(self.command, self.path)
            err = api.faults.check(info)
            if err is not None:
                raise err
            auth = self.headers.get("Authorization", "")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            who = api._tokens.get(token)
            if who is None:
                raise ApiError(401, "Unauthorized", "Unauthorized")
            user, rules = who
            info.user = user
            if api.faults.swallowed(self.connection, info):
                code = 0
                self._park()
                return
            if info.resource is None:
                if info.path in NON_RESOURCE_OK:
                    code = 200
                    self._send(200, "ok")
                    return
                doc = api._discovery(info.path)
                if doc is None:
                    raise ApiError(
                        404, "the server could not find the requested resource", "NotFound", {}
                    )
                code = 200
                self._send(200, doc)
                return
            if not any(r.allows(info) for r in rules):
                raise _forbidden(user, info)
            if info.verb == "watch":
                code = 200
                self._watch(info)
                return
            code, body = self._resource(info, raw)
            if info.verb == "list" and api.faults.take_cut_list(info):
                self._send_cut(code, body)
                return
            self._send(code, body)
        except ApiError as e:
            code = e.code
            self._send_error(e)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
        except Exception as e:  # pragma: no cover - a bug in the testbed
            code = 500
            self._send(500, status_body(500, f"Internal error occurred: {e!r}"))
        finally:
            api._record(info, code)

    def _resource(self, info: RequestInfo, raw: bytes) -> tuple[int, Any]:
        res = info.resource
        assert res is not None
        store = self.api.store
        q = info.query
        ns = info.namespace
        if info.verb == "get":
            obj = store.get(res.key, ns, info.name or "")
            if obj is None:
                from .errors import not_found

                raise not_found(res.name, res.group, info.name or "")
            return 200, obj
        if info.verb == "list":
            return 200, self._list(info)
        if info.verb == "create":
            body = self._body_json(raw)
            if not isinstance(body, dict):
                raise bad_request(
                    f"the object provided is unrecognized (must be of type {res.kind})"
                )
            if info.subresource == "binding":
                return self._bind(info, body)
            if body.get("kind") and body["kind"] != res.kind:
                raise bad_request(
                    f"the object provided is unrecognized (must be of type {res.kind}): "
                    f"kind {body['kind']!r}"
                )
            if q.get("dryRun"):
                return 201, body
            return 201, store.create(res.key, body, ns)
        if info.verb == "update":
            body = self._body_json(raw)
            if not isinstance(body, dict):
                raise bad_request(
                    f"the object provided is unrecognized (must be of type {res.kind})"
                )
            meta = body.setdefault("metadata", {})
            if not isinstance(meta, dict):
                raise bad_request("metadata must be an object")
            if meta.get("name") and meta["name"] != info.name:
                raise bad_request(
                    f"the name of the object ({meta['name']}) does not match the name on the "
                    f"URL ({info.name})"
                )
            meta["name"] = info.name
            if ns and meta.get("namespace") and meta["namespace"] != ns:
                raise bad_request(
                    "the namespace of the provided object does not match the "
                    "namespace sent on the request"
                )
            if ns:
                meta["namespace"] = ns
            return 200, store.update(res.key, body, ns, info.subresource)
        if info.verb == "patch":
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            patch = self._body_json(raw)
            fn: Callable[[Obj], Obj]
            if ctype == "application/json-patch+json":
                if not isinstance(patch, list):
                    raise bad_request(
                        "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
                    )
                fn = lambda cur: json_patch(cur, patch)  # noqa: E731
            elif ctype == "application/merge-patch+json":
                fn = lambda cur: merge_patch(cur, patch)  # noqa: E731
            elif ctype == "application/strategic-merge-patch+json":
                if not isinstance(patch, dict):
                    raise bad_request(
                        "json: cannot unmarshal array into Go value of type map[string]interface {}"
                    )
                fn = lambda cur: strategic_merge_patch(cur, patch)  # noqa: E731
            else:
                raise ApiError(
                    415,
                    f"the body of the request was in an unknown format - accepted media types "
                    f"include: application/json-patch+json, application/merge-patch+json, "
                    f"application/strategic-merge-patch+json (got {ctype!r})",
                    "UnsupportedMediaType",
                )
            return 200, store.mutate(res.key, ns, info.name or "", fn, info.subresource)
        if info.verb == "delete":
            opts: dict[str, Any] = {}
            if raw.strip():
                opts = self._body_json(raw)
                if not isinstance(opts, dict):
                    raise bad_request("DeleteOptions must be an object")
            elif "gracePeriodSeconds" in q:
                opts["gracePeriodSeconds"] = q["gracePeriodSeconds"]
            grace = opts.get("gracePeriodSeconds")
            try:
                grace_i = None if grace is None else int(grace)
            except (TypeError, ValueError):
                raise bad_request(f"invalid gracePeriodSeconds {grace!r}") from None
            obj, gone = store.delete(
                res.key, ns, info.name or "", grace_i, opts.get("preconditions")
            )
            if gone and res.key not in RETURN_DELETED:
                details: dict[str, Any] = {
                    "name": info.name,
                    "kind": res.name,
                    "uid": obj["metadata"]["uid"],
                }
                if res.group:
                    details["group"] = res.group
                return 200, {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": details,
                }
            return 200, obj
        if info.verb == "deletecollection":
            items = self._list(info)["items"]
            out = []
            for it in items:
                m = it["metadata"]
                with contextlib.suppress(ApiError):
                    out.append(store.delete(res.key, m.get("namespace"), m["name"])[0])
            return 200, {
                "kind": f"{res.kind}List",
                "apiVersion": res.api_version,
                "metadata": {},
                "items": [_strip_list_item(o) for o in out],
            }
        raise ApiError(
            405,
            "the server does not allow this method on the requested resource",
            "MethodNotAllowed",
            {},
        )

    def _bind(self, info: RequestInfo, body: Obj) -> tuple[int, Any]:
        target = body.get("target") or {}
        node = target.get("name")
        if not node:
            raise ApiError(422, 'Binding "" is invalid: target.name: Required value', "Invalid")
        name = info.name or ""

        def bind(cur: Obj) -> Obj:
            spec = cur.setdefault("spec", {})
            if spec.get("nodeName"):
                from .errors import conflict

                raise conflict(
                    "pods", "", name, f'pod {name} is already assigned to node "{spec["nodeName"]}"'
                )
            spec["nodeName"] = node
            return cur

        store = self.api.store
        store_obj = store.get("pods", info.namespace, name)
        if store_obj is None:
            from .errors import not_found

            raise not_found("pods", "", name)
        # the binding subresource is the one way to set spec.nodeName
        with store.lock:
            cur = store._objs["pods"].get((info.namespace or "", name))
            if cur is None:
                from .errors import not_found

                raise not_found("pods", "", name)
            new = bind(copy.deepcopy(cur))
            conds = [
                c
                for c in (new.get("status") or {}).get("conditions") or []
                if c.get("type") != "PodScheduled"
            ]
            conds.append(
                {
                    "type": "PodScheduled",
                    "status": "True",
                    "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "lastProbeTime": None,
                }
            )
            new.setdefault("status", {})["conditions"] = conds
            new["metadata"]["generation"] = int(cur["metadata"].get("generation") or 1) + 1
            from .resources import BY_KEY

            store._commit("MODIFIED", BY_KEY["pods"], new, cur)
        store._drain()
        return 201, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        }

    def _matcher(self, info: RequestInfo) -> Callable[[Obj], bool]:
        assert info.resource is not None
        lm = parse_label_selector(info.query.get("labelSelector"))
        fm = parse_field_selector(info.query.get("fieldSelector"), info.resource)
        return lambda o: lm(o) and fm(o)

    def _list(self, info: RequestInfo) -> dict[str, Any]:
        """A list, paged as kube-apiserver pages it: ``limit`` cuts it, ``metadata.continue``
        (``{"v", "rv", "start"}`` in base64, as the API server encodes it) resumes it from the
        first page's snapshot, and a token whose resourceVersion was compacted away is 410
        ``Expired``."""
        res = info.resource
        assert res is not None
        match = self._matcher(info)
        cont = info.query.get("continue")
        if cont:
            if info.query.get("resourceVersion"):
                raise ApiError(
                    400, "specifying resource version is not allowed when using continue"
                )
            rv, after = _decode_continue(cont)
            try:
                items = self.api.store.list_at(res.key, info.namespace, match, rv)
            except Expired:
                raise ApiError(410, CONTINUE_EXPIRED, "Expired") from None
            items = [o for o in items if _list_key(o) > after]
        else:
            items, rv = self.api.store.list_rv(res.key, info.namespace, match)
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        limit = int(info.query.get("limit") or 0)
        if limit > 0 and len(items) > limit:
            meta["continue"] = _encode_continue(rv, _list_key(items[limit - 1]))
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return {
            "kind": f"{res.kind}List",
            "apiVersion": res.api_version,
            "metadata": meta,
            "items": [_strip_list_item(o) for o in items],
        }

    # -- watch
    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _event(self, etype: str, obj: Obj) -> None:
        self._chunk(
            json.dumps({"type": etype, "object": obj}, separators=(",", ":")).encode() + b"\n"
        )

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _watch(self, info: RequestInfo) -> None:
        res = info.resource
        assert res is not None
        api = self.api
        match = self._matcher(info)
        q = info.query
        timeout = q.get("timeoutSeconds")
        deadline = time.monotonic() + float(timeout) if timeout else None
        bookmarks = q.get("allowWatchBookmarks", "").lower() in ("true", "1")
        try:
            w = api.store.watch(res.key, info.namespace, q.get("resourceVersion"))
        except Expired as e:
            self._start_stream()
            self._event("ERROR", status_body(410, str(e), "Expired"))
            self._end_stream()
            return
        api.faults.track_stream(self.connection, info)
        try:
            self._start_stream()
            self._stream(w, res, info, match, deadline, bookmarks)
        finally:
            api.faults.track_stream(self.connection, None)
            api.store.unwatch(w)

    def _stream(
        self,
        w: Watcher,
        res: Resource,
        info: RequestInfo,
        match: Callable[[Obj], bool],
        deadline: float | None,
        bookmarks: bool,
    ) -> None:
        api = self.api
        store = api.store
        next_bookmark = time.monotonic() + api.bookmark_interval
        import queue as _queue

        while True:
            if api.faults.swallowed(self.connection, None):
                self._park()
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self._end_stream()
                return
            waits = [0.25]
            if deadline is not None:
                waits.append(deadline - now)
            if bookmarks:
                waits.append(next_bookmark - now)
            try:
                ev = w.queue.get(timeout=max(0.0, min(waits)))
            except _queue.Empty:
                ev = None
                if bookmarks and time.monotonic() >= next_bookmark:
                    with store.lock:
                        rv = store.resource_version if w.queue.empty() else None
                    if rv is not None:
                        api.faults.wait_frozen()
                        if api.faults.swallowed(self.connection, info):
                            self._park()
                            return
                        self._event(
                            "BOOKMARK",
                            {
                                "kind": res.kind,
                                "apiVersion": res.api_version,
                                "metadata": {"resourceVersion": str(rv)},
                            },
                        )
                    next_bookmark = time.monotonic() + api.bookmark_interval
                if api._stopping:
                    self.close_connection = True
                    return
                continue
            if ev is None:  # cut or shutdown: drop the connection without the final chunk
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            ns = (ev.obj.get("metadata") or {}).get("namespace")
            if info.namespace and ns != info.namespace:
                continue
            new_m = match(ev.obj)
            out: tuple[str, Obj] | None = None
            if ev.type == "MODIFIED":
                old_m = match(ev.old) if ev.old is not None else new_m
                if new_m and old_m:
                    out = ("MODIFIED", ev.obj)
                elif new_m:
                    out = ("ADDED", ev.obj)
                elif old_m and ev.old is not None:
                    old = copy.deepcopy(ev.old)
                    old["metadata"]["resourceVersion"] = str(ev.rv)
                    out = ("DELETED", old)
            elif new_m:
                out = (ev.type, ev.obj)
            if out is not None:
                api.faults.wait_frozen()
                if api.faults.swallowed(self.connection, info):
                    self._park()
                    return
                self._event(*out)


_ = field  # keep dataclasses.field import for future use
