"""The CLB provider's I/O: the SDK client, the calls, the listener cache, the write tasks."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Collection, Sequence
from typing import Any
from urllib.parse import urlsplit

from tencentcloud.clb.v20180317 import clb_client, models
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import (
    TencentCloudSDKException,
)
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile

from agent.clock import Clock
from agent.errors import PermanentError
from agent.lb.base import (
    Action,
    ApplyResult,
    LBAuthError,
    LBQuotaError,
    PoolNotFound,
    PoolState,
)
from agent.lb.cloud import CloudCalls, KeyedLocks, Retry, TTLCache, chunks
from agent.lb.tencent_clb.errors import ErrorClass, auth_message, classify_error, outcome_label
from agent.lb.tencent_clb.observe import build_pool_state, health_index, pool_backends
from agent.lb.tencent_clb.pools import JSON, PoolRef, Target, parse_pool, resolve_pool
from agent.lb.tencent_clb.writes import (
    MAX_WEIGHT,
    Call,
    Item,
    idempotent_success,
    plan_calls,
    request_params,
)

log = logging.getLogger(__name__)

API_VERSION = "2018-03-17"
DEFAULT_ENDPOINT = "clb.tencentcloudapi.com"
MAX_DESCRIBE_LISTENERS = 20  # DescribeTargets ListenerIds.N
MAX_RETRY_DELAY_S = 8.0
TASK_OK, TASK_FAILED, TASK_RUNNING = 0, 1, 2


class _Rejected(PermanentError):
    """The API refused a write call (not auth, quota, throttling or a missing pool)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


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
        self.task_timeout_s = task_timeout_s
        self.task_poll_s = task_poll_s
        self._clock = clock or Clock()
        self._calls = CloudCalls(
            "CLB",
            retries=retries,
            backoff_s=backoff_s,
            max_delay_s=MAX_RETRY_DELAY_S,
            auth_backoff_s=auth_backoff_s,
            clock=self._clock,
            on_call=on_call,
        )
        self._local = threading.local()  # one SDK client (one requests.Session) per thread
        self._listeners: TTLCache[str, list[JSON]] = TTLCache(listener_cache_s, self._clock)
        self._lb_lock: KeyedLocks[str] = KeyedLocks()

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
        response = getattr(self._client(), action)(request)
        out: JSON = json.loads(response.to_json_string())
        return out

    def _call(self, action: str, params: JSON) -> JSON:
        """``action`` with bounded retries; raises the classified error."""
        return self._calls.call(
            action,
            lambda: self._send(action, params),
            (TencentCloudSDKException,),
            lambda e: self._judge(action, e),
        )

    def _judge(self, action: str, e: BaseException) -> Retry:
        """Raise what retrying will not change; else what to retry."""
        assert isinstance(e, TencentCloudSDKException)
        code, message = str(e.code or "ClientError"), str(e.message or "")
        cls = classify_error(code)
        self._calls.note(action, outcome_label(cls))
        if cls is ErrorClass.AUTH:
            err = LBAuthError(auth_message(action, code, message))
            missing_permission = code.startswith("UnauthorizedOperation") or code.endswith(
                ".UnauthorizedOperation"
            )
            self._calls.block(action if missing_permission else None, err)
            log.error("%s", err)
            raise err from e
        if cls is ErrorClass.QUOTA:
            raise LBQuotaError(f"{action}: {code}: {message}") from e
        if cls is ErrorClass.NOT_FOUND:
            raise PoolNotFound(f"{action}: {code}: {message}") from e
        if cls is ErrorClass.REJECTED:
            raise _Rejected(code, message) from e
        return Retry(str(cls), f"{code}: {message}")

    # -- listeners --------------------------------------------------------------------------
    def _describe_listeners(self, lb_id: str, *, fresh: bool = False) -> tuple[list[JSON], bool]:
        """The LB's listeners, and whether they came from the cache."""
        now = self._clock.monotonic()
        cached = None if fresh else self._listeners.get(lb_id)
        if cached is not None:
            return cached, True
        answer = self._call("DescribeListeners", {"LoadBalancerId": lb_id})
        listeners = list(answer.get("Listeners") or ())
        self._listeners.put(lb_id, listeners, now)
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
                self._listeners.forget(lb_id)
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
            self._listeners.forget(target.lb_id)
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
