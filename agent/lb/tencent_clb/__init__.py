"""Tencent Cloud CLB provider: pools are CLB listeners (layer 4) or forwarding rules (layer 7).

Only this package imports the Tencent Cloud SDK (``tencentcloud-sdk-python-clb``, API version
2018-03-17), and only in :mod:`.provider`. The decisions are pure functions over the API's
JSON, tested table-driven:

* :mod:`.pools` -- :func:`~.pools.parse_pool` reads a pool name:
  ``<lb-id>/<listener>[/<location-id>]``, the listener an ID (``lbl-...``) or ``PROTO:PORT``
  (``TCP:80``), resolved by :func:`~.pools.resolve_pool` against a DescribeListeners answer;
* :mod:`.observe` -- :func:`~.observe.build_pool_state` joins DescribeTargets and
  DescribeTargetHealth into a :class:`PoolState` (:func:`~.observe.target_name`,
  :func:`~.observe.health_of`);
* :mod:`.writes` -- :func:`~.writes.plan_calls` turns :class:`Action` s into write calls
  chunked to the documented limits;
* :mod:`.errors` -- :func:`~.errors.classify_error` sorts an error code into the few classes
  we act on.

I/O (:mod:`.provider`): every call goes through :meth:`TencentCLBProvider._call` (the shared
:class:`agent.lb.cloud.CloudCalls`): bounded backoff and retry for throttling
(``RequestLimitExceeded*``), a busy LB (``FailedOperation.ResourceInOperating``) and network
errors, then :class:`TransientError`; refused credentials raise :class:`LBAuthError` and block
further calls for ``auth_backoff_s`` without reaching the API. The write APIs are
asynchronous: each returns a RequestId that is polled with DescribeTaskStatus.

Documented limits (CLB API 2018-03-17, https://www.tencentcloud.com/document/api/214/33843,
/33844, /33845 and the SDK's model docs): BatchRegisterTargets and BatchDeregisterTargets take
up to 500 targets a call; BatchModifyTargetWeight up to 100 rules of at most 50 targets, 500 in
all; DescribeTargets up to 20 listener IDs; every API 20 requests a second.
"""

from agent.lb.tencent_clb.provider import TencentCLBProvider

__all__ = ["TencentCLBProvider"]
