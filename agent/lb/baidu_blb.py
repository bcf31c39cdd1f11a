"""Baidu Cloud application BLB provider: pools are IP groups, members are pod IPs.

Only this module imports the BCE SDK (``bce-python-sdk``, ``AppBlbClient``, API v1). An IP
group is the application BLB's backend set that takes bare IPs (what CCE's direct-to-ENI mode
registers); a listener's policy forwards to it.

Pool names (built by the leader, parsed here by :func:`parse_pool`):

* ``<blb-id>/<ip-group-id>``, e.g. ``lb-a7942975/ip_group-45661177``;
* ``<blb-id>/<PROTO>:<PORT>``, e.g. ``lb-a7942975/TCP:80``: the IP group the listener's
  policy forwards to (``describe_app_ipgroup_policys``), cached for ``listener_cache_s``.

Pure parts, unit-tested: :func:`parse_pool`, :func:`server_name`, :func:`parse_member_page`,
:func:`health_of` / :func:`to_observed`, :func:`ip_groups_of_policies`, :func:`classify`,
:func:`plan_actions` and :func:`chunks`.

API behaviour handled on purpose (see ``docs/baidu-blb.md``):

* throttling (HTTP 429 or a throttling code), 5xx and transport errors: retried here with a
  doubling backoff, ``retries`` times, then :class:`TransientError`. The SDK's own retry policy
  is off, so retries are bounded by ours; one ``clientToken`` is reused across the retries of
  one write, so a retried write that did land is not applied twice;
* refused credentials (``InvalidAccessKeyId``, ``SignatureDoesNotMatch``, 401): every call
  raises the same :class:`LBAuthError` for ``auth_backoff_s`` without calling the API;
  a refused permission (``AccessDenied``, 403) does so for that operation only (read-only
  credentials still observe);
* eventual consistency: a change is listed only once the BLB applied it. Adding a member that
  exists, or that this provider added a moment ago, is done; deleting a missing one is done;
* quota: an ADD beyond ``max_backends`` members is refused before any call; the BLB's own quota
  error fails the action (``quota: ...``), never silently dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import urlsplit

from baidubce.auth.bce_credentials import BceCredentials
from baidubce.bce_client_configuration import BceClientConfiguration
from baidubce.exception import BceError, BceHttpClientError, BceServerError
from baidubce.retry.retry_policy import NoRetryPolicy
from baidubce.services.blb.app_blb_client import AppBlbClient

from agent.clock import Clock
from agent.errors import TransientError
from agent.lb.base import (
    Action,
    AdminState,
    ApplyResult,
    Health,
    LBAuthError,
    ObservedServer,
    Op,
    PoolNotFound,
    PoolState,
    server_name,
)
from agent.lb.fence import fenced

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_WEIGHT = 100  # member weight 0..100 (AppIpGroupMember, BLB API appendix)
PAGE_SIZE = 1000  # maxKeys: "usually at most 1000, default 1000" (describe IP group members)
WRITE_CHUNK = 50  # members per create/update/delete call: no documented limit; the default quota
PENDING_TTL_S = 60.0  # how long an ADD not yet listed by the BLB counts as pending
LISTENER_PROTOCOLS = frozenset({"TCP", "UDP", "HTTP", "HTTPS", "SSL"})

# BCE common error codes (cloud.baidu.com/doc/BLB/s/Djwvxnzw6) and throttling codes seen on
# BCE services (429 is what the gateways answer; the codes are matched too).
CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidHTTPAuthHeader"}
)
DENIED_CODES = frozenset({"AccessDenied", "OptInRequired"})
THROTTLE_CODES = frozenset(
    {"TooManyRequests", "RequestLimitExceeded", "RequestLimited", "Throttling", "QpsLimitExceeded"}
)

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

OP_DESCRIBE_MEMBERS = "describe_app_ip_group_member"
OP_CREATE_MEMBERS = "create_app_ip_group_member"
OP_UPDATE_MEMBERS = "update_app_ip_group_member"
OP_DELETE_MEMBERS = "delete_app_ip_group_member"
OP_DESCRIBE_POLICYS = "describe_app_ipgroup_policys"


# -- pool names (pure) -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PoolRef:
    """A parsed pool name: an IP group, or a listener whose policy names one."""

    blb_id: str
    ip_group_id: str | None = None
    protocol: str | None = None  # TCP, UDP, HTTP, HTTPS, SSL
    port: int | None = None


def parse_pool(pool: str) -> PoolRef:
    """``<blb-id>/<ip-group-id>`` or ``<blb-id>/<PROTO>:<PORT>``; PoolNotFound otherwise."""
    expected = "expected <blb-id>/<ip-group-id> or <blb-id>/<PROTO>:<PORT>"
    blb_id, sep, rest = pool.partition("/")
    if not sep or not _ID.fullmatch(blb_id):
        raise PoolNotFound(f"BLB pool {pool!r}: {expected}")
    if ":" in rest:
        proto, _, port_s = rest.partition(":")
        proto = proto.upper()
        if proto not in LISTENER_PROTOCOLS:
            raise PoolNotFound(
                f"BLB pool {pool!r}: listener protocol {proto!r} is not one of"
                f" {', '.join(sorted(LISTENER_PROTOCOLS))}"
            )
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise PoolNotFound(f"BLB pool {pool!r}: listener port {port_s!r} out of 1..65535")
        return PoolRef(blb_id, protocol=proto, port=int(port_s))
    if not _ID.fullmatch(rest):
        raise PoolNotFound(f"BLB pool {pool!r}: {expected}")
    return PoolRef(blb_id, ip_group_id=rest)


def instance_name(endpoint: str) -> str:
    """The instance a provider answers for: the endpoint's host."""
    host = urlsplit(endpoint if "//" in endpoint else f"//{endpoint}").hostname
    if not host:
        raise ValueError(f"BLB endpoint {endpoint!r}: no host")
    return host


def sdk_endpoint(endpoint: str) -> str:
    """The endpoint for the SDK: HTTPS unless a scheme is given (the SDK defaults to HTTP)."""
    if "://" in endpoint:
        scheme = endpoint.split("://", 1)[0]
        if scheme not in ("http", "https"):
            raise ValueError(f"BLB endpoint {endpoint!r}: scheme must be http or https")
        return endpoint
    return f"https://{endpoint}"


# -- answers (pure) ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Member:
    """One IP group member as the BLB lists it."""

    member_id: str
    ip: str
    port: int
    weight: int
    statuses: tuple[str, ...] = ()  # portList[].status: "Alive" / "Dead" / "Unknown"

    @property
    def name(self) -> str:
        return server_name(self.ip, self.port)


def parse_member_page(body: Mapping[str, Any]) -> tuple[list[Member], str | None]:
    """Members of one ``describe_app_ip_group_member`` page and the next marker (None: last).

    ``ValueError`` on an answer of another shape."""
    raw = body.get("memberList")
    if not isinstance(raw, list):
        raise ValueError(f"no memberList in {str(body)[:120]!r}")
    members = []
    for m in raw:
        try:
            ports = m.get("portList") or []
            members.append(
                Member(
                    member_id=str(m["memberId"]),
                    ip=str(m["ip"]),
                    port=int(m["port"]),
                    weight=int(m["weight"]),
                    statuses=tuple(str(p.get("status") or "Unknown") for p in ports),
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"bad member {m!r}: {e!r}") from None
    truncated = bool(body.get("isTruncated"))
    marker = body.get("nextMarker")
    if truncated and not marker:
        raise ValueError("isTruncated without nextMarker")
    return members, (str(marker) if truncated else None)


def health_of(statuses: Sequence[str]) -> Health:
    """The BLB's verdict on a member from its port health statuses.

    * no status (the IP group has no backend policy, so no health check): UP. The BLB forwards
      to every member then, and podlb.io/lb-ready must not wait for a check that never comes;
    * any ``Dead``: DOWN (one failing protocol is enough to stop traffic on that listener);
    * all ``Alive``: UP; otherwise (``Unknown``, just added) CHECKING.
    """
    if not statuses:
        return Health.UP
    if any(s == "Dead" for s in statuses):
        return Health.DOWN
    if all(s == "Alive" for s in statuses):
        return Health.UP
    return Health.CHECKING


def to_observed(m: Member) -> ObservedServer:
    """A member as podlb sees it: weight 0 is the BLB's drain (no new connections)."""
    return ObservedServer(
        name=m.name,
        address=m.ip,
        port=m.port,
        weight=m.weight,
        admin=AdminState.READY if m.weight > 0 else AdminState.DRAIN,
        health=health_of(m.statuses),
        sessions=None,  # the BLB reports no per-member sessions
    )


def ip_groups_of_policies(body: Mapping[str, Any]) -> list[str]:
    """The distinct IP groups a listener's policies forward to, in policy order."""
    raw = body.get("policyList")
    if not isinstance(raw, list):
        raise ValueError(f"no policyList in {str(body)[:120]!r}")
    groups: list[str] = []
    for p in raw:
        gid = p.get("appIpGroupId") if isinstance(p, Mapping) else None
        if gid and gid not in groups:
            groups.append(str(gid))
    return groups


class Outcome(StrEnum):
    OK = "ok"
    THROTTLED = "throttled"
    CREDENTIALS = "credentials"  # the key pair is refused: every operation
    DENIED = "denied"  # the key has no permission for this operation
    QUOTA = "quota"
    NOT_FOUND = "not_found"
    REJECTED = "rejected"
    ERROR = "error"  # 5xx, transport: retry

    @property
    def label(self) -> str:
        """The bounded ``on_call`` outcome: ok|throttled|auth|quota|rejected|error."""
        if self in (Outcome.CREDENTIALS, Outcome.DENIED):
            return "auth"
        if self is Outcome.NOT_FOUND:
            return "rejected"
        return self.value


def classify(status: int | None, code: str | None) -> Outcome:
    """One failed call by HTTP status (None: no answer) and BCE error code."""
    code = code or ""
    if code in CREDENTIAL_CODES or status == 401:
        return Outcome.CREDENTIALS
    if code in DENIED_CODES or status == 403:
        return Outcome.DENIED
    if status == 429 or code in THROTTLE_CODES:
        return Outcome.THROTTLED
    if code == "RequestExpired":  # signed too long ago (a slow call): a new signature helps
        return Outcome.ERROR
    if "quota" in code.lower():
        return Outcome.QUOTA
    if status is None or status >= 500:
        return Outcome.ERROR
    if status == 404:
        return Outcome.NOT_FOUND
    return Outcome.REJECTED


def says_exists(code: str, message: str) -> bool:
    """A create refused because the member is already there."""
    text = f"{code} {message}".lower()
    return "exist" in text and "not exist" not in text and "notexist" not in text


def says_missing(status: int | None, code: str, message: str) -> bool:
    """A delete refused because the member is gone."""
    text = f"{code} {message}".lower()
    return status == 404 or "nosuch" in text or "not exist" in text or "notfound" in text


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    if size < 1:
        raise ValueError("chunk size >= 1")
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- planning (pure) ---------------------------------------------------------------------------
@dataclass(slots=True)
class Create:
    ip: str
    port: int
    weight: int
    actions: list[Action]


@dataclass(slots=True)
class Update:
    member_id: str
    weight: int
    actions: list[Action]


@dataclass(slots=True)
class Delete:
    member_id: str
    actions: list[Action]


@dataclass(slots=True)
class Plan:
    creates: dict[str, Create] = dataclasses.field(default_factory=dict)  # by server name
    updates: dict[str, Update] = dataclasses.field(default_factory=dict)  # by member id
    deletes: dict[str, Delete] = dataclasses.field(default_factory=dict)  # by member id
    done: list[Action] = dataclasses.field(default_factory=list)
    failed: list[tuple[Action, str]] = dataclasses.field(default_factory=list)


def _check_weight(weight: int | None, max_weight: int) -> str | None:
    if weight is None:
        return "needs a weight"
    if not 0 <= weight <= max_weight:
        return f"weight {weight} out of 0..{max_weight}"
    return None


def plan_actions(
    actions: Sequence[Action],
    listed: Mapping[str, Member],
    pending: Collection[str],
    *,
    max_backends: int | None,
    max_weight: int = MAX_WEIGHT,
) -> Plan:
    """Turn actions into API calls against what the BLB lists (``listed``, by server name).

    ``pending``: servers this provider added that the BLB does not list yet. Writes of the
    same member in one batch are merged (ENABLE + SET_WEIGHT -> one update, last weight wins).
    ADDs beyond ``max_backends`` members (listed + pending - removed + added) are refused here,
    in order, before any call.
    """
    plan = Plan()
    removing: set[str] = set()
    for a in actions:
        if a.op is Op.REMOVE:
            m = listed.get(a.server)
            if m is not None and a.server not in plan.creates:
                removing.add(a.server)
    count = len(listed) + len([p for p in pending if p not in listed]) - len(removing)

    for a in actions:
        listed_m = listed.get(a.server)
        if a.op is Op.ADD:
            if a.address is None or a.port is None:
                plan.failed.append((a, "invalid: add needs an address and a port"))
                continue
            try:
                ip = ipaddress.ip_address(a.address).compressed
            except ValueError:
                plan.failed.append((a, f"invalid: {a.address!r} is not an IP address"))
                continue
            if not 0 < a.port < 65536:
                plan.failed.append((a, f"invalid: port {a.port} out of 1..65535"))
                continue
            if a.server != server_name(ip, a.port):
                plan.failed.append(
                    (a, f"invalid: a BLB member is named {server_name(ip, a.port)!r}")
                )
                continue
            weight = max_weight if a.weight is None else a.weight
            if (bad := _check_weight(weight, max_weight)) is not None:
                plan.failed.append((a, f"invalid: {bad}"))
                continue
            if listed_m is not None:
                if listed_m.weight == weight and listed_m.member_id not in plan.updates:
                    plan.done.append(a)  # already there (added by us or by the BLB's owner)
                else:
                    _update(plan, listed_m, weight, a)
            elif a.server in pending:
                plan.done.append(a)  # added a moment ago, not listed yet
            elif a.server in plan.creates:
                c = plan.creates[a.server]
                c.weight = weight
                c.actions.append(a)
            elif max_backends is not None and count >= max_backends:
                plan.failed.append(
                    (
                        a,
                        f"quota: the IP group would exceed max_backends={max_backends}"
                        f" members ({count} listed or pending); not sent to the BLB."
                        " Raise the BLB quota and podlb.io/max-backends together",
                    )
                )
            else:
                plan.creates[a.server] = Create(ip, a.port, weight, [a])
                count += 1
            continue

        if a.op is Op.REMOVE:
            if a.server in plan.creates:
                plan.failed.append((a, "invalid: removed in the apply that adds it"))
            elif listed_m is not None:
                d = plan.deletes.setdefault(listed_m.member_id, Delete(listed_m.member_id, []))
                d.actions.append(a)
            elif a.server in pending:
                plan.failed.append((a, "pending: added a moment ago, not listed by the BLB yet"))
            else:
                plan.done.append(a)  # already gone
            continue

        new_weight = 0 if a.op is Op.DRAIN else a.weight
        if (bad := _check_weight(new_weight, max_weight)) is not None:
            plan.failed.append((a, f"invalid: {a.op.value} {bad}"))
            continue
        assert new_weight is not None
        if a.server in plan.creates:
            c = plan.creates[a.server]
            c.weight = new_weight
            c.actions.append(a)
        elif listed_m is not None:
            if listed_m.weight == new_weight and listed_m.member_id not in plan.updates:
                plan.done.append(a)
            else:
                _update(plan, listed_m, new_weight, a)
        elif a.server in pending:
            plan.failed.append((a, "pending: added a moment ago, not listed by the BLB yet"))
        else:
            plan.failed.append((a, "no_server: the IP group has no such member"))
    return plan


def _update(plan: Plan, m: Member, weight: int, a: Action) -> None:
    u = plan.updates.setdefault(m.member_id, Update(m.member_id, weight, []))
    u.weight = weight
    u.actions.append(a)


Outcomes = tuple[list[Action], list[tuple[Action, str]]]


# -- I/O ---------------------------------------------------------------------------------------
class _Failure(Exception):
    """A call the BLB refused for good (not retried): rejected, quota or not found."""

    def __init__(self, outcome: Outcome, status: int | None, code: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.status = status
        self.code = code
        self.message = message

    def describe(self) -> str:
        return f"{self.code or self.status}: {self.message}"


def _error_parts(e: BaseException) -> tuple[int | None, str, str]:
    """(HTTP status, BCE code, message) of an SDK error; status None when nothing answered."""
    inner: BaseException = e
    if isinstance(e, BceHttpClientError) and e.last_error is not None:
        inner = e.last_error
    if isinstance(inner, BceServerError):
        code = inner.code.decode() if isinstance(inner.code, bytes) else str(inner.code or "")
        return inner.status_code, code, str(inner)
    return None, "", f"{type(inner).__name__}: {inner}"


class BaiduBLBProvider:
    """:class:`~agent.lb.base.LBProvider` for one region's application BLB API.

    ``endpoint``: ``blb.bj.baidubce.com`` (HTTPS) or a URL (``http://127.0.0.1:PORT``).
    ``max_backends``: members an IP group may hold (the BLB's default quota is 50; None: no
    check here, the BLB's own quota error still fails the action). ``timeout_s``: connect and
    read timeout of one call. Throttled, 5xx and unanswered calls are retried ``retries``
    times, waiting ``backoff_s`` doubled each time, then :class:`TransientError`. Refused
    credentials: :class:`LBAuthError`, and no call for ``auth_backoff_s``. ``on_call(operation,
    outcome)`` is called per API call (operation: the SDK method name; outcome
    ok|throttled|auth|quota|rejected|error). Safe to use from several threads.
    """

    name = "baidu-blb"
    max_weight = MAX_WEIGHT

    def __init__(
        self,
        *,
        access_key_id: str,
        secret_access_key: str,
        endpoint: str,
        max_backends: int | None = 50,
        timeout_s: float = 5.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        auth_backoff_s: float = 60.0,
        listener_cache_s: float = 30.0,
        clock: Clock | None = None,
        on_call: Callable[[str, str], None] | None = None,
    ) -> None:
        if not access_key_id or not secret_access_key:
            raise ValueError("BLB access key id and secret access key must not be empty")
        if timeout_s <= 0 or retries < 0 or backoff_s < 0 or auth_backoff_s < 0:
            raise ValueError("timeout_s > 0, retries >= 0, backoff_s >= 0, auth_backoff_s >= 0")
        if max_backends is not None and max_backends < 1:
            raise ValueError("max_backends >= 1 or None")
        self.endpoint = sdk_endpoint(endpoint)
        self._instance = instance_name(self.endpoint)
        self.default_max_backends: int | None = max_backends
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.auth_backoff_s = auth_backoff_s
        self.listener_cache_s = listener_cache_s
        self._clock = clock or Clock()
        self._on_call = on_call
        self._client = AppBlbClient(
            BceClientConfiguration(
                credentials=BceCredentials(access_key_id, secret_access_key),
                endpoint=self.endpoint,
                connection_timeout_in_mills=int(timeout_s * 1000),
                retry_policy=NoRetryPolicy(),  # ours are the only retries
            )
        )
        self._lock = threading.Lock()
        # auth backoff: until (monotonic) and the error to raise; None key = every operation
        self._refused: dict[str | None, tuple[float, LBAuthError]] = {}
        self._listeners: dict[tuple[str, str, int], tuple[float, str]] = {}
        self._pending: dict[tuple[str, str], dict[str, float]] = {}
        self._group_locks: dict[tuple[str, str], threading.Lock] = {}

    def instances(self) -> Sequence[str]:
        return [self._instance]

    def _check_instance(self, instance: str) -> None:
        if instance != self._instance:
            raise ValueError(f"unknown BLB instance {instance!r} (this one: {self._instance!r})")

    # -- calls with retries --------------------------------------------------------------------
    def _note(self, operation: str, outcome: Outcome) -> None:
        if self._on_call is not None:
            self._on_call(operation, outcome.label)

    def _refusal(self, operation: str) -> LBAuthError | None:
        now = self._clock.monotonic()
        with self._lock:
            for key in (None, operation):
                hit = self._refused.get(key)
                if hit is not None:
                    if now < hit[0]:
                        return hit[1]
                    del self._refused[key]
        return None

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        """``fn`` (one SDK call) with our retries; raises LBAuthError, TransientError, or
        :class:`_Failure` for a refusal that retrying will not change."""
        if (refused := self._refusal(operation)) is not None:
            raise refused
        failures = 0
        while True:
            try:
                with fenced(f"BLB {self._instance} {operation}"):  # each request, each retry
                    result = fn()
            except (BceError, OSError) as e:
                status, code, message = _error_parts(e)
                outcome = classify(status, code)
                self._note(operation, outcome)
                if outcome in (Outcome.CREDENTIALS, Outcome.DENIED):
                    raise self._refuse(operation, outcome, status, code, message) from e
                if outcome in (Outcome.THROTTLED, Outcome.ERROR):
                    if failures >= self.retries:
                        raise TransientError(
                            f"BLB {self._instance}: {operation} failed after {failures + 1}"
                            f" attempts ({outcome.value}): {code or status}: {message[:300]}"
                        ) from e
                    delay = self.backoff_s * (2**failures)
                    log.warning(
                        "BLB %s: %s %s (%s), retry in %.2fs",
                        self._instance,
                        operation,
                        outcome.value,
                        code or status or message[:120],
                        delay,
                    )
                    failures += 1
                    self._clock.sleep(delay)
                    continue
                raise _Failure(outcome, status, code, message) from e
            self._note(operation, Outcome.OK)
            return result

    def _refuse(
        self, operation: str, outcome: Outcome, status: int | None, code: str, message: str
    ) -> LBAuthError:
        if outcome is Outcome.CREDENTIALS:
            what = (
                "refused the credentials (check PODLB_BAIDU_ACCESS_KEY_ID and"
                " PODLB_BAIDU_SECRET_ACCESS_KEY)"
            )
            key: str | None = None
        else:
            what = f"denied {operation} (grant the IAM permission for BLB to this access key)"
            key = operation
        err = LBAuthError(
            f"BLB {self._instance} {what}: {code or status}: {message[:300]};"
            f" no BLB calls{'' if key is None else f' to {operation}'}"
            f" for {self.auth_backoff_s:g}s"
        )
        with self._lock:
            self._refused[key] = (self._clock.monotonic() + self.auth_backoff_s, err)
        log.error("%s", err)
        return err

    @staticmethod
    def _body(response: Any) -> dict[str, Any]:
        raw = response.__dict__.get("raw_data") if response is not None else None
        if not raw:
            return {}
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"not a JSON object: {raw[:120]!r}")
        return data

    # -- reads ---------------------------------------------------------------------------------
    def _resolve(self, ref: PoolRef, pool: str) -> tuple[str, str]:
        """(BLB id, IP group id) of a pool; PoolNotFound for an unknown listener."""
        if ref.ip_group_id is not None:
            return ref.blb_id, ref.ip_group_id
        assert ref.protocol is not None and ref.port is not None
        key = (ref.blb_id, ref.protocol, ref.port)
        now = self._clock.monotonic()
        with self._lock:
            hit = self._listeners.get(key)
            if hit is not None and now < hit[0]:
                return ref.blb_id, hit[1]
        try:
            response = self._call(
                OP_DESCRIBE_POLICYS,
                lambda: self._client.describe_app_ipgroup_policys(
                    ref.blb_id, ref.port, type=ref.protocol, maxkeys=PAGE_SIZE
                ),
            )
            groups = ip_groups_of_policies(self._body(response))
        except _Failure as e:
            raise PoolNotFound(
                f"BLB {self._instance}: pool {pool!r}: no listener {ref.protocol}:{ref.port}"
                f" on {ref.blb_id} ({e.describe()})"
            ) from e
        except ValueError as e:
            raise TransientError(f"BLB {self._instance}: unexpected policy answer: {e}") from e
        if len(groups) != 1:
            raise PoolNotFound(
                f"BLB {self._instance}: pool {pool!r}: listener {ref.protocol}:{ref.port}"
                f" forwards to {len(groups)} IP groups {groups}; name the IP group"
                f" ({ref.blb_id}/<ip-group-id>)"
            )
        with self._lock:
            self._listeners[key] = (now + self.listener_cache_s, groups[0])
        return ref.blb_id, groups[0]

    def _members(self, blb_id: str, ip_group_id: str) -> dict[str, Member]:
        """Every member of an IP group (all pages), by server name."""
        members: dict[str, Member] = {}
        marker: str | None = None
        while True:
            try:
                response = self._call(
                    OP_DESCRIBE_MEMBERS,
                    functools.partial(
                        self._client.describe_app_ip_group_member,
                        blb_id,
                        ip_group_id,
                        marker=marker,
                        max_keys=PAGE_SIZE,
                    ),
                )
                page, marker = parse_member_page(self._body(response))
            except _Failure as e:
                raise PoolNotFound(
                    f"BLB {self._instance}: no IP group {ip_group_id!r} on {blb_id!r}"
                    f" ({e.describe()})"
                ) from e
            except ValueError as e:
                raise TransientError(f"BLB {self._instance}: unexpected member answer: {e}") from e
            for mem in page:
                members[mem.name] = mem
            if marker is None:
                break
        self._settle_pending(blb_id, ip_group_id, members)
        return members

    def _settle_pending(self, blb_id: str, ip_group_id: str, listed: Mapping[str, Member]) -> None:
        now = self._clock.monotonic()
        with self._lock:
            pend = self._pending.get((blb_id, ip_group_id))
            if pend:
                for name in [n for n, t in pend.items() if n in listed or now - t > PENDING_TTL_S]:
                    del pend[name]

    def observe(self, instance: str, pool: str) -> PoolState:
        self._check_instance(instance)
        ref = parse_pool(pool)
        blb_id, group = self._resolve(ref, pool)
        members = self._members(blb_id, group)
        return PoolState(pool, {n: to_observed(m) for n, m in members.items()})

    def observe_pools(self, instance: str, pools: Collection[str]) -> dict[str, PoolState]:
        """Each IP group read once, however many pool names lead to it; unknown or malformed
        pools are left out (logged)."""
        self._check_instance(instance)
        by_group: dict[tuple[str, str], list[str]] = {}
        for pool in pools:
            try:
                key = self._resolve(parse_pool(pool), pool)
            except PoolNotFound as e:
                log.warning("%s", e)
                continue
            by_group.setdefault(key, []).append(pool)
        states: dict[str, PoolState] = {}
        for (blb_id, group), names in by_group.items():
            try:
                members = self._members(blb_id, group)
            except PoolNotFound as e:
                log.warning("%s", e)
                continue
            servers = {n: to_observed(m) for n, m in members.items()}
            for pool in names:
                states[pool] = PoolState(pool, dict(servers))
        return states

    # -- apply ---------------------------------------------------------------------------------
    def _group_lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._lock:
            return self._group_locks.setdefault(key, threading.Lock())

    def apply(self, instance: str, pool: str, actions: Sequence[Action]) -> ApplyResult:
        """Read the IP group, plan, then update, delete and create members in chunks.

        Rejected actions land in ``failed`` (``quota: ...``, ``no_server: ...``, ``pending:
        ...``, ``invalid: ...``, ``<BCE code>: <message>``). Raises PoolNotFound, LBAuthError,
        or TransientError (some chunks may have been applied: observe before re-planning).
        Applies to one IP group are serialized (the quota check needs a stable count).
        """
        self._check_instance(instance)
        ref = parse_pool(pool)
        key = self._resolve(ref, pool)
        with self._group_lock(key):
            listed = self._members(*key)
            with self._lock:
                pending = set(self._pending.get(key, {}))
            plan = plan_actions(actions, listed, pending, max_backends=self.default_max_backends)
            done = list(plan.done)
            failed = list(plan.failed)
            for outcome in (
                self._run_updates(key, list(plan.updates.values())),
                self._run_deletes(key, list(plan.deletes.values())),
                self._run_creates(key, list(plan.creates.values())),
            ):
                done += outcome[0]
                failed += outcome[1]
        if failed:
            log.info(
                "BLB %s pool %s: %d actions done, %d failed (first: %s)",
                self._instance,
                pool,
                len(done),
                len(failed),
                failed[0][1],
            )
        return ApplyResult(done=len(done), failed=tuple(failed))

    def _batched(
        self,
        operation: str,
        items: Sequence[Any],
        send: Callable[[Sequence[Any], str], object],
        actions_of: Callable[[Any], list[Action]],
        judge: Callable[[_Failure], str | None],
    ) -> Outcomes:
        """Send ``items`` in chunks; a refused chunk of several is re-sent one by one so each
        action gets its own answer. ``judge``: None when a refusal means done (idempotence),
        else the failure text."""
        done: list[Action] = []
        failed: list[tuple[Action, str]] = []

        def one_call(part: Sequence[Any]) -> _Failure | None:
            token = str(uuid.uuid4())  # one token across our retries of this write
            try:
                self._call(operation, lambda: send(part, token))
            except _Failure as e:
                return e
            return None

        for part in chunks(items, WRITE_CHUNK):
            err = one_call(part)
            if err is None:
                for it in part:
                    done += actions_of(it)
                continue
            singles = [(part[0], err)] if len(part) == 1 else [(it, one_call([it])) for it in part]
            for it, e in singles:
                verdict = None if e is None else judge(e)
                if verdict is None:
                    done += actions_of(it)
                else:
                    failed += [(a, verdict) for a in actions_of(it)]
        return done, failed

    def _run_creates(self, key: tuple[str, str], creates: list[Create]) -> Outcomes:
        blb_id, group = key

        def send(part: Sequence[Create], token: str) -> object:
            members = [{"ip": c.ip, "port": c.port, "weight": c.weight} for c in part]
            return self._client.create_app_ip_group_member(
                blb_id, group, members, client_token=token
            )

        def judge(e: _Failure) -> str | None:
            if e.outcome is Outcome.QUOTA:
                return f"quota: {e.describe()}"
            if says_exists(e.code, e.message):
                return None
            return e.describe()

        done, failed = self._batched(OP_CREATE_MEMBERS, creates, send, lambda c: c.actions, judge)
        now = self._clock.monotonic()
        added = {a.server for a in done}
        with self._lock:
            pend = self._pending.setdefault(key, {})
            for c in creates:
                name = server_name(c.ip, c.port)
                if name in added:
                    pend[name] = now
        return done, failed

    def _run_updates(self, key: tuple[str, str], updates: list[Update]) -> Outcomes:
        blb_id, group = key

        def send(part: Sequence[Update], token: str) -> object:
            members = [{"memberId": u.member_id, "weight": u.weight} for u in part]
            return self._client.update_app_ip_group_member(
                blb_id, group, members, client_token=token
            )

        def judge(e: _Failure) -> str | None:
            if says_missing(e.status, e.code, e.message):
                return f"no_server: {e.describe()}"
            return e.describe()

        return self._batched(OP_UPDATE_MEMBERS, updates, send, lambda u: u.actions, judge)

    def _run_deletes(self, key: tuple[str, str], deletes: list[Delete]) -> Outcomes:
        blb_id, group = key

        def send(part: Sequence[Delete], token: str) -> object:
            return self._client.delete_app_ip_group_member(
                blb_id, group, [d.member_id for d in part], client_token=token
            )

        def judge(e: _Failure) -> str | None:
            return None if says_missing(e.status, e.code, e.message) else e.describe()

        return self._batched(OP_DELETE_MEMBERS, deletes, send, lambda d: d.actions, judge)


__all__ = [
    "CREDENTIAL_CODES",
    "DENIED_CODES",
    "MAX_WEIGHT",
    "PAGE_SIZE",
    "THROTTLE_CODES",
    "WRITE_CHUNK",
    "BaiduBLBProvider",
    "Member",
    "Outcome",
    "Plan",
    "PoolRef",
    "chunks",
    "classify",
    "health_of",
    "instance_name",
    "ip_groups_of_policies",
    "parse_member_page",
    "parse_pool",
    "plan_actions",
    "says_exists",
    "says_missing",
    "sdk_endpoint",
    "server_name",
    "to_observed",
]
