"""A local double of the Tencent Cloud CLB API (version 2018-03-17) on loopback.

It speaks the API 3.0 wire protocol to the real SDK: POST ``/`` with a JSON body, the action in
``X-TC-Action``, signed with TC3-HMAC-SHA256 (checked here with our own implementation of the
documented algorithm), answers ``{"Response": {..., "RequestId": ...}}`` or
``{"Response": {"Error": {"Code", "Message"}, "RequestId"}}``. Emulated actions:
DescribeListeners, DescribeTargets, DescribeTargetHealth, BatchRegisterTargets,
BatchModifyTargetWeight, BatchDeregisterTargets, DescribeTaskStatus. See README.md (clb.py)
for what is emulated and what is not.

Time is real (``time.monotonic``): the knobs are seconds of real delay, keep them small.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import heapq
import hmac
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.testbed.waiting import tcp_alive

VERSION = "2018-03-17"
SERVICE = "clb"
ACTIONS = (
    "DescribeListeners",
    "DescribeTargets",
    "DescribeTargetHealth",
    "BatchRegisterTargets",
    "BatchModifyTargetWeight",
    "BatchDeregisterTargets",
    "DescribeTaskStatus",
)
WRITES = frozenset({"BatchRegisterTargets", "BatchModifyTargetWeight", "BatchDeregisterTargets"})
LAYER7 = frozenset({"HTTP", "HTTPS"})
# Documented per-call limits (https://www.tencentcloud.com/document/api/214/33843 etc.)
MAX_BATCH_TARGETS = 500
MAX_WEIGHT_RULES = 100
MAX_WEIGHT_RULE_TARGETS = 50
MAX_WEIGHT_TARGETS = 500
MAX_DESCRIBE_LISTENERS = 20
MAX_HEALTH_LBS = 30
SIGNATURE_WINDOW_S = 300

Json = dict[str, Any]
TargetKey = tuple[str, int]  # (ip or instance id, port)
ChangeHook = Callable[[str, str, "str | None", list[tuple[str, int, int]]], None]


class ApiError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class _Target:
    ip: str
    port: int
    weight: int
    instance_id: str | None = None
    registered_at: float = 0.0  # when the registration took effect (monotonic)
    health: str = "Unknown"  # Alive / Dead / Unknown
    ok_streak: int = 0
    bad_streak: int = 0


@dataclass
class _Rule:
    location_id: str
    domain: str
    url: str
    targets: dict[TargetKey, _Target] = field(default_factory=dict)


@dataclass
class _Listener:
    listener_id: str
    protocol: str
    port: int
    health_check: bool
    default_rule: _Rule  # layer 4: the targets; layer 7: unused
    rules: dict[str, _Rule] = field(default_factory=dict)  # layer 7, by location id

    @property
    def layer7(self) -> bool:
        return self.protocol in LAYER7


@dataclass
class _Task:
    request_id: str
    lb_id: str
    due: float
    changes: list[tuple[str, str, str | None, str, TargetKey, int, str | None]]
    # (kind: add|del|weight, listener, location, ip, key, weight, instance_id)
    fail: str | None = None  # the task ends with Status 1 and this message
    done: bool = False


@dataclass(frozen=True)
class CallRecord:
    action: str
    params: Json
    code: str  # "ok" or the error code
    at: float


def _ids(prefix: str) -> Iterator[str]:
    for n in itertools.count(1):
        yield f"{prefix}-{n:08x}"


def tc3_signature(
    secret_key: str, date: str, timestamp: str, canonical_request: str, service: str = SERVICE
) -> str:
    """TC3-HMAC-SHA256 as documented (API 3.0, "Signature v3"), written from the docs."""
    scope = f"{date}/{service}/tc3_request"
    digest = hashlib.sha256(canonical_request.encode()).hexdigest()
    string_to_sign = f"TC3-HMAC-SHA256\n{timestamp}\n{scope}\n{digest}"

    def h(key: bytes, msg: str) -> bytes:
        return hmac.new(key, msg.encode(), hashlib.sha256).digest()

    k = h(("TC3" + secret_key).encode(), date)
    k = h(k, service)
    k = h(k, "tc3_request")
    return hmac.new(k, string_to_sign.encode(), hashlib.sha256).hexdigest()


class ClbDouble:
    """The CLB API on ``http://127.0.0.1:PORT`` (``.endpoint``), a context manager.

    Knobs: ``task_delay_s`` (a write takes effect that long after the call; DescribeTaskStatus
    says 2 until then, and the LB refuses other writes with
    ``FailedOperation.ResourceInOperating`` meanwhile when ``lock_during_task``),
    ``describe_lag_s`` (a registration shows in DescribeTargets / DescribeTargetHealth that
    long after it took effect), ``rate_limit_per_s`` (per action, -> ``RequestLimitExceeded``),
    ``max_targets_per_listener`` (-> ``LimitExceeded``), :meth:`fail_next`, :meth:`deny`.
    Health: every ``health_interval_s`` a TCP connect to each target (or ``health_fn(ip,
    port) -> bool``), ``rise`` successes make it Alive, ``fall`` failures Dead.
    """

    def __init__(
        self,
        *,
        secret_id: str = "AKIDpodlbtestdouble0000000000000000",
        secret_key: str = "podlb-test-double-secret-key-0000",
        region: str = "ap-guangzhou",
        task_delay_s: float = 0.0,
        describe_lag_s: float = 0.0,
        rate_limit_per_s: int | None = None,
        max_targets_per_listener: int | None = None,
        lock_during_task: bool = True,
        health_interval_s: float = 0.2,
        health_timeout_s: float = 0.2,
        rise: int = 2,
        fall: int = 2,
        health_fn: Callable[[str, int], bool] | None = None,
        on_change: ChangeHook | None = None,
    ) -> None:
        self.secret_id = secret_id
        self.secret_key = secret_key
        self.region = region
        self.task_delay_s = task_delay_s
        self.describe_lag_s = describe_lag_s
        self.rate_limit_per_s = rate_limit_per_s
        self.max_targets_per_listener = max_targets_per_listener
        self.lock_during_task = lock_during_task
        self.health_interval_s = health_interval_s
        self.health_timeout_s = health_timeout_s
        self.rise = rise
        self.fall = fall
        self.health_fn = health_fn
        self.on_change = on_change
        self.calls: list[CallRecord] = []
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._lbs: dict[str, dict[str, _Listener]] = {}
        self._instances: dict[str, str] = {}  # CVM instance id -> private IP
        self._tasks: dict[str, _Task] = {}
        self._queue: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._fail_next: dict[str, list[tuple[str, str]]] = {}
        self._fail_task: list[str] = []
        self._denied: set[str] = set()
        self._slow: dict[str, float] = {}  # action -> seconds before it is handled
        self._in_flight: dict[str, int] = {}  # action -> requests being held by slow()
        self._to_fire: list[tuple[str, str, str | None, list[tuple[str, int, int]]]] = []
        self._fire_lock = threading.RLock()
        self._window: dict[str, tuple[int, int]] = {}  # action -> (second, count)
        self._listener_ids = _ids("lbl")
        self._location_ids = _ids("loc")
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> ClbDouble:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status, payload = double._handle("POST", dict(self.headers.items()), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._threads = [
            threading.Thread(
                target=self._server.serve_forever, args=(0.05,), name="clb-http", daemon=True
            ),
            threading.Thread(target=self._task_loop, name="clb-tasks", daemon=True),
            threading.Thread(target=self._health_loop, name="clb-health", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- setup ---------------------------------------------------------------------------
    def add_lb(self, lb_id: str) -> str:
        with self._lock:
            self._lbs.setdefault(lb_id, {})
        return lb_id

    def add_listener(
        self,
        lb_id: str,
        protocol: str,
        port: int,
        *,
        listener_id: str | None = None,
        health_check: bool = True,
    ) -> str:
        with self._lock:
            lid = listener_id or next(self._listener_ids)
            self._lbs[lb_id][lid] = _Listener(
                lid, protocol.upper(), port, health_check, _Rule(next(self._location_ids), "", "")
            )
            return lid

    def add_rule(self, lb_id: str, listener_id: str, domain: str, url: str) -> str:
        with self._lock:
            li = self._lbs[lb_id][listener_id]
            if not li.layer7:
                raise ValueError(f"{li.protocol} listener {listener_id} has no forwarding rules")
            loc = next(self._location_ids)
            li.rules[loc] = _Rule(loc, domain, url)
            return loc

    def add_instance(self, instance_id: str, ip: str) -> None:
        """A CVM whose primary IP ``ip`` can be bound with ``InstanceId``."""
        with self._lock:
            self._instances[instance_id] = ip

    # -- knobs ---------------------------------------------------------------------------
    def fail_next(self, action: str, code: str, message: str = "injected", times: int = 1) -> None:
        """The next ``times`` calls of ``action`` (signed correctly) answer this error."""
        with self._lock:
            self._fail_next.setdefault(action, []).extend([(code, message)] * times)

    def fail_next_task(self, message: str = "injected task failure") -> None:
        """The next write task ends with Status 1 and changes nothing."""
        with self._lock:
            self._fail_task.append(message)

    def slow(self, action: str, seconds: float) -> None:
        """Requests of ``action`` are held ``seconds`` before they are handled (and take
        effect): a call in flight that lands late. 0 ends it."""
        with self._lock:
            self._slow[action] = seconds

    def in_flight(self, action: str) -> int:
        """Requests of ``action`` being held by :meth:`slow` now."""
        with self._lock:
            return self._in_flight.get(action, 0)

    def deny(self, action: str) -> None:
        """The credential lacks the CAM permission for ``action``."""
        with self._lock:
            self._denied.add(action)

    def allow(self, action: str) -> None:
        with self._lock:
            self._denied.discard(action)

    def actions(self) -> list[str]:
        """The actions called so far, in order (every request that reached the double)."""
        with self._lock:
            return [c.action for c in self.calls]

    # -- in-process controller API (a stand-in for TKE's service controller) ------------
    def register(
        self,
        lb_id: str,
        listener_id: str,
        targets: Iterable[tuple[str, int, int]],
        location_id: str | None = None,
    ) -> str:
        """Bind ``(ip, port, weight)`` targets after ``task_delay_s``; returns the task id."""
        ch = [("add", listener_id, location_id, ip, (ip, p), w, None) for ip, p, w in targets]
        return self._controller(lb_id, ch)

    def deregister(
        self,
        lb_id: str,
        listener_id: str,
        targets: Iterable[tuple[str, int]],
        location_id: str | None = None,
    ) -> str:
        ch = [("del", listener_id, location_id, ip, (ip, p), 0, None) for ip, p in targets]
        return self._controller(lb_id, ch)

    def set_weight(
        self,
        lb_id: str,
        listener_id: str,
        targets: Iterable[tuple[str, int, int]],
        location_id: str | None = None,
    ) -> str:
        ch = [("weight", listener_id, location_id, ip, (ip, p), w, None) for ip, p, w in targets]
        return self._controller(lb_id, ch)

    def _controller(self, lb_id: str, changes: list[Any]) -> str:
        with self._lock:
            self._rules_exist(lb_id, changes)
            rid = self._schedule(lb_id, changes)
        self._fire()
        return rid

    def _rules_exist(self, lb_id: str, changes: list[Any]) -> None:
        for change in changes:
            self._rule(lb_id, change[1], change[2])  # KeyError for an unknown pool

    def targets(
        self, lb_id: str, listener_id: str, location_id: str | None = None
    ) -> list[tuple[str, int, int]]:
        """The pool's targets in effect now (no describe lag): ``(ip, port, weight)``."""
        self._fire()
        with self._lock:
            rule = self._rule(lb_id, listener_id, location_id)
            return sorted((t.ip, t.port, t.weight) for t in rule.targets.values())

    def health(
        self, lb_id: str, listener_id: str, ip: str, port: int, location_id: str | None = None
    ) -> str:
        """Alive / Dead / Unknown / Close of one target (KeyError when not bound)."""
        with self._lock:
            li = self._lbs[lb_id][listener_id]
            t = self._rule(lb_id, listener_id, location_id).targets[(ip, port)]
            return t.health if li.health_check else "Close"

    def task_status(self, task_id: str) -> int:
        self._fire()
        with self._lock:
            task = self._tasks[task_id]
            return 2 if not task.done else (1 if task.fail else 0)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until every scheduled task has taken effect (and on_change ran)."""
        deadline = time.monotonic() + timeout
        while True:
            self._fire()
            with self._lock:
                if not any(not t.done for t in self._tasks.values()):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError("CLB double: tasks still pending")
            time.sleep(0.01)

    # -- tasks ---------------------------------------------------------------------------
    def _schedule(self, lb_id: str, changes: list[Any], request_id: str | None = None) -> str:
        with self._wake:
            rid = request_id or str(uuid.uuid4())
            fail = self._fail_task.pop(0) if self._fail_task else None
            task = _Task(rid, lb_id, time.monotonic() + self.task_delay_s, changes, fail)
            self._tasks[rid] = task
            heapq.heappush(self._queue, (task.due, next(self._seq), rid))
            self._run_due()
            self._wake.notify_all()
        return rid

    def _run_due(self) -> None:
        """Apply the tasks that are due (lock held); queue the changed pools for on_change."""
        now = time.monotonic()
        changed: dict[tuple[str, str, str | None], None] = {}
        while self._queue and self._queue[0][0] <= now:
            _, _, rid = heapq.heappop(self._queue)
            task = self._tasks[rid]
            task.done = True
            if task.fail:
                continue
            for kind, lid, loc, ip, key, weight, inst in task.changes:
                try:
                    rule = self._rule(task.lb_id, lid, loc)
                except KeyError:
                    continue
                if kind == "add" and key not in rule.targets:
                    rule.targets[key] = _Target(ip, key[1], weight, inst, registered_at=now)
                elif kind == "del":
                    rule.targets.pop(key, None)
                elif key in rule.targets:
                    rule.targets[key].weight = weight
                changed[(task.lb_id, lid, loc)] = None
        for lb_id, lid, loc in changed:
            rule = self._rule(lb_id, lid, loc)
            pool = sorted((t.ip, t.port, t.weight) for t in rule.targets.values())
            self._to_fire.append((lb_id, lid, loc, pool))

    def _fire(self) -> None:
        """Call on_change for the changes that took effect, in order, without the lock."""
        with self._fire_lock:
            with self._lock:
                self._run_due()
                batch, self._to_fire = self._to_fire, []
            if self.on_change is not None:
                for lb_id, lid, loc, targets in batch:
                    self.on_change(lb_id, lid, loc, targets)

    def _task_loop(self) -> None:
        while not self._stop.is_set():
            with self._wake:
                wait = 0.5
                if self._queue:
                    wait = max(0.0, min(wait, self._queue[0][0] - time.monotonic()))
                if wait > 0:
                    self._wake.wait(wait)
            self._fire()

    def _lb_busy(self, lb_id: str) -> bool:
        return any(not t.done and t.lb_id == lb_id for t in self._tasks.values())

    # -- health --------------------------------------------------------------------------
    def _probe(self, ip: str, port: int) -> bool:
        if self.health_fn is not None:
            return self.health_fn(ip, port)
        return tcp_alive(ip, port, self.health_timeout_s)

    def _health_loop(self) -> None:
        pool = concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="clb-check")
        try:
            while not self._stop.wait(self.health_interval_s):
                with self._lock:
                    checked = [
                        t
                        for lis in self._lbs.values()
                        for li in lis.values()
                        if li.health_check
                        for rule in (li.default_rule, *li.rules.values())
                        for t in rule.targets.values()
                    ]
                results = list(pool.map(lambda t: self._probe(t.ip, t.port), checked))
                with self._lock:
                    for t, ok in zip(checked, results, strict=True):
                        if ok:
                            t.ok_streak, t.bad_streak = t.ok_streak + 1, 0
                            if t.ok_streak >= self.rise:
                                t.health = "Alive"
                        else:
                            t.ok_streak, t.bad_streak = 0, t.bad_streak + 1
                            if t.bad_streak >= self.fall:
                                t.health = "Dead"
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    # -- the wire ------------------------------------------------------------------------
    def _handle(self, method: str, headers: dict[str, str], body: bytes) -> tuple[int, Json]:
        h = {k.lower(): v for k, v in headers.items()}
        request_id = str(uuid.uuid4())
        action = h.get("x-tc-action", "")
        params: Json = {}
        with self._lock:
            delay = self._slow.get(action, 0.0)
            if delay > 0:
                self._in_flight[action] = self._in_flight.get(action, 0) + 1
        if delay > 0:
            self._stop.wait(delay)
            with self._lock:
                self._in_flight[action] -= 1
        try:
            self._verify(method, h, body)
            try:
                parsed = json.loads(body or b"{}")
            except ValueError:
                raise ApiError("InvalidParameter", "The request body is not valid JSON.") from None
            if not isinstance(parsed, dict):
                raise ApiError("InvalidParameter", "The request body must be a JSON object.")
            params = parsed
            result = self._dispatch(action, params, request_id)
        except ApiError as e:
            self._record(action, params, e.code)
            self._fire()
            return 200, {
                "Response": {
                    "Error": {"Code": e.code, "Message": e.message},
                    "RequestId": request_id,
                }
            }
        self._record(action, params, "ok")
        self._fire()
        return 200, {"Response": {**result, "RequestId": request_id}}

    def _record(self, action: str, params: Json, code: str) -> None:
        with self._lock:
            self.calls.append(CallRecord(action, params, code, time.monotonic()))

    def _verify(self, method: str, h: dict[str, str], body: bytes) -> None:
        """Check the request is signed as the SDK signs it (TC3-HMAC-SHA256)."""
        if method != "POST":
            raise ApiError("InvalidParameter", "Only POST requests are emulated.")
        auth = h.get("authorization", "")
        algo, _, rest = auth.partition(" ")
        if algo != "TC3-HMAC-SHA256":
            raise ApiError("AuthFailure.InvalidAuthorization", "Authorization is not TC3.")
        fields = dict(part.strip().split("=", 1) for part in rest.split(",") if "=" in part.strip())
        cred = fields.get("Credential", "").split("/")
        signed = fields.get("SignedHeaders", "")
        signature = fields.get("Signature", "")
        if len(cred) != 4 or cred[3] != "tc3_request" or not signed or not signature:
            raise ApiError("AuthFailure.InvalidAuthorization", "Authorization is malformed.")
        secret_id, date, service = cred[0], cred[1], cred[2]
        if secret_id != self.secret_id:
            raise ApiError(
                "AuthFailure.SecretIdNotFound",
                "The SecretId is not found, please ensure that your SecretId is correct.",
            )
        ts = h.get("x-tc-timestamp", "")
        if not ts.isdigit():
            raise ApiError("MissingParameter", "The request is missing X-TC-Timestamp.")
        if abs(time.time() - int(ts)) > SIGNATURE_WINDOW_S:
            raise ApiError(
                "AuthFailure.SignatureExpire",
                "Signature expired. Timestamp and server time cannot differ by more than"
                " five minutes.",
            )
        if service != SERVICE or date != dt.datetime.fromtimestamp(int(ts), dt.UTC).strftime(
            "%Y-%m-%d"
        ):
            raise ApiError("AuthFailure.SignatureFailure", "The credential scope is invalid.")
        names = signed.split(";")
        if "content-type" not in names or "host" not in names:
            raise ApiError("AuthFailure.SignatureFailure", "content-type and host must be signed.")
        canonical_headers = "".join(f"{n}:{h.get(n, '').strip().lower()}\n" for n in names)
        if h.get("x-tc-content-sha256") == "UNSIGNED-PAYLOAD":
            payload_hash = hashlib.sha256(b"UNSIGNED-PAYLOAD").hexdigest()
        else:
            payload_hash = hashlib.sha256(body).hexdigest()
        canonical = f"POST\n/\n\n{canonical_headers}\n{signed}\n{payload_hash}"
        want = tc3_signature(self.secret_key, date, ts, canonical)
        if not hmac.compare_digest(want, signature):
            raise ApiError(
                "AuthFailure.SignatureFailure",
                "The provided credentials could not be validated. Please check your signature"
                " is correct.",
            )
        if not h.get("content-type", "").startswith("application/json"):
            raise ApiError("InvalidParameter", "Content-Type must be application/json.")
        if h.get("x-tc-version") != VERSION:
            raise ApiError("NoSuchVersion", "The API version does not exist.")
        if not h.get("x-tc-region"):
            raise ApiError("MissingParameter", "The request is missing the Region parameter.")
        if h.get("x-tc-region") != self.region:
            raise ApiError("UnsupportedRegion", "The API does not support this region.")

    def _throttle(self, action: str) -> None:
        if self.rate_limit_per_s is None:
            return
        second = int(time.monotonic())
        with self._lock:
            start, count = self._window.get(action, (second, 0))
            count = count + 1 if start == second else 1
            self._window[action] = (second, count)
        if count > self.rate_limit_per_s:
            raise ApiError(
                "RequestLimitExceeded",
                f"Your current request times equals to `{count}` in a second, which exceeds the"
                f" frequency limit `{self.rate_limit_per_s}` for a second. Please reduce the"
                " frequency of calls.",
            )

    def _dispatch(self, action: str, p: Json, request_id: str) -> Json:
        if action not in ACTIONS:
            raise ApiError("InvalidAction", f"The action {action!r} is not emulated.")
        with self._lock:
            injected = self._fail_next.get(action)
            if injected:
                code, message = injected.pop(0)
                raise ApiError(code, message)
            if action in self._denied:
                raise ApiError(
                    "UnauthorizedOperation",
                    f"[request id:{request_id}]you are not authorized to perform operation"
                    f" (clb:{action})\nresource (qcs::clb:{self.region}:uin/100000000001:clb/*)"
                    " has no permission\n",
                )
        self._throttle(action)
        handler: Callable[[Json, str], Json] = getattr(self, f"_{action}")
        with self._lock:
            return handler(p, request_id)

    # -- validation helpers ----------------------------------------------------------------
    @staticmethod
    def _req(p: Json, name: str, kind: type) -> Any:
        if name not in p or p[name] is None:
            raise ApiError(
                "MissingParameter", f"The request is missing a required parameter `{name}`."
            )
        value = p[name]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ApiError("InvalidParameter", f"`{name}` must be an integer.")
        if not isinstance(value, kind):
            raise ApiError("InvalidParameter", f"`{name}` must be of type {kind.__name__}.")
        return value

    def _lb(self, lb_id: str) -> dict[str, _Listener]:
        try:
            return self._lbs[lb_id]
        except KeyError:
            raise ApiError(
                "InvalidParameter.LBIdNotFound", f"LoadBalancer({lb_id}) not found."
            ) from None

    def _listener(self, lb_id: str, lid: str) -> _Listener:
        try:
            return self._lb(lb_id)[lid]
        except KeyError:
            raise ApiError(
                "InvalidParameter.ListenerIdNotFound", f"Listener({lid}) not found in {lb_id}."
            ) from None

    def _rule(self, lb_id: str, lid: str, loc: str | None) -> _Rule:
        li = self._lbs[lb_id][lid]
        if not li.layer7:
            return li.default_rule
        if loc is None:
            raise KeyError(f"{li.protocol} listener {lid} needs a location")
        return li.rules[loc]

    def _api_rule(self, lb_id: str, lid: str, loc: str | None) -> str | None:
        """The pool's location (None on layer 4) after checking the listener and rule exist."""
        li = self._listener(lb_id, lid)
        if not li.layer7:
            return None
        if not loc:
            raise ApiError(
                "InvalidParameter", f"LocationId is required for {li.protocol} listener {lid}."
            )
        if loc not in li.rules:
            raise ApiError("InvalidParameter.LocationNotFound", f"Location({loc}) not found.")
        return loc

    def _visible(self, t: _Target) -> bool:
        return time.monotonic() >= t.registered_at + self.describe_lag_s

    def _pending(self, lb_id: str) -> Iterator[tuple[str, str, str | None, TargetKey]]:
        for task in self._tasks.values():
            if task.lb_id == lb_id and not task.done and not task.fail:
                for kind, lid, loc, _ip, key, _w, _i in task.changes:
                    yield kind, lid, loc, key

    def _will_have(self, lb_id: str, lid: str, loc: str | None) -> set[TargetKey]:
        """The targets a pool has once the pending tasks are done."""
        have = set(self._rule(lb_id, lid, loc).targets)
        for kind, plid, ploc, key in self._pending(lb_id):
            if (plid, ploc) != (lid, loc):
                continue
            if kind == "add":
                have.add(key)
            elif kind == "del":
                have.discard(key)
        return have

    def _member(self, t: Json, where: str) -> tuple[str, TargetKey, str | None]:
        """(ip, key, instance id) of a BatchTarget / Target."""
        port = self._req(t, "Port", int)
        if not 0 < port < 65536:
            raise ApiError("InvalidParameterValue", f"{where}.Port {port} is out of range.")
        eni, inst = t.get("EniIp"), t.get("InstanceId")
        if bool(eni) == bool(inst):
            raise ApiError(
                "InvalidParameter", f"{where}: exactly one of InstanceId and EniIp is required."
            )
        if inst:
            if inst not in self._instances:
                raise ApiError("InvalidParameter", f"{where}: instance {inst} not found.")
            return self._instances[inst], (inst, port), inst
        return str(eni), (str(eni), port), None

    def _write_guard(self, lb_id: str) -> None:
        self._lb(lb_id)
        if self.lock_during_task and self._lb_busy(lb_id):
            raise ApiError(
                "FailedOperation.ResourceInOperating",
                f"LoadBalancer({lb_id}) is being operated on by another task, try again later.",
            )

    # -- actions ---------------------------------------------------------------------------
    def _listener_json(self, li: _Listener) -> Json:
        out: Json = {
            "ListenerId": li.listener_id,
            "Protocol": li.protocol,
            "Port": li.port,
            "ListenerName": f"{li.protocol.lower()}-{li.port}",
            "Scheduler": "WRR",
            "EndPort": 0,
            "TargetType": "NODE",
        }
        check = {"HealthSwitch": 1 if li.health_check else 0, "IntervalTime": 5}
        if li.layer7:
            out["Rules"] = [
                {
                    "LocationId": r.location_id,
                    "Domain": r.domain,
                    "Url": r.url,
                    "ListenerId": li.listener_id,
                    "HealthCheck": check,
                    "Scheduler": "WRR",
                }
                for r in li.rules.values()
            ]
        else:
            out["HealthCheck"] = check
        return out

    def _DescribeListeners(self, p: Json, _rid: str) -> Json:
        lis = self._lb(self._req(p, "LoadBalancerId", str))
        ids = p.get("ListenerIds")
        if ids is not None and len(ids) > 100:
            raise ApiError("InvalidParameter", "ListenerIds holds at most 100 IDs.")
        out = [
            self._listener_json(li)
            for li in lis.values()
            if (not ids or li.listener_id in ids)
            and (p.get("Protocol") in (None, li.protocol))
            and (p.get("Port") in (None, li.port))
        ]
        return {"Listeners": out, "TotalCount": len(out)}

    def _backend_json(self, t: _Target) -> Json:
        return {
            "Type": "CVM" if t.instance_id else "ENI",
            "InstanceId": t.instance_id or "",
            "Port": t.port,
            "Weight": t.weight,
            "PublicIpAddresses": [],
            "PrivateIpAddresses": [t.ip],
            "InstanceName": "",
            "RegisteredTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "EniId": "" if t.instance_id else "eni-00000000",
        }

    def _DescribeTargets(self, p: Json, _rid: str) -> Json:
        lis = self._lb(self._req(p, "LoadBalancerId", str))
        ids = p.get("ListenerIds")
        if ids is not None and len(ids) > MAX_DESCRIBE_LISTENERS:
            raise ApiError(
                "InvalidParameter", f"ListenerIds holds at most {MAX_DESCRIBE_LISTENERS} IDs."
            )
        out = []
        for li in lis.values():
            if ids and li.listener_id not in ids:
                continue
            if p.get("Protocol") not in (None, li.protocol) or p.get("Port") not in (None, li.port):
                continue
            entry: Json = {"ListenerId": li.listener_id, "Protocol": li.protocol, "Port": li.port}
            entry["EndPort"] = 0
            if li.layer7:
                entry["Rules"] = [
                    {
                        "LocationId": r.location_id,
                        "Domain": r.domain,
                        "Url": r.url,
                        "Targets": [
                            self._backend_json(t) for t in r.targets.values() if self._visible(t)
                        ],
                    }
                    for r in li.rules.values()
                ]
            else:
                entry["Targets"] = [
                    self._backend_json(t)
                    for t in li.default_rule.targets.values()
                    if self._visible(t)
                ]
            out.append(entry)
        return {"Listeners": out}

    def _DescribeTargetHealth(self, p: Json, _rid: str) -> Json:
        lb_ids = self._req(p, "LoadBalancerIds", list)
        if len(lb_ids) > MAX_HEALTH_LBS:
            raise ApiError("InvalidParameter", f"LoadBalancerIds holds at most {MAX_HEALTH_LBS}.")
        want_l, want_loc = p.get("ListenerIds"), p.get("LocationIds")
        out = []
        for lb_id in lb_ids:
            lis = self._lb(lb_id)
            listeners = []
            for li in lis.values():
                if want_l and li.listener_id not in want_l:
                    continue
                rules = li.rules.values() if li.layer7 else [li.default_rule]
                rjson = []
                for r in rules:
                    if want_loc and r.location_id not in want_loc:
                        continue
                    targets = []
                    for t in r.targets.values():
                        if not self._visible(t):
                            continue
                        detail = t.health if li.health_check else "Close"
                        targets.append(
                            {
                                "IP": t.ip,
                                "Port": t.port,
                                "HealthStatus": detail == "Alive",
                                "TargetId": t.instance_id or t.ip,
                                "HealthStatusDetail": detail,
                                "HealthStatusDetial": detail,
                                "Weight": t.weight,
                            }
                        )
                    rjson.append(
                        {
                            "LocationId": r.location_id,
                            "Domain": r.domain,
                            "Url": r.url,
                            "Targets": targets,
                        }
                    )
                listeners.append(
                    {
                        "ListenerId": li.listener_id,
                        "ListenerName": f"{li.protocol.lower()}-{li.port}",
                        "Protocol": li.protocol,
                        "Port": li.port,
                        "Rules": rjson,
                    }
                )
            out.append({"LoadBalancerId": lb_id, "LoadBalancerName": lb_id, "Listeners": listeners})
        return {"LoadBalancers": out}

    def _batch_targets(self, p: Json) -> tuple[str, list[Json]]:
        lb_id = self._req(p, "LoadBalancerId", str)
        targets = self._req(p, "Targets", list)
        if not targets:
            raise ApiError("InvalidParameter", "Targets must not be empty.")
        if len(targets) > MAX_BATCH_TARGETS:
            raise ApiError(
                "InvalidParameter", f"Targets holds at most {MAX_BATCH_TARGETS} servers a call."
            )
        return lb_id, targets

    def _BatchRegisterTargets(self, p: Json, rid: str) -> Json:
        lb_id, targets = self._batch_targets(p)
        self._write_guard(lb_id)
        changes = []
        per_pool: dict[tuple[str, str | None], list[TargetKey]] = {}
        for n, t in enumerate(targets):
            where = f"Targets.{n}"
            lid = self._req(t, "ListenerId", str)
            loc = self._api_rule(lb_id, lid, t.get("LocationId") or None)
            ip, key, inst = self._member(t, where)
            weight = t.get("Weight", 10)
            if not isinstance(weight, int) or not 0 <= weight <= 100:
                raise ApiError("InvalidParameterValue", f"{where}.Weight must be in 0..100.")
            per_pool.setdefault((lid, loc), []).append(key)
            changes.append(("add", lid, loc, ip, key, weight, inst))
        failed: dict[str, str] = {}
        for (lid, loc), keys in per_pool.items():
            have = self._will_have(lb_id, lid, loc)
            dup = [k for k in keys if k in have]
            if dup:
                failed[lid] = f"RS {', '.join(f'{a}:{b}' for a, b in dup)} already bound"
            limit = self.max_targets_per_listener
            if limit is not None and len(have | set(keys)) > limit:
                raise ApiError(
                    "LimitExceeded",
                    f"The number of backends of listener {lid} would exceed its quota of {limit}.",
                )
        changes = [c for c in changes if c[1] not in failed]
        if changes:
            self._schedule(lb_id, changes, rid)
        return {"FailListenerIdSet": sorted(failed), "Message": "; ".join(failed.values())}

    def _BatchDeregisterTargets(self, p: Json, rid: str) -> Json:
        lb_id, targets = self._batch_targets(p)
        self._write_guard(lb_id)
        changes = []
        failed: dict[str, str] = {}
        for n, t in enumerate(targets):
            lid = self._req(t, "ListenerId", str)
            loc = self._api_rule(lb_id, lid, t.get("LocationId") or None)
            ip, key, inst = self._member(t, f"Targets.{n}")
            if key not in self._will_have(lb_id, lid, loc):
                failed[lid] = f"RS {key[0]}:{key[1]} is not bound to listener {lid}"
            changes.append(("del", lid, loc, ip, key, 0, inst))
        changes = [c for c in changes if c[1] not in failed]
        if changes:
            self._schedule(lb_id, changes, rid)
        return {"FailListenerIdSet": sorted(failed), "Message": "; ".join(failed.values())}

    def _BatchModifyTargetWeight(self, p: Json, rid: str) -> Json:
        lb_id = self._req(p, "LoadBalancerId", str)
        rules = self._req(p, "ModifyList", list)
        if not rules or len(rules) > MAX_WEIGHT_RULES:
            raise ApiError("InvalidParameter", f"ModifyList holds 1 to {MAX_WEIGHT_RULES} rules.")
        if sum(len(r.get("Targets") or ()) for r in rules) > MAX_WEIGHT_TARGETS:
            raise ApiError(
                "InvalidParameter", f"At most {MAX_WEIGHT_TARGETS} targets in all a call."
            )
        self._write_guard(lb_id)
        changes = []
        for n, rule in enumerate(rules):
            lid = self._req(rule, "ListenerId", str)
            loc = self._api_rule(lb_id, lid, rule.get("LocationId") or None)
            targets = self._req(rule, "Targets", list)
            if len(targets) > MAX_WEIGHT_RULE_TARGETS:
                raise ApiError(
                    "InvalidParameter",
                    f"ModifyList.{n}.Targets holds at most {MAX_WEIGHT_RULE_TARGETS} servers.",
                )
            have = self._will_have(lb_id, lid, loc)
            for m, t in enumerate(targets):
                where = f"ModifyList.{n}.Targets.{m}"
                ip, key, inst = self._member(t, where)
                weight = t.get("Weight", rule.get("Weight"))
                if weight is None:
                    raise ApiError("MissingParameter", f"{where}.Weight is required.")
                if not isinstance(weight, int) or not 0 <= weight <= 100:
                    raise ApiError("InvalidParameterValue", f"{where}.Weight must be in 0..100.")
                if key not in have:
                    raise ApiError(
                        "InvalidParameter", f"RS {key[0]}:{key[1]} is not bound to listener {lid}."
                    )
                changes.append(("weight", lid, loc, ip, key, weight, inst))
        self._schedule(lb_id, changes, rid)
        return {}

    def _DescribeTaskStatus(self, p: Json, _rid: str) -> Json:
        task_id = p.get("TaskId")
        if not task_id and not p.get("DealName"):
            raise ApiError("MissingParameter", "Either TaskId or DealName is required.")
        self._run_due()
        task = self._tasks.get(str(task_id))
        if task is None:
            raise ApiError("InvalidParameter", f"Task({task_id}) not found.")
        if not task.done:
            return {"Status": 2, "LoadBalancerIds": [task.lb_id], "Message": ""}
        if task.fail:
            return {"Status": 1, "LoadBalancerIds": [task.lb_id], "Message": task.fail}
        return {"Status": 0, "LoadBalancerIds": [task.lb_id], "Message": ""}
