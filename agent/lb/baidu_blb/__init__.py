"""Baidu Cloud application BLB provider: pools are IP groups, members are pod IPs.

Only this package imports the BCE SDK (``bce-python-sdk``, ``AppBlbClient``, API v1), and only
in :mod:`.provider`. An IP group is the application BLB's backend set that takes bare IPs (what
CCE's direct-to-ENI mode registers); a listener's policy forwards to it.

Pool names (built by the leader, parsed by :func:`.pools.parse_pool`):

* ``<blb-id>/<ip-group-id>``, e.g. ``lb-a7942975/ip_group-45661177``;
* ``<blb-id>/<PROTO>:<PORT>``, e.g. ``lb-a7942975/TCP:80``: the IP group the listener's
  policy forwards to (``describe_app_ipgroup_policys``), cached for ``listener_cache_s``.

Pure parts, unit-tested: :mod:`.pools` (:func:`~.pools.parse_pool`), :mod:`.answers`
(:func:`~.answers.parse_member_page`, :func:`~.answers.health_of` /
:func:`~.answers.to_observed`, :func:`~.answers.ip_groups_of_policies`), :mod:`.errors`
(:func:`~.errors.classify`) and :mod:`.plan` (:func:`~.plan.plan_actions`).

API behaviour handled on purpose (see ``docs/baidu-blb.md``):

* throttling (HTTP 429 or a throttling code), 5xx and transport errors: retried here with a
  doubling backoff, ``retries`` times, then :class:`TransientError` (the shared
  :class:`agent.lb.cloud.CloudCalls`). The SDK's own retry policy is off, so retries are
  bounded by ours; one ``clientToken`` is reused across the retries of one write, so a
  retried write that did land is not applied twice;
* refused credentials (``InvalidAccessKeyId``, ``SignatureDoesNotMatch``, 401): every call
  raises the same :class:`LBAuthError` for ``auth_backoff_s`` without calling the API;
  a refused permission (``AccessDenied``, 403) does so for that operation only (read-only
  credentials still observe);
* eventual consistency: a change is listed only once the BLB applied it. Adding a member that
  exists, or that this provider added a moment ago, is done; deleting a missing one is done;
* quota: an ADD beyond ``max_backends`` members is refused before any call; the BLB's own quota
  error fails the action (``quota: ...``), never silently dropped.
"""

from agent.lb.baidu_blb.provider import BaiduBLBProvider

__all__ = ["BaiduBLBProvider"]
