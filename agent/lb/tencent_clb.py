"""Tencent Cloud CLB provider: pools are CLB listeners (layer 4) or forwarding rules (layer 7).

Only this module imports the Tencent Cloud SDK (``tencentcloud-sdk-python-clb``, API version
2018-03-17). The decisions are pure functions over the API's JSON, tested table-driven:

* :func:`parse_pool` reads a pool name: ``<lb-id>/<listener>[/<location-id>]``, the listener
  an ID (``lbl-...``) or ``PROTO:PORT`` (``TCP:80``), resolved by :func:`resolve_pool` against
  a DescribeListeners answer;
* :func:`build_pool_state` joins DescribeTargets and DescribeTargetHealth into a
  :class:`PoolState` (:func:`target_name`, :func:`health_of`);
* :func:`plan_calls` turns :class:`Action` s into write calls chunked to the documented limits;
* :func:`classify_error` sorts an error code into the few classes we act on.

I/O: every call goes through :meth:`TencentCLBProvider._call`: bounded backoff and retry for
throttling (``RequestLimitExceeded*``), a busy LB (``FailedOperation.ResourceInOperating``) and
network errors, then :class:`TransientError`; refused credentials raise :class:`LBAuthError`
and block further calls for ``auth_backoff_s`` without reaching the API. The write APIs are
asynchronous: each returns a RequestId that is polled with DescribeTaskStatus.

Documented limits (CLB API 2018-03-17, https://www.tencentcloud.com/document/api/214/33843,
/33844, /33845 and the SDK's model docs): BatchRegisterTargets and BatchDeregisterTargets take
up to 500 targets a call; BatchModifyTargetWeight up to 100 rules of at most 50 targets, 500 in
all; DescribeTargets up to 20 listener IDs; every API 20 requests a second.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import logging
import re
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tencentcloud.clb.v20180317 import clb_client, models
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import (
    TencentCloudSDKException,
)
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile

from agent.clock import Clock
from agent.errors import PermanentError, TransientError
from agent.lb.base import (
    Action,
    AdminState,
    ApplyResult,
    Health,
    LBAuthError,
    LBQuotaError,
    ObservedServer,
    Op,
    PoolNotFound,
    PoolState,
    canonical_ip,
    server_name,
    split_batches,
)
from agent.lb.fence import fenced

log = logging.getLogger(__name__)

API_VERSION = "2018-03-17"
DEFAULT_ENDPOINT = "clb.tencentcloudapi.com"

# Per-call limits, documented (see the module docstring).
MAX_BATCH_TARGETS = 500  # BatchRegisterTargets / BatchDeregisterTargets Targets.N
MAX_WEIGHT_RULES = 100  # BatchModifyTargetWeight ModifyList.N
MAX_WEIGHT_RULE_TARGETS = 50  # ModifyList[i].Targets.N
MAX_WEIGHT_TARGETS = 500  # all Targets of one BatchModifyTargetWeight
MAX_DESCRIBE_LISTENERS = 20  # DescribeTargets ListenerIds.N
MAX_WEIGHT = 100
DEFAULT_WEIGHT = 10  # what CLB gives a target registered without a weight

LAYER7 = frozenset({"HTTP", "HTTPS"})
PROTOCOLS = frozenset({"TCP", "UDP", "HTTP", "HTTPS", "TCP_SSL", "QUIC"})
TASK_OK, TASK_FAILED, TASK_RUNNING = 0, 1, 2

_LB_ID = re.compile(r"lb-[a-z0-9]+")
_LISTENER_ID = re.compile(r"lbl-[a-z0-9]+")
_LOCATION_ID = re.compile(r"loc-[a-z0-9]+")
_PROTO_PORT = re.compile(r"([A-Z_]+):(\d{1,5})")

T = TypeVar("T")
JSON = dict[str, Any]


# -- pool names (pure) ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PoolRef:
    """A parsed pool name; ``listener_id`` or ``protocol`` + ``port`` names the listener."""

    lb_id: str
    listener_id: str | None = None
    protocol: str | None = None
    port: int | None = None
    location_id: str | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """The pool a resolved :class:`PoolRef` names: a listener, and a rule on layer 7."""

    lb_id: str
    listener_id: str
    protocol: str
    location_id: str | None
    health_check: bool  # the listener (layer 4) or rule (layer 7) checks its targets


def parse_pool(pool: str) -> PoolRef:
    """``<lb-id>/<lbl-id | PROTO:PORT>[/<loc-id>]``; :class:`PoolNotFound` when malformed."""
    expected = "expected <lb-id>/<listener-id or PROTO:PORT>[/<location-id>], e.g. lb-abc/TCP:80"
    parts = pool.split("/")
    if len(parts) not in (2, 3) or not _LB_ID.fullmatch(parts[0]):
        raise PoolNotFound(f"CLB pool {pool!r} is malformed: {expected}")
    lb_id, listener = parts[0], parts[1]
    location = parts[2] if len(parts) == 3 else None
    if location is not None and not _LOCATION_ID.fullmatch(location):
        raise PoolNotFound(f"CLB pool {pool!r}: {location!r} is not a location ID (loc-...)")
    if _LISTENER_ID.fullmatch(listener):
        return PoolRef(lb_id, listener_id=listener, location_id=location)
    m = _PROTO_PORT.fullmatch(listener)
    if m and m[1] in PROTOCOLS and 0 < int(m[2]) < 65536:
        return PoolRef(lb_id, protocol=m[1], port=int(m[2]), location_id=location)
    raise PoolNotFound(
        f"CLB pool {pool!r}: {listener!r} is neither a listener ID (lbl-...) nor PROTO:PORT"
        f" with PROTO one of {', '.join(sorted(PROTOCOLS))}"
    )


def _switch_on(health_check: Any) -> bool:
    """HealthCheck.HealthSwitch: 1 on, 0 off; a missing block counts as on (the default)."""
    if not isinstance(health_check, Mapping):
        return True
    return health_check.get("HealthSwitch") != 0


def resolve_pool(pool: str, ref: PoolRef, listeners: Sequence[JSON]) -> Target:
    """The listener (and rule) ``ref`` names among a DescribeListeners answer's ``Listeners``;
    :class:`PoolNotFound` when there is none, or when a layer-7 pool names no rule."""
    for li in listeners:
        if ref.listener_id is not None:
            if li.get("ListenerId") != ref.listener_id:
                continue
        elif (li.get("Protocol"), li.get("Port")) != (ref.protocol, ref.port):
            continue
        protocol = str(li.get("Protocol") or "")
        lid = str(li["ListenerId"])
        if protocol in LAYER7:
            if ref.location_id is None:
                raise PoolNotFound(
                    f"CLB pool {pool!r}: {protocol} listener {lid} needs a location ID"
                    " (<lb-id>/<listener>/<loc-id>): its targets sit on forwarding rules"
                )
            for rule in li.get("Rules") or ():
                if rule.get("LocationId") == ref.location_id:
                    return Target(
                        ref.lb_id,
                        lid,
                        protocol,
                        ref.location_id,
                        _switch_on(rule.get("HealthCheck")),
                    )
            raise PoolNotFound(f"CLB pool {pool!r}: listener {lid} has no rule {ref.location_id}")
        if ref.location_id is not None:
            raise PoolNotFound(
                f"CLB pool {pool!r}: {protocol} listener {lid} has no forwarding rules;"
                " drop the location ID"
            )
        return Target(ref.lb_id, lid, protocol, None, _switch_on(li.get("HealthCheck")))
    raise PoolNotFound(f"CLB pool {pool!r}: load balancer {ref.lb_id} has no such listener")


# -- observation (pure) ---------------------------------------------------------------------
def as_printed(ip: str) -> str:
    """:func:`canonical_ip`, or the text as it came when the CLB sent no IP address."""
    try:
        return canonical_ip(ip)
    except ValueError:
        return ip


def target_name(backend: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(name, address)`` of a DescribeTargets ``Backend``; None when it has no address.

    IP targets (ENI and the other non-CVM types) are named like the leader names backends, so
    it manages them; CVM instance targets ``<InstanceId>_<port>``, a name the leader never
    plans, so it leaves them alone."""
    port = int(backend.get("Port") or 0)
    ips = [ip for ip in backend.get("PrivateIpAddresses") or () if ip]
    address = as_printed(ips[0]) if ips else ""
    if backend.get("Type") == "CVM" and backend.get("InstanceId"):
        return f"{backend['InstanceId']}_{port}", address or str(backend["InstanceId"])
    if not address:
        return None
    return server_name(address, port), address


def health_of(entry: Mapping[str, Any] | None, health_check: bool) -> Health:
    """The CLB's verdict on one target.

    * health checks off on the listener (or rule), or ``HealthStatusDetail`` ``Close``: UP.
      CLB then forwards to every target with a weight, so there is nothing to wait for;
    * no DescribeTargetHealth entry yet (just registered) or ``Unknown``: CHECKING;
    * ``Alive``: UP, ``Dead``: DOWN; without a detail, ``HealthStatus`` true/false.
    """
    if not health_check:
        return Health.UP
    if entry is None:
        return Health.CHECKING
    detail = entry.get("HealthStatusDetail") or entry.get("HealthStatusDetial")
    if detail == "Close":
        return Health.UP
    if detail == "Alive":
        return Health.UP
    if detail == "Dead":
        return Health.DOWN
    if detail == "Unknown":
        return Health.CHECKING
    status = entry.get("HealthStatus")
    if status is True:
        return Health.UP
    if status is False:
        return Health.DOWN
    return Health.UNKNOWN


def pool_backends(target: Target, describe_listeners: Iterable[JSON]) -> list[JSON] | None:
    """The ``Backend`` s of ``target`` in a DescribeTargets ``Listeners`` answer (None when the
    listener, or its rule, is not in the answer)."""
    for lb in describe_listeners:
        if lb.get("ListenerId") != target.listener_id:
            continue
        if target.location_id is None:
            return list(lb.get("Targets") or ())
        for rule in lb.get("Rules") or ():
            if rule.get("LocationId") == target.location_id:
                return list(rule.get("Targets") or ())
        return None
    return None


def health_index(
    load_balancers: Iterable[JSON],
) -> dict[tuple[str, str | None, str, int], JSON]:
    """DescribeTargetHealth ``LoadBalancers`` keyed by (listener, location, ip, port).

    Layer-4 listeners report their targets under one rule too: those are also keyed with
    location None."""
    out: dict[tuple[str, str | None, str, int], JSON] = {}
    for lb in load_balancers:
        for li in lb.get("Listeners") or ():
            lid = str(li.get("ListenerId"))
            for rule in li.get("Rules") or ():
                loc = rule.get("LocationId") or None
                for t in rule.get("Targets") or ():
                    ip, port = as_printed(str(t.get("IP") or "")), int(t.get("Port") or 0)
                    out[(lid, loc, ip, port)] = t
                    out.setdefault((lid, None, ip, port), t)
    return out


def build_pool_state(
    pool: str,
    target: Target,
    backends: Iterable[JSON],
    health: Mapping[tuple[str, str | None, str, int], JSON],
) -> PoolState:
    """One :class:`PoolState`: weight 0 is DRAIN (CLB sends no new connections), else READY;
    sessions unknown (CLB does not report them per target)."""
    servers: dict[str, ObservedServer] = {}
    for b in backends:
        named = target_name(b)
        if named is None:
            continue
        name, address = named
        port, weight = int(b.get("Port") or 0), int(b.get("Weight") or 0)
        entry = health.get((target.listener_id, target.location_id, address, port))
        servers[name] = ObservedServer(
            name=name,
            address=address,
            port=port,
            weight=weight,
            admin=AdminState.READY if weight > 0 else AdminState.DRAIN,
            health=health_of(entry, target.health_check),
            sessions=None,
        )
    return PoolState(pool, servers)


# -- errors (pure) --------------------------------------------------------------------------
class ErrorClass(enum.StrEnum):
    THROTTLED = "throttled"  # retry after a backoff
    BUSY = "busy"  # the LB runs another task: retry after a backoff
    NETWORK = "error"  # no answer, or a server-side error: retry
    AUTH = "auth"
    QUOTA = "quota"
    NOT_FOUND = "not_found"  # the LB, listener or rule does not exist
    REJECTED = "rejected"


_NOT_FOUND = frozenset(
    {
        "InvalidParameter.LBIdNotFound",
        "InvalidParameter.ListenerIdNotFound",
        "InvalidParameter.LocationNotFound",
        "ResourceNotFound",
    }
)
_NETWORK = frozenset({"ClientNetworkError", "ServerNetworkError", "InternalError"})


def classify_error(code: str) -> ErrorClass:
    """The class of an API error code (common and CLB codes, API 2018-03-17)."""
    head = code.split(".", 1)[0]
    if head == "RequestLimitExceeded":
        return ErrorClass.THROTTLED
    if code == "FailedOperation.ResourceInOperating":
        return ErrorClass.BUSY
    if head in ("AuthFailure", "UnauthorizedOperation"):
        return ErrorClass.AUTH
    if head == "LimitExceeded":
        return ErrorClass.QUOTA
    if code in _NOT_FOUND or head == "ResourceNotFound":
        return ErrorClass.NOT_FOUND
    if head in _NETWORK or code.startswith("InternalError"):
        return ErrorClass.NETWORK
    return ErrorClass.REJECTED


def outcome_label(cls: ErrorClass | None) -> str:
    """The bounded ``on_call`` outcome: ok, throttled, auth, quota, rejected or error."""
    if cls is None:
        return "ok"
    if cls in (ErrorClass.THROTTLED, ErrorClass.BUSY):
        return "throttled"
    if cls is ErrorClass.NOT_FOUND:
        return "rejected"
    return str(cls)


def auth_message(action: str, code: str, message: str) -> str:
    """What an operator must fix, from an auth error."""
    if code.startswith("UnauthorizedOperation") or code == "AuthFailure.UnauthorizedOperation":
        return (
            f"Tencent Cloud refused {action}: the credential's CAM policy lacks clb:{action}"
            f" ({code}: {message})"
        )
    return (
        f"Tencent Cloud refused the credentials on {action} ({code}: {message}); check"
        " PODLB_TENCENT_SECRET_ID / PODLB_TENCENT_SECRET_KEY and the clock"
    )


# -- writes (pure) --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Member:
    """One target as the write APIs name it: an IP (``EniIp``) or a CVM (``InstanceId``)."""

    port: int
    ip: str | None = None
    instance_id: str | None = None

    def fields(self) -> JSON:
        if self.instance_id is not None:
            return {"InstanceId": self.instance_id, "Port": self.port}
        return {"EniIp": self.ip, "Port": self.port}


def member_of(action: Action) -> Member:
    """The target an action names: its address and port, else parsed from the server name
    (``<ip with ':' as '-'>_<port>`` or ``<InstanceId>_<port>``). ``ValueError`` otherwise."""
    if action.address is not None and action.port is not None:
        ip = ipaddress.ip_address(action.address).compressed
        port = action.port
    else:
        head, sep, port_s = action.server.rpartition("_")
        if not sep or not port_s.isdigit():
            raise ValueError(f"server {action.server!r} is not <address>_<port>")
        port = int(port_s)
        if head.startswith("ins-"):
            if not 0 < port < 65536:
                raise ValueError(f"port {port} out of range")
            return Member(port, instance_id=head)
        ip = ipaddress.ip_address(head.replace("-", ":")).compressed
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return Member(port, ip=ip)


def weight_of(action: Action) -> int:
    """The CLB weight an action sets: DRAIN 0, ADD its weight (else CLB's default 10),
    SET_WEIGHT and ENABLE their weight (required), in 0..100."""
    if action.op is Op.DRAIN:
        return 0
    if action.weight is None:
        if action.op is Op.ADD:
            return DEFAULT_WEIGHT
        raise ValueError(f"{action.op} needs a weight")
    if not 0 <= action.weight <= MAX_WEIGHT:
        raise ValueError(f"weight {action.weight} outside CLB's 0..{MAX_WEIGHT}")
    return int(action.weight)


class Call(enum.StrEnum):
    REGISTER = "BatchRegisterTargets"
    WEIGHT = "BatchModifyTargetWeight"
    DEREGISTER = "BatchDeregisterTargets"


_CALL_OF = {
    Op.ADD: Call.REGISTER,
    Op.SET_WEIGHT: Call.WEIGHT,
    Op.ENABLE: Call.WEIGHT,
    Op.DRAIN: Call.WEIGHT,
    Op.REMOVE: Call.DEREGISTER,
}
# Within a batch: deregister first (frees quota), re-weight, then register.
# Removals (of targets already at weight 0) free quota; then new capacity; re-weights (drains
# among them) last, so capacity is added before any is taken away.
CALL_ORDER = (Call.DEREGISTER, Call.REGISTER, Call.WEIGHT)


@dataclass(frozen=True, slots=True)
class Item:
    action: Action
    member: Member
    weight: int | None  # REGISTER / WEIGHT


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    if size < 1:
        raise ValueError("chunk size >= 1")
    return [items[i : i + size] for i in range(0, len(items), size)]


def call_limit(call: Call) -> int:
    return MAX_WEIGHT_TARGETS if call is Call.WEIGHT else MAX_BATCH_TARGETS


def plan_calls(
    actions: Sequence[Action],
) -> tuple[list[tuple[Call, list[Item]]], list[tuple[Action, str]]]:
    """Write calls for ``actions`` (batches that name a server once, in order; within one:
    deregister, register, re-weight), each within the call's limit; and the actions that
    cannot be expressed, with the reason."""
    calls: list[tuple[Call, list[Item]]] = []
    invalid: list[tuple[Action, str]] = []
    for batch in split_batches(actions):
        groups: dict[Call, list[Item]] = {c: [] for c in CALL_ORDER}
        for a in batch:
            try:
                member = member_of(a)
                weight = None if a.op is Op.REMOVE else weight_of(a)
            except ValueError as e:
                invalid.append((a, f"invalid: {e}"))
                continue
            groups[_CALL_OF[a.op]].append(Item(a, member, weight))
        for call in CALL_ORDER:
            calls += [(call, list(c)) for c in chunks(groups[call], call_limit(call))]
    return calls, invalid


def request_params(call: Call, target: Target, items: Sequence[Item]) -> JSON:
    """The request of one write call on ``target``'s pool."""
    loc = {"LocationId": target.location_id} if target.location_id else {}
    if call is Call.WEIGHT:
        rules = [
            {
                "ListenerId": target.listener_id,
                **loc,
                "Targets": [{**i.member.fields(), "Weight": i.weight} for i in part],
            }
            for part in chunks(items, MAX_WEIGHT_RULE_TARGETS)
        ]
        if len(rules) > MAX_WEIGHT_RULES:
            raise ValueError("too many weight rules for one call")
        return {"LoadBalancerId": target.lb_id, "ModifyList": rules}
    targets = []
    for i in items:
        t: JSON = {"ListenerId": target.listener_id, **i.member.fields(), **loc}
        if call is Call.REGISTER:
            t["Weight"] = i.weight
        targets.append(t)
    return {"LoadBalancerId": target.lb_id, "Targets": targets}


def idempotent_success(call: Call, message: str) -> bool:
    """A lone target's rejection that means the wanted state already holds: registering a
    target that is bound, deregistering one that is not."""
    text = message.lower()
    if call is Call.REGISTER:
        return "already" in text or (
            "exist" in text and not any(n in text for n in ("not exist", "n't exist", "no exist"))
        )
    if call is Call.DEREGISTER:
        return any(s in text for s in ("not bound", "not exist", "not found", "unbound"))
    return False


# -- I/O ------------------------------------------------------------------------------------
class _Rejected(PermanentError):
    """The API refused a write call (not auth, quota, throttling or a missing pool)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class _AuthBlock:
    until: float
    error: LBAuthError


class TencentCLBProvider:
    """:class:`~agent.lb.base.LBProvider` for Tencent Cloud CLB in one region.

    ``endpoint``: ``None`` for the public ``clb.tencentcloudapi.com`` over HTTPS, or a URL
    (``http://127.0.0.1:8080``, ``https://clb.internal.tencentcloudapi.com``). Calls time out
    after ``timeout_s``; throttling, a busy LB and network errors are retried ``retries`` times,
    waiting ``backoff_s`` doubled each time (at most 8 s), then :class:`TransientError`. A write
    task is polled until done or ``task_timeout_s``. After an auth error every call (or, for a
    missing permission, every call of that action) raises it again for ``auth_backoff_s``
    without reaching the API. ``on_call(action, outcome)`` is called per API call, outcome
    ``ok`` / ``throttled`` / ``auth`` / ``quota`` / ``rejected`` / ``error``.
    """

    name = "tencent-clb"
    default_max_backends: int | None = None
    max_weight = MAX_WEIGHT

    def __init__(
        self,
        *,
        secret_id: str,
        secret_key: str,
        region: str,
        endpoint: str | None = None,
        timeout_s: float = 5.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        task_timeout_s: float = 30.0,
        task_poll_s: float = 0.5,
        listener_cache_s: float = 30.0,
        auth_backoff_s: float = 60.0,
        clock: Clock | None = None,
        on_call: Callable[[str, str], None] | None = None,
    ) -> None:
        if not secret_id or not secret_key:
            raise ValueError("a Tencent Cloud secret id and key are required")
        if not region:
            raise ValueError("a Tencent Cloud region is required (ap-guangzhou, ...)")
        if timeout_s <= 0 or retries < 0 or backoff_s < 0 or task_timeout_s <= 0:
            raise ValueError("timeout_s > 0, retries >= 0, backoff_s >= 0, task_timeout_s > 0")
        if task_poll_s <= 0 or listener_cache_s < 0 or auth_backoff_s < 0:
            raise ValueError("task_poll_s > 0, listener_cache_s >= 0, auth_backoff_s >= 0")
        self.region = region
        self._scheme, self._host = _split_endpoint(endpoint)
        self._secret = (secret_id, secret_key)
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.task_timeout_s = task_timeout_s
        self.task_poll_s = task_poll_s
        self.listener_cache_s = listener_cache_s
        self.auth_backoff_s = auth_backoff_s
        self._clock = clock or Clock()
        self._on_call = on_call
        self._local = threading.local()  # one SDK client (one requests.Session) per thread
        self._lock = threading.Lock()
        self._auth_all: _AuthBlock | None = None  # credentials refused
        self._auth_action: dict[str, _AuthBlock] = {}  # a permission missing
        self._listeners: dict[str, tuple[float, list[JSON]]] = {}
        self._lb_locks: dict[str, threading.Lock] = {}

    def instances(self) -> Sequence[str]:
        return [self.region]

    # -- transport --------------------------------------------------------------------------
    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            http = HttpProfile(
                protocol=self._scheme, endpoint=self._host, reqTimeout=self.timeout_s
            )
            profile = ClientProfile(httpProfile=http, language="en-US")
            cred = credential.Credential(*self._secret)
            client = clb_client.ClbClient(cred, self.region, profile)
            self._local.client = client
        return client

    def _send(self, action: str, params: JSON) -> JSON:
        """One SDK call: the request model, the typed client method, the response as JSON."""
        request = getattr(models, f"{action}Request")()
        request.from_json_string(json.dumps(params))
        with fenced(f"CLB {action}"):  # each request, each retry: only within the term
            response = getattr(self._client(), action)(request)
        out: JSON = json.loads(response.to_json_string())
        return out

    def _note(self, action: str, outcome: str) -> None:
        if self._on_call is not None:
            self._on_call(action, outcome)

    def _check_auth(self, action: str) -> None:
        now = self._clock.monotonic()
        with self._lock:
            for block in (self._auth_all, self._auth_action.get(action)):
                if block is not None and now < block.until:
                    raise block.error

    def _block_auth(self, action: str, code: str, error: LBAuthError) -> None:
        block = _AuthBlock(self._clock.monotonic() + self.auth_backoff_s, error)
        with self._lock:
            if code.startswith("UnauthorizedOperation") or code.endswith(".UnauthorizedOperation"):
                self._auth_action[action] = block
            else:
                self._auth_all = block

    def _call(self, action: str, params: JSON) -> JSON:
        """``action`` with bounded retries; raises the classified error."""
        failures = 0
        while True:
            self._check_auth(action)
            try:
                answer = self._send(action, params)
            except TencentCloudSDKException as e:
                code, message = str(e.code or "ClientError"), str(e.message or "")
                cls = classify_error(code)
                self._note(action, outcome_label(cls))
                if cls is ErrorClass.AUTH:
                    err = LBAuthError(auth_message(action, code, message))
                    self._block_auth(action, code, err)
                    log.error("%s", err)
                    raise err from e
                if cls is ErrorClass.QUOTA:
                    raise LBQuotaError(f"{action}: {code}: {message}") from e
                if cls is ErrorClass.NOT_FOUND:
                    raise PoolNotFound(f"{action}: {code}: {message}") from e
                if cls is ErrorClass.REJECTED:
                    raise _Rejected(code, message) from e
                if failures >= self.retries:
                    raise TransientError(
                        f"CLB {action} failed after {failures + 1} attempts: {code}: {message}"
                    ) from e
                delay = min(8.0, self.backoff_s * (2**failures))
                log.warning("CLB %s: %s (%s), retry in %.2fs", action, code, message, delay)
                failures += 1
                self._clock.sleep(delay)
                continue
            self._note(action, "ok")
            return answer

    # -- listeners --------------------------------------------------------------------------
    def _describe_listeners(self, lb_id: str, *, fresh: bool = False) -> tuple[list[JSON], bool]:
        """The LB's listeners, and whether they came from the cache."""
        now = self._clock.monotonic()
        with self._lock:
            cached = self._listeners.get(lb_id)
        if cached is not None and not fresh and now - cached[0] < self.listener_cache_s:
            return cached[1], True
        answer = self._call("DescribeListeners", {"LoadBalancerId": lb_id})
        listeners = list(answer.get("Listeners") or ())
        with self._lock:
            self._listeners[lb_id] = (now, listeners)
        return listeners, False

    def _resolve(self, pool: str, ref: PoolRef) -> Target:
        """The pool's listener (and rule); a miss in cached listeners asks the API again."""
        listeners, cached = self._describe_listeners(ref.lb_id)
        try:
            return resolve_pool(pool, ref, listeners)
        except PoolNotFound:
            if not cached:
                raise
        return resolve_pool(pool, ref, self._describe_listeners(ref.lb_id, fresh=True)[0])

    def _forget_listeners(self, lb_id: str) -> None:
        with self._lock:
            self._listeners.pop(lb_id, None)

    # -- observe ----------------------------------------------------------------------------
    def _check_instance(self, instance: str) -> None:
        if instance != self.region:
            raise ValueError(f"unknown CLB instance {instance!r} (this provider: {self.region})")

    def observe(self, instance: str, pool: str) -> PoolState:
        """DescribeTargets + DescribeTargetHealth of the pool's LB; :class:`PoolNotFound`."""
        parse_pool(pool)
        states = self._observe(instance, [pool], strict=True)
        if pool not in states:
            raise PoolNotFound(f"CLB pool {pool!r}: not in the load balancer's answer")
        return states[pool]

    def observe_pools(self, instance: str, pools: Collection[str]) -> dict[str, PoolState]:
        """One DescribeTargets (per 20 listeners) and one DescribeTargetHealth per LB for all
        the pools on it; malformed or missing pools are left out (and logged)."""
        return self._observe(instance, pools, strict=False)

    def _observe(
        self, instance: str, pools: Collection[str], *, strict: bool
    ) -> dict[str, PoolState]:
        self._check_instance(instance)
        by_lb: dict[str, list[tuple[str, PoolRef]]] = {}
        for pool in pools:
            try:
                ref = parse_pool(pool)
            except PoolNotFound as e:
                if strict:
                    raise
                log.warning("%s", e)
                continue
            by_lb.setdefault(ref.lb_id, []).append((pool, ref))
        out: dict[str, PoolState] = {}
        for lb_id, refs in by_lb.items():
            try:
                out.update(self._observe_lb(lb_id, refs, strict=strict))
            except PoolNotFound as e:
                if strict:
                    raise
                log.warning("CLB %s: %s", lb_id, e)
        return out

    def _observe_lb(
        self, lb_id: str, refs: Sequence[tuple[str, PoolRef]], *, strict: bool
    ) -> dict[str, PoolState]:
        targets: dict[str, Target] = {}
        for pool, ref in refs:
            try:
                targets[pool] = self._resolve(pool, ref)
            except PoolNotFound as e:
                if strict:
                    raise
                log.warning("%s", e)
        if not targets:
            return {}
        ids = sorted({t.listener_id for t in targets.values()})
        described: list[JSON] = []
        for part in chunks(ids, MAX_DESCRIBE_LISTENERS):
            answer = self._call("DescribeTargets", {"LoadBalancerId": lb_id, "ListenerIds": part})
            described += answer.get("Listeners") or ()
        health = self._call("DescribeTargetHealth", {"LoadBalancerIds": [lb_id]})
        index = health_index(health.get("LoadBalancers") or ())
        out: dict[str, PoolState] = {}
        for pool, target in targets.items():
            backends = pool_backends(target, described)
            if backends is None:
                self._forget_listeners(lb_id)
                if strict:
                    raise PoolNotFound(f"CLB pool {pool!r}: listener gone from DescribeTargets")
                continue
            out[pool] = build_pool_state(pool, target, backends, index)
        return out

    # -- apply ------------------------------------------------------------------------------
    def apply(self, instance: str, pool: str, actions: Sequence[Action]) -> ApplyResult:
        """Run every action; rejected ones land in ``failed`` as ``"<reason>: <message>"``.

        Writes to one LB are serialized here (CLB runs one task per LB at a time); each call
        is followed by polling its task. ``PoolNotFound``, ``LBAuthError`` and
        ``TransientError`` stop the run (some actions may have been applied: observe again).
        """
        self._check_instance(instance)
        ref = parse_pool(pool)
        if not actions:
            return ApplyResult()
        target = self._resolve(pool, ref)
        calls, failed = plan_calls(actions)
        done = 0
        budget = [max(8, 2 * len(calls))]  # extra calls to isolate rejected targets
        for call, items in calls:
            d, f = self._write(call, target, items, budget)
            done += d
            failed += f
        if failed:
            log.info(
                "CLB pool %s: %d actions done, %d failed (first: %s)",
                pool,
                done,
                len(failed),
                failed[0][1],
            )
        return ApplyResult(done=done, failed=tuple(failed))

    def _lb_lock(self, lb_id: str) -> threading.Lock:
        with self._lock:
            return self._lb_locks.setdefault(lb_id, threading.Lock())

    def _write(
        self, call: Call, target: Target, items: Sequence[Item], budget: list[int]
    ) -> tuple[int, list[tuple[Action, str]]]:
        """One write call and its task; a rejected call of several targets is split in halves
        (while ``budget`` lasts) so one bad target does not fail the others."""
        try:
            with self._lb_lock(target.lb_id):
                answer = self._call(str(call), request_params(call, target, items))
                fails = answer.get("FailListenerIdSet") or []
                if fails:
                    raise _Rejected("FailListenerIdSet", str(answer.get("Message") or fails))
                status, message = self._wait_task(str(answer.get("RequestId") or ""))
        except LBQuotaError as e:
            return 0, [(i.action, f"quota: {e}") for i in items]
        except PoolNotFound:
            self._forget_listeners(target.lb_id)
            raise
        except _Rejected as e:
            if len(items) == 1:
                if idempotent_success(call, e.message):
                    return 1, []
                return 0, [(items[0].action, f"rejected: {e}")]
            if budget[0] < 2:
                return 0, [(i.action, f"rejected: {e}") for i in items]
            budget[0] -= 2
            half = len(items) // 2
            d1, f1 = self._write(call, target, items[:half], budget)
            d2, f2 = self._write(call, target, items[half:], budget)
            return d1 + d2, f1 + f2
        if status == TASK_OK:
            return len(items), []
        return 0, [(i.action, f"task: {message}") for i in items]

    def _wait_task(self, request_id: str) -> tuple[int, str]:
        """Poll DescribeTaskStatus until the task ends: (status, message); a task still
        running after ``task_timeout_s`` is reported as failed (it may still complete)."""
        if not request_id:
            return TASK_FAILED, "no RequestId in the answer"
        deadline = self._clock.monotonic() + self.task_timeout_s
        delay = self.task_poll_s
        while True:
            answer = self._call("DescribeTaskStatus", {"TaskId": request_id})
            status = answer.get("Status")
            if status == TASK_OK:
                return TASK_OK, ""
            if status == TASK_FAILED:
                return TASK_FAILED, f"failed: {answer.get('Message') or 'no reason given'}"
            left = deadline - self._clock.monotonic()
            if left <= 0:
                return TASK_FAILED, (
                    f"timeout: task {request_id} still running after {self.task_timeout_s}s"
                )
            self._clock.sleep(min(delay, left))
            delay = min(delay * 2, 2.0)


def _split_endpoint(endpoint: str | None) -> tuple[str, str]:
    """(scheme, host[:port]) for the SDK's HttpProfile."""
    if endpoint is None:
        return "https", DEFAULT_ENDPOINT
    url = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    if url.scheme not in ("http", "https") or not url.netloc or url.path not in ("", "/"):
        raise ValueError(f"CLB endpoint {endpoint!r}: expected http(s)://host[:port]")
    return url.scheme, url.netloc


__all__ = [
    "Call",
    "ErrorClass",
    "Item",
    "Member",
    "PoolRef",
    "Target",
    "TencentCLBProvider",
    "build_pool_state",
    "chunks",
    "classify_error",
    "health_index",
    "health_of",
    "idempotent_success",
    "member_of",
    "outcome_label",
    "parse_pool",
    "plan_calls",
    "pool_backends",
    "request_params",
    "resolve_pool",
    "server_name",
    "target_name",
    "weight_of",
]
