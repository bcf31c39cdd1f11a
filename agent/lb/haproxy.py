"""HAProxy provider: pools are HAProxy backends, driven through the Runtime API (stats socket).

Only this module talks to HAProxy (through its sockets, :mod:`agent.lb.haproxy_socket`). The
decisions are pure functions over text, in :mod:`agent.lb.haproxy_state` (what HAProxy
reports) and :mod:`agent.lb.haproxy_commands` (what podlb sends and how HAProxy answers),
re-exported here and tested with answers captured from HAProxy 2.6.12:

* :func:`parse_servers_state` (``show servers state``), :func:`parse_stat_csv` (``show stat``),
  :func:`parse_backends` (``show backend``) and :func:`build_pools` -> :class:`PoolState`;
* :func:`classify_answer` says whether a command's answer is a success or a rejection, and
  gives a short reason (``exists``, ``no_server``, ``not_in_maint`` ...);
* :func:`action_steps` turns an :class:`Action` into Runtime API commands;
* :func:`process_id` (``show info``) tells a restarted or reloaded process, which has lost the
  servers added at run time, from the one podlb last saw.

I/O (:mod:`agent.lb.haproxy_socket`): a single command is one connection (non-interactive
mode, the answer ends at EOF, so no answer text can be mistaken for a delimiter); several go
on one connection in interactive (``prompt``) mode, pipelined: every answer ends with
``"\\n> "``. :meth:`HAProxyProvider.apply` sends a whole batch so. An ADD is ``add server``
then, only if that succeeded, ``enable health`` and ``enable server``; a STAGE the same with
``set server .. state drain`` instead of ``enable server``, in one phase (health-checked, no
new traffic; the ENABLE that admits it is one phase too); a REMOVE is ``set server .. state
maint`` then, only once nothing refers to the server any more (:func:`removal_blockers` over
``show sess`` and ``show stat``), ``del server``. So a batch runs in two phases, and a server
named twice in one batch splits it in sequential batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from functools import partial

from agent.clock import Clock
from agent.errors import PermanentError, TransientError
from agent.lb.base import (
    Action,
    ApplyResult,
    PoolNotFound,
    PoolState,
    split_batches,
)
from agent.lb.haproxy_commands import (
    FAILURES,
    Answer,
    action_steps,
    classify_answer,
    command_verb,
    format_address,
    retried_answer,
    split_answers,
    valid_name,
)
from agent.lb.haproxy_socket import (
    Endpoint,
    Incomplete,
    exchange_many,
    exchange_one,
    parse_endpoint,
)
from agent.lb.haproxy_state import (
    PoolReader,
    ServerStateRow,
    StatRow,
    admin_of,
    build_pools,
    health_of,
    join_states,
    parse_backends,
    parse_servers_state,
    parse_stat_csv,
    process_id,
    removal_blockers,
    rising,
    streams_by_server,
)

log = logging.getLogger(__name__)

DEFAULT_SERVER_OPTIONS = "check inter 1s fastinter 100ms downinter 200ms fall 2 rise 2"


class HAProxyProvider:
    """:class:`~agent.lb.base.LBProvider` for one or more HAProxy processes.

    ``endpoints``: Runtime API sockets, ``unix:/run/haproxy/admin.sock`` or
    ``tcp:127.0.0.1:9999`` (``level admin``). ``server_options`` go on every ``add server``
    (dynamic servers ignore ``default-server``). ``timeout_s``: connect timeout and longest
    wait for progress. An unreachable instance is retried ``retries`` times, waiting
    ``backoff_s`` doubled each time, then :class:`TransientError`. ``on_command(instance,
    verb, outcome)`` is called for each command, outcome ``ok`` / ``rejected`` / ``error``.

    A REMOVE deletes a server only once nothing refers to it (no stream in ``show sess``, no
    session, queued request or server connection in ``show stat``): HAProxy before 2.9 does
    not check streams itself, and deleting a server a stream still points to crashes it. A
    server still in use is left in maintenance and reported ``in_use`` after waiting up to
    ``remove_wait_s`` (polling every ``remove_poll_s``); the next plan removes it again.
    """

    name = "haproxy"
    default_max_backends: int | None = None
    max_weight = 256

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        server_options: str = DEFAULT_SERVER_OPTIONS,
        timeout_s: float = 2.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        clock: Clock | None = None,
        on_command: Callable[[str, str, str], None] | None = None,
        remove_wait_s: float = 1.0,
        remove_poll_s: float = 0.2,
    ) -> None:
        if isinstance(endpoints, str):
            raise ValueError("endpoints must be a sequence of strings, not one string")
        if not endpoints:
            raise ValueError("at least one HAProxy runtime endpoint")
        self._endpoints = {e: parse_endpoint(e) for e in endpoints}
        if any(c in server_options for c in "\r\n;#"):
            raise ValueError(f"server_options {server_options!r}: no newline, ';' or '#'")
        if timeout_s <= 0 or retries < 0 or backoff_s < 0 or remove_wait_s < 0:
            raise ValueError("timeout_s > 0, retries >= 0, backoff_s >= 0, remove_wait_s >= 0")
        if remove_poll_s <= 0:
            raise ValueError("remove_poll_s > 0")
        self.server_options = " ".join(server_options.split())
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.remove_wait_s = remove_wait_s
        self.remove_poll_s = remove_poll_s
        self._clock = clock or Clock()
        self._on_command = on_command
        # per instance: its servers as last read, whole or a few backends at a time
        self._readers: dict[str, PoolReader] = {}
        # observe_pools: up to this many backends read one by one, past it all at once (a
        # leader round reads a share of them all: at 1,000 backends, a hundred or more)
        self.observe_each_max = 512
        # observe_all: past this many backends with servers out of rotation, one `show stat`
        # of all (each command costs a round trip; all of them, 4 MB at 10,000 servers)
        self.stat_per_backend_max = 64

    def instances(self) -> Sequence[str]:
        return list(self._endpoints)

    def independent_writes(self) -> bool:
        """agent.lb.base.IndependentWrites: each server's commands stand alone."""
        return True

    def observes_quickly(self) -> bool:
        """agent.lb.base.QuickObserve: one backend is two short commands."""
        return True

    def stages(self) -> bool:
        """Staging (agent.lb.base.Staging) helps only when servers have health checks."""
        return "check" in self.server_options.split()

    # -- transport with retries -----------------------------------------------------------
    def _endpoint(self, instance: str) -> Endpoint:
        try:
            return self._endpoints[instance]
        except KeyError:
            raise ValueError(f"unknown HAProxy instance {instance!r}") from None

    def _note(self, instance: str, cmd: str, outcome: str) -> None:
        if self._on_command is not None:
            self._on_command(instance, command_verb(cmd), outcome)

    def _run(
        self,
        instance: str,
        commands: Sequence[str],
        *,
        interactive: bool,
        resent: set[int] | None = None,
    ) -> list[str]:
        """Answers to ``commands`` (in order), resuming after the last answered command when
        the connection fails; ``TransientError`` after ``retries`` retries without progress.
        A command whose answer was lost may run twice (its index goes into ``resent``): a
        repeated ``add server`` then reads ``exists``, a repeated ``del server``
        ``no_server`` (:func:`retried_answer`)."""
        ep = self._endpoint(instance)
        answers: list[str] = []
        failures = 0
        while len(answers) < len(commands):
            rest = commands[len(answers) :]
            try:
                if interactive:
                    answers += exchange_many(ep, rest, self.timeout_s)
                else:
                    answers.append(exchange_one(ep, rest[0], self.timeout_s))
                continue
            except Incomplete as e:
                answers += e.answers
                if e.answers:
                    failures = 0
                if resent is not None:  # sent, perhaps run: their answers are lost
                    resent.update(range(len(answers), len(commands)))
                cmd = commands[len(answers)]
                self._note(instance, cmd, "error")
                if failures >= self.retries:
                    raise TransientError(
                        f"HAProxy {instance}: {command_verb(cmd)!r} failed after"
                        f" {failures + 1} attempts: {e.cause!r}"
                    ) from e.cause
                delay = self.backoff_s * (2**failures)
                log.warning("HAProxy %s unreachable (%r), retry in %.2fs", instance, e.cause, delay)
                failures += 1
                self._clock.sleep(delay)
        return answers

    def _query(self, instance: str, cmd: str) -> Answer:
        answer = classify_answer(cmd, self._run(instance, [cmd], interactive=False)[0])
        self._note(instance, cmd, "ok" if answer.ok else "rejected")
        return answer

    # -- observe --------------------------------------------------------------------------
    def observe(self, instance: str, pool: str) -> PoolState:
        """Servers of one backend, read as :meth:`observe_pools` reads a few: ``PoolNotFound``
        when there is no such backend (``PermanentError`` when it went between the two reads:
        a reload)."""
        if not valid_name(pool):
            raise PoolNotFound(f"{pool!r} cannot be an HAProxy backend name")
        got = self.observe_pools(instance, [pool])
        if pool not in got:
            raise PoolNotFound(f"HAProxy {instance}: no backend {pool!r}")
        return got[pool]

    def observe_all(self, instance: str) -> dict[str, PoolState]:
        """Every backend (empty ones too): one observation round. ``show stat`` is asked only
        of the backends with a server out of rotation or down (their sessions end a drain),
        one command each on one connection, or of all at once past
        :attr:`stat_per_backend_max` of them: at 10,000 servers its 4 MB were most of what a
        round read, for the few servers being drained (servers of the other backends read
        ``sessions=None``)."""
        backends = self._query(instance, "show backend")
        state = self._query(instance, "show servers state")
        for a in (backends, state):
            if not a.ok:
                raise PermanentError(f"HAProxy {instance}: {a.reason}: {a.text}")

        reader = self._readers.setdefault(instance, PoolReader())
        try:
            return reader.read(
                state.text, partial(self._stat_texts, instance), parse_backends(backends.text)
            )
        except ValueError as e:
            raise PermanentError(f"HAProxy {instance}: unexpected answer: {e}") from e

    def _stat_texts(self, instance: str, pools: Collection[str]) -> list[str]:
        """:meth:`_show_stat`'s answers; ``PermanentError`` when one is refused (a backend
        gone since ``show servers state``: a reload)."""
        answers = self._show_stat(instance, pools)
        for a in answers:
            if not a.ok:
                raise PermanentError(f"HAProxy {instance}: show stat: {a.reason}: {a.text}")
        return [a.text for a in answers]

    def _show_stat(self, instance: str, pools: Collection[str]) -> list[Answer]:
        """``show stat`` of the servers of ``pools``: one command per backend (on one connection
        when there are several), or one of every backend past :attr:`stat_per_backend_max`;
        each answer classified and counted."""
        if len(pools) > self.stat_per_backend_max:
            cmds = ["show stat -1 4 -1"]
        else:
            cmds = [f"show stat {p} 4 -1" for p in sorted(pools)]
        texts = self._run(instance, cmds, interactive=len(cmds) > 1)
        answers = [classify_answer(cmd, text) for cmd, text in zip(cmds, texts, strict=True)]
        for cmd, a in zip(cmds, answers, strict=True):
            self._note(instance, cmd, "ok" if a.ok else "rejected")
        return answers

    def observe_pools(self, instance: str, pools: Collection[str]) -> dict[str, PoolState]:
        """The backends ``pools`` names that exist. Up to :attr:`observe_each_max` of them,
        each is read alone (``show servers state <backend>``, the commands on one connection,
        and ``show stat`` as :meth:`observe_all` asks it); past that, every backend at once
        (three commands), narrowed to ``pools``. A leader round reads the pools that may have
        changed since the last, and a share of the others: each is read every few seconds."""
        wanted = set(pools)
        if len(wanted) > self.observe_each_max:
            return {n: st for n, st in self.observe_all(instance).items() if n in wanted}
        names = sorted(n for n in wanted if valid_name(n))
        if not names:
            return {}
        cmds = [f"show servers state {n}" for n in names]
        texts = self._run(instance, cmds, interactive=len(cmds) > 1)
        found: list[str] = []
        states: list[str] = []
        for name, cmd, text in zip(names, cmds, texts, strict=True):
            answer = classify_answer(cmd, text)
            self._note(instance, cmd, "ok" if answer.ok else "rejected")
            if answer.ok:
                found.append(name)
                states.append(answer.text)
            elif answer.reason != "no_backend":
                raise PermanentError(f"HAProxy {instance}: show servers state: {answer.text}")
        reader = self._readers.setdefault(instance, PoolReader())
        reader.drop(set(names) - set(found))
        if not found:
            return {}
        try:
            text = join_states(states)
            return reader.read(text, partial(self._stat_texts, instance), found, whole=False)
        except ValueError as e:
            raise PermanentError(f"HAProxy {instance}: unexpected answer: {e}") from e

    def process_id(self, instance: str) -> str:
        """:func:`process_id` from one ``show info``, one attempt (a prober calls again soon),
        at most ``timeout_s``; ``TransientError`` when the instance cannot be reached."""
        cmd = "show info"
        try:
            text = exchange_one(self._endpoint(instance), cmd, self.timeout_s)
        except Incomplete as e:
            self._note(instance, cmd, "error")
            raise TransientError(f"HAProxy {instance}: {cmd!r} failed: {e.cause!r}") from e.cause
        try:
            ident = process_id(text)
        except ValueError as e:
            self._note(instance, cmd, "rejected")
            raise PermanentError(f"HAProxy {instance}: unexpected answer: {e}") from e
        self._note(instance, cmd, "ok")
        return ident

    # -- apply ----------------------------------------------------------------------------
    def apply(self, instance: str, pool: str, actions: Sequence[Action]) -> ApplyResult:
        """Run every action; rejected ones land in ``failed`` with ``"<reason>: <answer>"``.

        ``PoolNotFound`` when HAProxy has no such backend; ``TransientError`` when it cannot
        be reached (some actions may have been applied: observe again before re-planning).
        """
        if not valid_name(pool):
            raise PoolNotFound(f"{pool!r} cannot be an HAProxy backend name")
        done = 0
        failed: list[tuple[Action, str]] = []
        for batch in split_batches(actions):
            d, f = self._apply_batch(instance, pool, batch)
            done += d
            failed += f
        if failed:
            log.info(
                "HAProxy %s pool %s: %d actions done, %d failed (first: %s)",
                instance,
                pool,
                done,
                len(failed),
                failed[0][1],
            )
        return ApplyResult(done=done, failed=tuple(failed))

    def _wait_unused(self, instance: str, pool: str, names: Sequence[str]) -> dict[str, str]:
        """Which of ``names`` (in maintenance by now: nothing new can pick them) something still
        refers to, after waiting up to ``remove_wait_s`` for that to end; -> what refers."""
        deadline = self._clock.monotonic() + self.remove_wait_s
        while True:
            sess = self._query(instance, "show sess")
            stat = self._query(instance, f"show stat {pool} 4 -1")
            try:
                if not (sess.ok and stat.ok):
                    raise ValueError((sess if not sess.ok else stat).describe())
                busy = removal_blockers(pool, names, sess.text, stat.text)
            except ValueError as e:  # cannot tell: do not delete
                busy = dict.fromkeys(names, f"cannot tell what uses it ({e})")
            if not busy or self._clock.monotonic() >= deadline:
                return busy
            self._clock.sleep(min(self.remove_poll_s, max(0.0, deadline - self._clock.monotonic())))

    def _apply_batch(
        self, instance: str, pool: str, batch: Sequence[Action]
    ) -> tuple[int, list[tuple[Action, str]]]:
        failed: list[tuple[Action, str]] = []
        live: list[tuple[Action, list[list[str]]]] = []
        for a in batch:
            try:
                live.append((a, action_steps(pool, a, self.server_options)))
            except ValueError as e:
                failed.append((a, f"invalid: {e}"))
        phase = 0
        while live:
            # No del server while anything refers to the server (crashes HAProxy < 2.9).
            leaving = [a.server for a, steps in live if steps[phase][0].startswith("del server ")]
            if leaving:
                busy = self._wait_unused(instance, pool, leaving)
                failed += [(a, f"in_use: {busy[a.server]}") for a, _ in live if a.server in busy]
                live = [(a, steps) for a, steps in live if a.server not in busy]
                if not live:
                    break
            cmds = [c for _, steps in live for c in steps[phase]]
            resent: set[int] = set()
            answers = enumerate(self._run(instance, cmds, interactive=True, resent=resent))
            still: list[tuple[Action, list[list[str]]]] = []
            done_or_failed: list[tuple[Action, Answer | None]] = []
            for a, steps in live:
                first_bad: Answer | None = None
                for cmd in steps[phase]:
                    i, text = next(answers)
                    ans = classify_answer(cmd, text)
                    if i in resent:
                        ans = retried_answer(cmd, ans)
                    self._note(instance, cmd, "ok" if ans.ok else "rejected")
                    if not ans.ok and first_bad is None:
                        first_bad = ans
                if first_bad is None and phase + 1 < len(steps):
                    still.append((a, steps))
                else:
                    done_or_failed.append((a, first_bad))
            if phase == 0 and any(
                ans is not None and ans.reason == "no_backend" for _, ans in done_or_failed
            ):
                raise PoolNotFound(f"HAProxy {instance}: no backend {pool!r}")
            failed += [(a, ans.describe()) for a, ans in done_or_failed if ans is not None]
            live = still
            phase += 1
        return len(batch) - len(failed), failed


__all__ = [
    "FAILURES",
    "Answer",
    "Endpoint",
    "HAProxyProvider",
    "PoolReader",
    "ServerStateRow",
    "StatRow",
    "action_steps",
    "admin_of",
    "build_pools",
    "classify_answer",
    "command_verb",
    "format_address",
    "health_of",
    "parse_backends",
    "parse_endpoint",
    "parse_servers_state",
    "parse_stat_csv",
    "process_id",
    "removal_blockers",
    "retried_answer",
    "rising",
    "split_answers",
    "split_batches",
    "streams_by_server",
]
