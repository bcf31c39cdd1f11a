"""A local double of the Baidu Cloud application BLB API v1 on loopback, for the real SDK.

``BlbDouble`` speaks what ``baidubce.services.blb.app_blb_client.AppBlbClient`` sends for the
operations podlb uses, and checks it the way the service does:

* every request must be signed with bce-auth-v1 (recomputed here from the canonical request,
  with our own implementation of the documented algorithm): an unknown access key is
  ``403 InvalidAccessKeyId``, a wrong signature ``403 SignatureDoesNotMatch``, a timestamp
  outside its validity window ``400 RequestExpired``, a malformed header
  ``400 InvalidHTTPAuthHeader``;
* paths, queries and bodies are validated (``400 MalformedJSON`` / ``InappropriateJSON`` /
  ``InvalidURI``), errors are the BCE error JSON ``{"code", "message", "requestId"}``;
* IP group members (``GET|POST|PUT /v1/appblb/{blbId}/ipgroup/member``, ``?delete``) and the
  listener policies (``GET /v1/appblb/{blbId}/policys?port=&type=``) answer with the documented
  JSON (marker pagination, ``portList[].status`` Alive / Dead / Unknown);
* ``clientToken`` makes a write idempotent: the same token is answered again, not re-applied.

Knobs: ``apply_delay_s`` (a change is listed only after that long: the BLB applies
asynchronously; validation uses the latest state at once), ``rate_limit_per_s`` (429),
``member_quota`` (members per IP group; the quota error), ``max_keys_limit`` (page size cap),
:meth:`fail_next`, :meth:`deny`, and :attr:`calls`. Health: a background checker TCP-connects to
every listed member each ``health_interval_s`` (or asks ``health_fn``). A stand-in for CCE's
own LB controller changes members in process (:meth:`add_members`, :meth:`remove_members`,
same delays and quota) and hears :attr:`on_change` when a change takes effect.

The error codes the BLB documents are the BCE common ones; for the member-specific refusals
(already there, no such member, quota) the double uses ``MemberAlreadyExists``,
``NoSuchObject`` (404) and ``QuotaExceeded``: the provider matches them loosely.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import ipaddress
import itertools
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote

from tests.testbed.waiting import tcp_alive

Member = tuple[str, int, int]  # ip, port, weight
OnChange = Callable[[str, str, list[Member]], None]

OP_DESCRIBE_MEMBERS = "describe_app_ip_group_member"
OP_CREATE_MEMBERS = "create_app_ip_group_member"
OP_UPDATE_MEMBERS = "update_app_ip_group_member"
OP_DELETE_MEMBERS = "delete_app_ip_group_member"
OP_DESCRIBE_POLICYS = "describe_app_ipgroup_policys"

AUTH_PREFIX = "bce-auth-v1"
DEFAULT_SIGNED = ("host", "content-md5", "content-length", "content-type")
MAX_CLOCK_SKEW_S = 300  # a timestamp this far in the future is refused


# -- bce-auth-v1, our own implementation ---------------------------------------------------------
def uri_encode(text: str, *, keep_slash: bool = False) -> str:
    """RFC 3986 encoding as BCE specifies: only ``A-Za-z0-9-_.~`` (and ``/`` when asked) stay."""
    return quote(text, safe="-_.~" + ("/" if keep_slash else ""))


def canonical_query(raw_query: str) -> str:
    """Sorted ``k=v`` pairs, each side decoded and re-encoded; ``authorization`` left out."""
    pairs = []
    for part in raw_query.split("&") if raw_query else []:
        k, _, v = part.partition("=")
        k, v = unquote(k), unquote(v)
        if k.lower() == "authorization":
            continue
        pairs.append(f"{uri_encode(k)}={uri_encode(v)}")
    return "&".join(sorted(pairs))


def canonical_headers(headers: Iterable[tuple[str, str]], signed: Sequence[str]) -> str:
    """``name:value`` lines (encoded, sorted) of the signed headers; ``signed`` empty: the
    default set (host, content-md5, content-length, content-type) plus every ``x-bce-*``."""
    wanted = {h.lower() for h in signed}
    lines = []
    for name, value in headers:
        n, v = name.strip().lower(), value.strip()
        if not v:
            continue
        if (n in wanted) if signed else (n in DEFAULT_SIGNED or n.startswith("x-bce-")):
            lines.append(f"{uri_encode(n)}:{uri_encode(v)}")
    return "\n".join(sorted(lines))


def signature(
    secret: str,
    auth_prefix: str,
    method: str,
    path: str,
    raw_query: str,
    headers: Iterable[tuple[str, str]],
    signed: Sequence[str],
) -> str:
    """The hex signature of a request; ``auth_prefix`` is ``bce-auth-v1/{ak}/{ts}/{expiry}``."""
    signing_key = hmac.new(secret.encode(), auth_prefix.encode(), hashlib.sha256).hexdigest()
    canonical = "\n".join(
        [
            method.upper(),
            uri_encode(unquote(path), keep_slash=True),
            canonical_query(raw_query),
            canonical_headers(headers, signed),
        ]
    )
    return hmac.new(signing_key.encode(), canonical.encode(), hashlib.sha256).hexdigest()


def authorization(
    access_key_id: str,
    secret: str,
    method: str,
    path: str,
    raw_query: str,
    headers: Sequence[tuple[str, str]],
    *,
    timestamp: dt.datetime | None = None,
    expiry_s: int = 1800,
) -> str:
    """An Authorization header (tests that send raw requests)."""
    ts = (timestamp or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    prefix = f"{AUTH_PREFIX}/{access_key_id}/{ts}/{expiry_s}"
    sig = signature(secret, prefix, method, path, raw_query, headers, ())
    return f"{prefix}//{sig}"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


# -- state -------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Member:
    member_id: str
    ip: str
    port: int
    weight: int
    status: str = "Unknown"  # health: Alive / Dead / Unknown


@dataclasses.dataclass
class _Group:
    group_id: str
    name: str
    health_check: str | None  # backend policy type (TCP/HTTP/UDP) or None: no health check
    latest: dict[str, _Member] = dataclasses.field(default_factory=dict)  # by member id
    visible: dict[str, _Member] = dataclasses.field(default_factory=dict)  # what is listed


@dataclasses.dataclass
class _Blb:
    blb_id: str
    groups: dict[str, _Group] = dataclasses.field(default_factory=dict)
    listeners: dict[tuple[str, int], str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Call:
    """One request as the double saw it."""

    operation: str | None  # None: no such operation (bad path)
    method: str
    path: str
    status: int
    code: str = ""  # the BCE error code; "" on success


@dataclasses.dataclass
class _Fault:
    status: int
    code: str
    message: str
    times: int


_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MEMBERS_PATH = re.compile(r"/v1/appblb/([^/]+)/ipgroup/member")
_POLICYS_PATH = re.compile(r"/v1/appblb/([^/]+)/policys")


class BlbDouble:
    """The application BLB API v1 on ``127.0.0.1:<random port>``; use as a context manager."""

    def __init__(
        self,
        *,
        apply_delay_s: float = 0.0,
        rate_limit_per_s: float | None = None,
        member_quota: int = 50,
        max_keys_limit: int = 1000,
        health_interval_s: float = 0.2,
        health_timeout_s: float = 0.3,
        health_fn: Callable[[str, int], bool | None] | None = None,
        on_change: OnChange | None = None,
    ) -> None:
        self.access_key_id = "ak-" + secrets.token_hex(8)
        self.secret_access_key = secrets.token_hex(16)
        self.apply_delay_s = apply_delay_s
        self.rate_limit_per_s = rate_limit_per_s
        self.member_quota = member_quota
        self.max_keys_limit = max_keys_limit
        self.health_interval_s = health_interval_s
        self.health_timeout_s = health_timeout_s
        self.health_fn = health_fn
        self.on_change = on_change
        self.calls: list[Call] = []
        self._lock = threading.RLock()
        self._blbs: dict[str, _Blb] = {}
        self._due: list[tuple[float, str, str, Callable[[_Group], None]]] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._denied: set[str] = set()
        self._tokens: dict[str, tuple[str, int, bytes]] = {}  # clientToken -> (op, status, body)
        self._bucket = (0.0, time.monotonic())  # tokens, last refill
        self._ids = itertools.count(1)
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="blb-health")

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> BlbDouble:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                double._serve(self)

            def do_POST(self) -> None:
                double._serve(self)

            def do_PUT(self) -> None:
                double._serve(self)

            def do_DELETE(self) -> None:
                double._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if self.rate_limit_per_s:
            self._bucket = (self.rate_limit_per_s, time.monotonic())
        self._threads = [
            threading.Thread(
                target=self._server.serve_forever, args=(0.05,), name="blb-http", daemon=True
            ),
            threading.Thread(target=self._background, name="blb-apply", daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "use BlbDouble as a context manager"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- setup ---------------------------------------------------------------------------------
    def add_blb(self, blb_id: str | None = None) -> str:
        blb_id = blb_id or f"lb-{secrets.token_hex(4)}"
        with self._lock:
            self._blbs[blb_id] = _Blb(blb_id)
        return blb_id

    def add_ip_group(
        self, blb_id: str, name: str | None = None, *, health_check: str | None = "TCP"
    ) -> str:
        """A new IP group; ``health_check`` None: no backend policy, so no health check."""
        gid = f"ip_group-{secrets.token_hex(4)}"
        with self._lock:
            self._blbs[blb_id].groups[gid] = _Group(gid, name or gid, health_check)
        return gid

    def add_listener(self, blb_id: str, protocol: str, port: int, ip_group_id: str) -> None:
        """A listener whose one policy forwards to ``ip_group_id``."""
        with self._lock:
            blb = self._blbs[blb_id]
            assert ip_group_id in blb.groups
            blb.listeners[(protocol.upper(), port)] = ip_group_id

    def fail_next(
        self, operation: str, status: int, code: str, message: str = "", times: int = 1
    ) -> None:
        """The next ``times`` calls of ``operation`` (signed correctly) get this error."""
        with self._lock:
            self._faults.setdefault(operation, []).append(
                _Fault(status, code, message or code, times)
            )

    def deny(self, operation: str) -> None:
        """The access key lacks the permission for ``operation``: 403 AccessDenied."""
        with self._lock:
            self._denied.add(operation)

    def calls_of(self, operation: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.operation == operation]

    # -- in-process controller API (a stand-in for CCE's LB controller) -----------------------
    def add_members(self, blb_id: str, ip_group_id: str, members: Iterable[Member]) -> None:
        """Register members as the cloud's controller would: same quota and apply delay."""
        with self._lock:
            self._create(self._group(blb_id, ip_group_id), blb_id, list(members))

    def remove_members(
        self, blb_id: str, ip_group_id: str, members: Iterable[tuple[str, int]]
    ) -> None:
        with self._lock:
            g = self._group(blb_id, ip_group_id)
            want = set(members)
            ids = [m.member_id for m in g.latest.values() if (m.ip, m.port) in want]
            self._delete(g, blb_id, ids)

    def members(self, blb_id: str, ip_group_id: str) -> list[Member]:
        """What the BLB lists now (applied changes only)."""
        with self._lock:
            g = self._group(blb_id, ip_group_id)
            return sorted((m.ip, m.port, m.weight) for m in g.visible.values())

    # -- state changes (under the lock) --------------------------------------------------------
    def _group(self, blb_id: str, ip_group_id: str) -> _Group:
        blb = self._blbs.get(blb_id)
        if blb is None:
            raise ApiError(404, "NoSuchObject", f"The loadbalancer {blb_id} does not exist")
        g = blb.groups.get(ip_group_id)
        if g is None:
            raise ApiError(404, "NoSuchObject", f"The ip group {ip_group_id} does not exist")
        return g

    def _schedule(self, blb_id: str, g: _Group, change: Callable[[_Group], None]) -> None:
        self._due.append((time.monotonic() + self.apply_delay_s, blb_id, g.group_id, change))
        if self.apply_delay_s <= 0:
            self._apply_due()

    def _create(self, g: _Group, blb_id: str, members: Sequence[Member]) -> None:
        seen: set[tuple[str, int]] = set()
        for ip, port, weight in members:
            _check_member(ip, port, weight)
            if (ip, port) in seen or any((m.ip, m.port) == (ip, port) for m in g.latest.values()):
                raise ApiError(
                    400,
                    "MemberAlreadyExists",
                    f"The member {ip}:{port} already exists in ip group {g.group_id}",
                )
            seen.add((ip, port))
        if len(g.latest) + len(members) > self.member_quota:
            raise ApiError(
                400,
                "QuotaExceeded",
                f"The ip group {g.group_id} may hold {self.member_quota} members"
                f" ({len(g.latest)} now, {len(members)} more asked)",
            )
        new = [
            _Member(f"ip_member-{next(self._ids):08x}", ip, port, weight)
            for ip, port, weight in members
        ]
        for m in new:
            g.latest[m.member_id] = m

        def change(group: _Group) -> None:
            for m in new:
                group.visible[m.member_id] = dataclasses.replace(m)

        self._schedule(blb_id, g, change)

    def _update(self, g: _Group, blb_id: str, updates: Sequence[tuple[str, int]]) -> None:
        for member_id, weight in updates:
            if member_id not in g.latest:
                raise ApiError(404, "NoSuchObject", f"The member {member_id} does not exist")
            if not 0 <= weight <= 100:
                raise ApiError(400, "InappropriateJSON", f"weight {weight} out of 0~100")
        for member_id, weight in updates:
            g.latest[member_id].weight = weight

        def change(group: _Group) -> None:
            for member_id, weight in updates:
                if member_id in group.visible:
                    group.visible[member_id].weight = weight

        self._schedule(blb_id, g, change)

    def _delete(self, g: _Group, blb_id: str, ids: Sequence[str]) -> None:
        for member_id in ids:
            if member_id not in g.latest:
                raise ApiError(404, "NoSuchObject", f"The member {member_id} does not exist")
        for member_id in ids:
            del g.latest[member_id]

        def change(group: _Group) -> None:
            for member_id in ids:
                group.visible.pop(member_id, None)

        self._schedule(blb_id, g, change)

    def _apply_due(self) -> list[tuple[str, str, list[Member]]]:
        """Run the changes whose time has come; the notifications to send (outside the lock)."""
        now = time.monotonic()
        ready = [d for d in self._due if d[0] <= now]
        if not ready:
            return []
        self._due = [d for d in self._due if d[0] > now]
        notes = []
        for _, blb_id, gid, change in ready:
            g = self._blbs[blb_id].groups[gid]
            change(g)
            notes.append(
                (blb_id, gid, sorted((m.ip, m.port, m.weight) for m in g.visible.values()))
            )
        return notes

    # -- background: apply due changes, health checks ------------------------------------------
    def _background(self) -> None:
        next_check = 0.0
        while not self._stop.wait(0.02):
            with self._lock:
                notes = self._apply_due()
            if self.on_change is not None:
                for blb_id, gid, members in notes:
                    self.on_change(blb_id, gid, members)
            if time.monotonic() >= next_check:
                self._check_health()
                next_check = time.monotonic() + self.health_interval_s

    def _probe(self, ip: str, port: int) -> bool | None:
        if self.health_fn is not None:
            return self.health_fn(ip, port)
        return tcp_alive(ip, port, self.health_timeout_s)

    def _check_health(self) -> None:
        with self._lock:
            targets = [
                m
                for blb in self._blbs.values()
                for g in blb.groups.values()
                if g.health_check is not None
                for m in g.visible.values()
            ]
        if not targets:
            return
        try:
            results = list(self._pool.map(lambda m: self._probe(m.ip, m.port), targets))
        except RuntimeError:  # shutting down
            return
        with self._lock:
            for m, ok in zip(targets, results, strict=True):
                m.status = "Unknown" if ok is None else ("Alive" if ok else "Dead")

    # -- HTTP ----------------------------------------------------------------------------------
    def _serve(self, req: BaseHTTPRequestHandler) -> None:
        path, _, raw_query = req.path.partition("?")
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        operation = _operation(req.command, path, raw_query)
        request_id = str(uuid.uuid4())
        try:
            self._verify(req, path, raw_query)
            if operation is None:
                raise ApiError(400, "InvalidURI", f"Could not parse the specified URI {path}")
            status, answer = self._handle(operation, req, path, raw_query, body)
            code = ""
        except ApiError as e:
            status, code = e.status, e.code
            answer = json.dumps(
                {"code": e.code, "message": e.message, "requestId": request_id}
            ).encode()
        with self._lock:
            self.calls.append(Call(operation, req.command, path, status, code))
        req.send_response(status)
        req.send_header("Content-Type", "application/json;charset=UTF-8")
        req.send_header("x-bce-request-id", request_id)
        req.send_header("Content-Length", str(len(answer)))
        req.end_headers()
        req.wfile.write(answer)

    def _verify(self, req: BaseHTTPRequestHandler, path: str, raw_query: str) -> None:
        auth = req.headers.get("Authorization") or ""
        parts = auth.split("/")
        if len(parts) != 6 or parts[0] != AUTH_PREFIX:
            raise ApiError(400, "InvalidHTTPAuthHeader", "The HTTP authorization header is invalid")
        _, ak, ts, expiry_s, signed_s, sig = parts
        try:
            when = dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
            expiry = int(expiry_s)
        except ValueError:
            raise ApiError(
                400, "InvalidHTTPAuthHeader", "The HTTP authorization header is invalid"
            ) from None
        if ak != self.access_key_id:
            raise ApiError(
                403,
                "InvalidAccessKeyId",
                "The Access Key ID you provided does not exist in our records.",
            )
        now = dt.datetime.now(dt.UTC)
        age = (now - when).total_seconds()
        if age > expiry or age < -MAX_CLOCK_SKEW_S:
            raise ApiError(400, "RequestExpired", f"Request has expired. Timestamp date is {ts}")
        signed = [h for h in signed_s.split(";") if h]
        headers = list(req.headers.items())
        if not any(n.lower() == "host" for n, _ in headers) or (
            signed and "host" not in [h.lower() for h in signed]
        ):
            raise ApiError(400, "InvalidHTTPAuthHeader", "The host header must be signed")
        prefix = "/".join(parts[:4])
        want = signature(
            self.secret_access_key, prefix, req.command, path, raw_query, headers, signed
        )
        if not hmac.compare_digest(want, sig):
            raise ApiError(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )

    def _throttled(self) -> bool:
        if not self.rate_limit_per_s:
            return False
        with self._lock:
            tokens, last = self._bucket
            now = time.monotonic()
            tokens = min(self.rate_limit_per_s, tokens + (now - last) * self.rate_limit_per_s)
            if tokens < 1:
                self._bucket = (tokens, now)
                return True
            self._bucket = (tokens - 1, now)
            return False

    def _handle(
        self, operation: str, req: BaseHTTPRequestHandler, path: str, raw_query: str, body: bytes
    ) -> tuple[int, bytes]:
        with self._lock:
            if operation in self._denied:
                raise ApiError(403, "AccessDenied", "Access denied.")
            faults = self._faults.get(operation)
            if faults:
                f = faults[0]
                f.times -= 1
                if f.times <= 0:
                    faults.pop(0)
                raise ApiError(f.status, f.code, f.message)
        if self._throttled():
            raise ApiError(429, "RequestLimitExceeded", "Request rate limit exceeded")
        query = _parse_query(raw_query)
        m = _MEMBERS_PATH.fullmatch(path) or _POLICYS_PATH.fullmatch(path)
        assert m is not None
        blb_id = unquote(m.group(1))
        if operation == OP_DESCRIBE_MEMBERS:
            return 200, self._describe_members(blb_id, query)
        if operation == OP_DESCRIBE_POLICYS:
            return 200, self._describe_policys(blb_id, query)
        token = query.get("clientToken")
        if token is not None and (len(token) > 64 or not token.isascii()):
            raise ApiError(400, "InvalidHTTPRequest", "clientToken: at most 64 ASCII characters")
        if (req.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            raise ApiError(400, "InvalidHTTPRequest", "Content-Type must be application/json")
        try:
            doc = json.loads(body)
        except ValueError:
            raise ApiError(
                400, "MalformedJSON", "The JSON you provided was not well-formed."
            ) from None
        if not isinstance(doc, dict):
            raise ApiError(400, "MalformedJSON", "The JSON you provided was not well-formed.")
        with self._lock:
            if token is not None and token in self._tokens:
                op, status, answer = self._tokens[token]
                if op == operation:
                    return status, answer  # idempotent replay
                raise ApiError(403, "IdempotentParameterMismatch", "clientToken reused")
            g = self._group(blb_id, _str(doc, "ipGroupId"))
            if operation == OP_CREATE_MEMBERS:
                members = [
                    (_str(x, "ip"), _int(x, "port"), _int(x, "weight"))
                    for x in _list(doc, "memberList")
                ]
                self._create(g, blb_id, members)
            elif operation == OP_UPDATE_MEMBERS:
                updates = [
                    (_str(x, "memberId"), _int(x, "weight")) for x in _list(doc, "memberList")
                ]
                self._update(g, blb_id, updates)
            else:
                ids = [_id(x) for x in _list(doc, "memberIdList")]
                self._delete(g, blb_id, ids)
            if token is not None:
                self._tokens[token] = (operation, 200, b"")
        return 200, b""

    def _describe_members(self, blb_id: str, query: dict[str, str]) -> bytes:
        gid = query.get("ipGroupId")
        if not gid:
            raise ApiError(400, "InvalidHTTPRequest", "ipGroupId is required")
        max_keys = _max_keys(query)
        marker = query.get("marker") or ""
        with self._lock:
            g = self._group(blb_id, gid)
            rows = sorted(g.visible.values(), key=lambda m: m.member_id)
            if marker:
                rows = [m for m in rows if m.member_id >= marker]
            page_size = min(max_keys, self.max_keys_limit)
            page, rest = rows[:page_size], rows[page_size:]
            doc: dict[str, Any] = {
                "marker": marker,
                "isTruncated": bool(rest),
                "maxKeys": max_keys,
                "memberList": [
                    {
                        "memberId": m.member_id,
                        "ip": m.ip,
                        "port": m.port,
                        "weight": m.weight,
                        "portList": (
                            []
                            if g.health_check is None
                            else [{"healthCheckPortType": g.health_check, "status": m.status}]
                        ),
                    }
                    for m in page
                ],
            }
        if rest:
            doc["nextMarker"] = rest[0].member_id
        return json.dumps(doc).encode()

    def _describe_policys(self, blb_id: str, query: dict[str, str]) -> bytes:
        port_s = query.get("port", "")
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise ApiError(400, "InvalidHTTPRequest", f"port {port_s!r} out of 1~65535")
        max_keys = _max_keys(query)
        proto = (query.get("type") or "").upper()
        with self._lock:
            blb = self._blbs.get(blb_id)
            if blb is None:
                raise ApiError(404, "NoSuchObject", f"The loadbalancer {blb_id} does not exist")
            found = [
                (p, gid)
                for (p, port), gid in blb.listeners.items()
                if port == int(port_s) and (not proto or p == proto)
            ]
            if not found:
                raise ApiError(
                    404, "NoSuchObject", f"The listener {proto or '*'}:{port_s} does not exist"
                )
            policies = [
                {
                    "id": f"policy-{gid[-8:]}",
                    "desc": "",
                    "appIpGroupId": gid,
                    "appIpGroupName": blb.groups[gid].name,
                    "groupType": "ip",
                    "frontendPort": int(port_s),
                    "portType": p,
                    "priority": 1,
                    "ruleList": [{"key": "*", "value": "*"}],
                }
                for p, gid in found
            ]
        return json.dumps(
            {"policyList": policies, "marker": "", "isTruncated": False, "maxKeys": max_keys}
        ).encode()


# -- request parsing ---------------------------------------------------------------------------
def _operation(method: str, path: str, raw_query: str) -> str | None:
    keys = {p.partition("=")[0] for p in raw_query.split("&") if p}
    m = _MEMBERS_PATH.fullmatch(path)
    if m is not None and _ID_RE.fullmatch(unquote(m.group(1))):
        if method == "GET":
            return OP_DESCRIBE_MEMBERS
        if method == "POST":
            return OP_CREATE_MEMBERS
        if method == "PUT":
            return OP_DELETE_MEMBERS if "delete" in keys else OP_UPDATE_MEMBERS
        return None
    m = _POLICYS_PATH.fullmatch(path)
    if m is not None and _ID_RE.fullmatch(unquote(m.group(1))) and method == "GET":
        return OP_DESCRIBE_POLICYS
    return None


def _parse_query(raw_query: str) -> dict[str, str]:
    out = {}
    for part in raw_query.split("&") if raw_query else []:
        k, _, v = part.partition("=")
        out[unquote(k)] = unquote(v)
    return out


def _max_keys(query: dict[str, str]) -> int:
    raw = query.get("maxKeys", "1000")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise ApiError(400, "InvalidHTTPRequest", f"maxKeys {raw!r} out of 1~1000")
    return int(raw)


def _inappropriate(what: str) -> ApiError:
    return ApiError(400, "InappropriateJSON", f"{what}")


def _str(doc: Any, key: str) -> str:
    v = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(v, str) or not v:
        raise _inappropriate(f"{key} must be a non-empty string")
    return v


def _int(doc: Any, key: str) -> int:
    v = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(v, int) or isinstance(v, bool):
        raise _inappropriate(f"{key} must be an integer")
    return v


def _id(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise _inappropriate("memberIdList must hold member ids")
    return v


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    v = doc.get(key)
    if not isinstance(v, list) or not v:
        raise _inappropriate(f"{key} must be a non-empty list")
    return v


def _check_member(ip: str, port: int, weight: int) -> None:
    try:
        if ipaddress.ip_address(ip).version != 4:
            raise ValueError
    except ValueError:
        raise _inappropriate(f"ip {ip!r} is not an IPv4 address") from None
    if not 0 < port < 65536:
        raise _inappropriate(f"port {port} out of 1~65535")
    if not 0 <= weight <= 100:
        raise _inappropriate(f"weight {weight} out of 0~100")


__all__ = [
    "OP_CREATE_MEMBERS",
    "OP_DELETE_MEMBERS",
    "OP_DESCRIBE_MEMBERS",
    "OP_DESCRIBE_POLICYS",
    "OP_UPDATE_MEMBERS",
    "ApiError",
    "BlbDouble",
    "Call",
    "authorization",
    "canonical_headers",
    "canonical_query",
    "signature",
    "uri_encode",
]
