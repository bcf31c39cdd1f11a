"""The BLB provider's I/O: the SDK client, calls with retries, the listener cache, the pending
adds, and the chunked writes."""

from __future__ import annotations

import functools
import json
import logging
import threading
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from baidubce.auth.bce_credentials import BceCredentials
from baidubce.bce_client_configuration import BceClientConfiguration
from baidubce.exception import BceError, BceHttpClientError, BceServerError
from baidubce.retry.retry_policy import NoRetryPolicy
from baidubce.services.blb.app_blb_client import AppBlbClient

from agent.clock import Clock
from agent.errors import TransientError
from agent.lb.baidu_blb.answers import (
    Member,
    ip_groups_of_policies,
    parse_member_page,
    to_observed,
)
from agent.lb.baidu_blb.errors import Outcome, classify, says_exists, says_missing
from agent.lb.baidu_blb.plan import MAX_WEIGHT, Create, Delete, Update, plan_actions
from agent.lb.baidu_blb.pools import PoolRef, instance_name, parse_pool, sdk_endpoint
from agent.lb.base import Action, ApplyResult, LBAuthError, PoolNotFound, PoolState, server_name
from agent.lb.cloud import CloudCalls, KeyedLocks, Retry, TTLCache, chunks

log = logging.getLogger(__name__)

T = TypeVar("T")

PAGE_SIZE = 1000  # maxKeys: "usually at most 1000, default 1000" (describe IP group members)
WRITE_CHUNK = 50  # members per create/update/delete call: no documented limit; the default quota
PENDING_TTL_S = 60.0  # how long an ADD not yet listed by the BLB counts as pending

OP_DESCRIBE_MEMBERS = "describe_app_ip_group_member"
OP_CREATE_MEMBERS = "create_app_ip_group_member"
OP_UPDATE_MEMBERS = "update_app_ip_group_member"
OP_DELETE_MEMBERS = "delete_app_ip_group_member"
OP_DESCRIBE_POLICYS = "describe_app_ipgroup_policys"

Outcomes = tuple[list[Action], list[tuple[Action, str]]]


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
        self.auth_backoff_s = auth_backoff_s
        self._clock = clock or Clock()
        self._calls = CloudCalls(
            f"BLB {self._instance}",
            retries=retries,
            backoff_s=backoff_s,
            max_delay_s=None,
            auth_backoff_s=auth_backoff_s,
            clock=self._clock,
            on_call=on_call,
        )
        self._client = AppBlbClient(
            BceClientConfiguration(
                credentials=BceCredentials(access_key_id, secret_access_key),
                endpoint=self.endpoint,
                connection_timeout_in_mills=int(timeout_s * 1000),
                retry_policy=NoRetryPolicy(),  # ours are the only retries
            )
        )
        self._lock = threading.Lock()
        self._listeners: TTLCache[tuple[str, str, int], str] = TTLCache(
            listener_cache_s, self._clock
        )
        self._pending: dict[tuple[str, str], dict[str, float]] = {}
        self._group_lock: KeyedLocks[tuple[str, str]] = KeyedLocks()

    def instances(self) -> Sequence[str]:
        return [self._instance]

    def _check_instance(self, instance: str) -> None:
        if instance != self._instance:
            raise ValueError(f"unknown BLB instance {instance!r} (this one: {self._instance!r})")

    # -- calls with retries --------------------------------------------------------------------
    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        """``fn`` (one SDK call) with our retries; raises LBAuthError, TransientError, or
        :class:`_Failure` for a refusal that retrying will not change."""
        return self._calls.call(
            operation, fn, (BceError, OSError), lambda e: self._judge(operation, e)
        )

    def _judge(self, operation: str, e: BaseException) -> Retry:
        status, code, message = _error_parts(e)
        outcome = classify(status, code)
        self._calls.note(operation, outcome.label)
        if outcome in (Outcome.CREDENTIALS, Outcome.DENIED):
            raise self._refuse(operation, outcome, status, code, message) from e
        if outcome in (Outcome.THROTTLED, Outcome.ERROR):
            return Retry(outcome.value, f"{code or status}: {message[:300]}")
        raise _Failure(outcome, status, code, message) from e

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
        self._calls.block(key, err)
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
        hit = self._listeners.get(key)
        if hit is not None:
            return ref.blb_id, hit
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
        self._listeners.put(key, groups[0], now)
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
