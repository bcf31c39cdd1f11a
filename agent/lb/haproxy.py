"""HAProxy provider: pools are HAProxy backends, driven through the Runtime API (stats socket).

Only this module talks to HAProxy. The decisions are pure functions over text, tested with
answers captured from HAProxy 2.6.12:

* :func:`parse_servers_state` (``show servers state``), :func:`parse_stat_csv` (``show stat``),
  :func:`parse_backends` (``show backend``) and :func:`build_pools` -> :class:`PoolState`;
* :func:`classify_answer` says whether a command's answer is a success or a rejection, and
  gives a short reason (``exists``, ``no_server``, ``not_in_maint`` ...);
* :func:`action_steps` turns an :class:`Action` into Runtime API commands;
* :func:`process_id` (``show info``) tells a restarted or reloaded process, which has lost the
  servers added at run time, from the one podlb last saw.

I/O: observations use one connection per command (non-interactive mode, the answer ends at
EOF, so no answer text can be mistaken for a delimiter). :meth:`HAProxyProvider.apply` sends a
whole batch on one connection in interactive (``prompt``) mode, pipelined: every answer ends
with ``"\\n> "``. An ADD is ``add server`` then, only if that succeeded, ``enable health`` and
``enable server``; a STAGE the same with ``set server .. state drain`` instead of ``enable
server``, in one phase (health-checked, no new traffic; the ENABLE that admits it is one
phase too); a REMOVE is ``set server .. state maint`` then, only once nothing refers to the
server any more (:func:`removal_blockers` over ``show sess`` and ``show stat``), ``del
server``. So a batch runs in two phases, and a server named twice in one batch splits it in
sequential batches.
"""

from __future__ import annotations

import csv
import ipaddress
import logging
import re
import selectors
import socket
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from agent.clock import Clock
from agent.errors import PermanentError, TransientError
from agent.lb.base import (
    Action,
    AdminState,
    ApplyResult,
    Health,
    ObservedServer,
    Op,
    PoolNotFound,
    PoolState,
    split_batches,
)
from agent.lb.fence import fenced_call

log = logging.getLogger(__name__)

DEFAULT_SERVER_OPTIONS = "check inter 1s fastinter 100ms downinter 200ms fall 2 rise 2"

# HAProxy accepts these characters in proxy and server names (``invalid_char()``); checking
# them here also keeps a name from smuggling a second command (newline, ``;``, space).
_NAME = re.compile(r"[A-Za-z0-9_.:-]+")

# srv_admin_state bits (include/haproxy/server-t.h): FMAINT 0x01, IMAINT 0x02, CMAINT 0x04,
# FDRAIN 0x08, IDRAIN 0x10, RMAINT 0x20; 0x40 only says the FQDN was changed.
ADMF_MAINT = 0x01 | 0x02 | 0x04 | 0x20
ADMF_DRAIN = 0x08 | 0x10
# srv_op_state (enum srv_state)
OP_STOPPED, OP_STARTING, OP_RUNNING, OP_STOPPING = 0, 1, 2, 3
# srv_check_status (enum healthcheck_status): UNKNOWN 0, INI 1 ("Initializing"), START 2;
# from 3 on, the status of the last check that finished. A check that starts leaves it as it is
# (it resets srv_check_result to unknown instead).
CHK_STATUS_INI, CHK_STATUS_START = 1, 2
CHK_STATUS_PASSED = frozenset({6, 9, 15, 20})  # L4OK, L6OK, L7OK, PROCOK
# srv_check_result (enum chk_result)
CHK_RES_UNKNOWN, CHK_RES_NEUTRAL, CHK_RES_FAILED, CHK_RES_PASSED, CHK_RES_CONDPASS = range(5)
# srv_check_state bits (CHK_ST_*): INPROGRESS 0x01 (a check is running), CONFIGURED 0x02 (the
# server has `check`), ENABLED 0x04 (not `disable health`), PAUSED 0x08 (maintenance)
CHK_ST_INPROGRESS, CHK_ST_CONFIGURED, CHK_ST_ENABLED = 0x01, 0x02, 0x04

# ``show stat`` type column
_STAT_TYPE_SERVER = "2"


# -- endpoints ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Endpoint:
    """A Runtime API address: ``unix:/path`` or ``tcp:HOST:PORT`` (``tcp:[::1]:9999``)."""

    raw: str
    path: str | None = None
    host: str | None = None
    port: int | None = None

    def connect(self, timeout: float) -> socket.socket:
        if self.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
            return sock
        assert self.host is not None and self.port is not None
        return socket.create_connection((self.host, self.port), timeout=timeout)


def parse_endpoint(raw: str) -> Endpoint:
    """Validate one endpoint string; ``ValueError`` with the accepted forms otherwise."""
    expected = "expected unix:/path/to/socket or tcp:HOST:PORT"
    kind, sep, rest = raw.partition(":")
    if not sep or not rest:
        raise ValueError(f"bad HAProxy runtime endpoint {raw!r}: {expected}")
    if kind == "unix":
        if "\0" in rest:
            raise ValueError(f"bad HAProxy runtime endpoint {raw!r}: NUL in path")
        return Endpoint(raw, path=rest)
    if kind == "tcp":
        host, sep, port_s = rest.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise ValueError(f"bad HAProxy runtime endpoint {raw!r}: {expected}")
        return Endpoint(raw, host=host, port=int(port_s))
    raise ValueError(f"bad HAProxy runtime endpoint {raw!r}: {expected}")


# -- parsing (pure) -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ServerStateRow:
    """One line of ``show servers state`` (format version 1)."""

    backend: str
    name: str
    address: str  # srv_addr, or srv_fqdn for a server without a resolved address
    port: int
    op_state: int
    admin_state: int
    weight: int  # srv_uweight, the weight the user set
    check_status: int
    check_result: int
    check_state: int


@dataclass(frozen=True, slots=True)
class StatRow:
    """The columns of a ``show stat`` server row that we use."""

    backend: str
    name: str
    status: str  # UP, DOWN, MAINT, DRAIN, no check, "UP 1/2", "MAINT (resolution)" ...
    sessions: int  # scur


def parse_servers_state(text: str) -> list[ServerStateRow]:
    """Rows of ``show servers state [<backend>]``; ``ValueError`` on any other format.

    Columns are looked up by name from the ``#`` header line, so later versions that append
    columns still parse.
    """
    lines = text.splitlines()
    if not lines or lines[0].strip() != "1":
        raise ValueError(f"not a 'show servers state' version 1 answer: {text[:80]!r}")
    if len(lines) < 2 or not lines[1].startswith("#"):
        raise ValueError("'show servers state': no header line")
    cols = {c: i for i, c in enumerate(lines[1][1:].split())}
    try:
        ix = [
            cols[c]
            for c in (
                "be_name",
                "srv_name",
                "srv_addr",
                "srv_port",
                "srv_op_state",
                "srv_admin_state",
                "srv_uweight",
                "srv_check_status",
                "srv_check_result",
                "srv_check_state",
                "srv_fqdn",
            )
        ]
    except KeyError as e:
        raise ValueError(f"'show servers state': no column {e}") from None
    width = max(ix) + 1
    be, nm, ad, po, op, adm, w, cs, cr, cst, fq = ix
    rows = []
    for line in lines[2:]:
        f = line.split()
        if not f:
            continue
        if len(f) < width:
            raise ValueError(f"'show servers state': short line {line!r}")
        addr = f[ad]
        if addr == "-" and f[fq] != "-":
            addr = f[fq]
        try:
            rows.append(
                ServerStateRow(
                    backend=f[be],
                    name=f[nm],
                    address=addr,
                    port=int(f[po]),
                    op_state=int(f[op]),
                    admin_state=int(f[adm]),
                    weight=int(f[w]),
                    check_status=int(f[cs]),
                    check_result=int(f[cr]),
                    check_state=int(f[cst]),
                )
            )
        except ValueError:
            raise ValueError(f"'show servers state': bad line {line!r}") from None
    return rows


def parse_stat_csv(text: str) -> list[StatRow]:
    """Server rows (type 2) of ``show stat``; FRONTEND / BACKEND rows are skipped."""
    if not text.startswith("# "):
        raise ValueError(f"not a 'show stat' CSV answer: {text[:80]!r}")
    reader = csv.reader(text[2:].splitlines())
    header = next(reader)
    try:
        px, sv, st, sc, ty = (
            header.index(c) for c in ("pxname", "svname", "status", "scur", "type")
        )
    except ValueError as e:
        raise ValueError(f"'show stat': missing column ({e})") from None
    width = max(px, sv, st, sc, ty) + 1
    rows = []
    # The columns read here (names, counters, status, type) never contain a comma or a quote:
    # split each line only as far as needed (10,000 servers: ~100 columns each).
    for line in text[2:].splitlines()[1:]:
        f = line.split(",", width)
        if len(f) < width or f[ty] != _STAT_TYPE_SERVER:
            continue
        rows.append(StatRow(f[px], f[sv], f[st], int(f[sc]) if f[sc] else 0))
    return rows


def process_id(info: str) -> str:
    """The id of the process that answered ``show info``: ``<Pid>@<Start_time_sec>``.

    A restart or a master-worker reload starts a new process (a new worker): its runtime
    servers are gone. The start time tells apart processes that reuse a pid (pid 1 of a
    restarted container); ``ValueError`` when the answer has no ``Pid``."""
    fields = dict(
        (k.strip(), v.strip())
        for k, sep, v in (ln.partition(":") for ln in info.splitlines())
        if sep
    )
    if not fields.get("Pid"):
        raise ValueError(f"not a 'show info' answer: {info[:80]!r}")
    return f"{fields['Pid']}@{fields.get('Start_time_sec', '?')}"


def parse_backends(text: str) -> list[str]:
    """Names listed by ``show backend``."""
    return [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]


# What still refers to a server, by ``show stat`` column: sessions, queued requests, and
# server-side connections in use or kept idle for reuse (``http-reuse``).
_USE_COLUMNS = (
    ("scur", "sessions"),
    ("qcur", "queued"),
    ("used_conn_cur", "connections in use"),
    ("idle_conn_cur", "idle connections"),
    ("safe_conn_cur", "idle connections"),
)


def streams_by_server(sess: str, pool: str) -> dict[str, int]:
    """Streams per server of backend ``pool`` in a ``show sess`` answer (``... be=<pool>
    srv=<server> ...``, one line per stream). A stream keeps its server after its connection
    failed, while it waits to retry (``scur`` no longer counts it)."""
    key = f" be={pool} srv="
    out: dict[str, int] = {}
    for line in sess.splitlines():
        i = line.find(key)
        if i >= 0:
            name = line[i + len(key) :].split(" ", 1)[0]
            out[name] = out.get(name, 0) + 1
    return out


def removal_blockers(pool: str, names: Iterable[str], sess: str, stat: str) -> dict[str, str]:
    """Servers of ``names`` that something still refers to, with what: streams (``show sess``),
    sessions, queued requests, connections (``show stat``). Deleting such a server crashes
    HAProxy before 2.9 (a stream that still points to it uses freed memory)."""
    wanted = set(names)
    why: dict[str, list[str]] = {}
    for name, n in streams_by_server(sess, pool).items():
        if name in wanted:
            why.setdefault(name, []).append(f"{n} streams")
    if not stat.startswith("# "):
        raise ValueError(f"not a 'show stat' CSV answer: {stat[:80]!r}")
    lines = stat[2:].splitlines()
    header = next(csv.reader(lines[:1]), [])
    cols = [(header.index(c), what) for c, what in _USE_COLUMNS if c in header]
    px, sv = header.index("pxname"), header.index("svname")
    for row in csv.reader(lines[1:]):
        if len(row) <= max(px, sv) or row[px] != pool or row[sv] not in wanted:
            continue
        counts: dict[str, int] = {}
        for i, what in cols:
            if i < len(row) and row[i].isdigit() and int(row[i]):
                counts[what] = counts.get(what, 0) + int(row[i])
        why.setdefault(row[sv], []).extend(f"{n} {what}" for what, n in counts.items())
    return {name: ", ".join(parts) for name, parts in why.items() if parts}


def admin_of(admin_state: int) -> AdminState:
    """Any maintenance bit -> MAINT, else any drain bit -> DRAIN, else READY."""
    if admin_state & ADMF_MAINT:
        return AdminState.MAINT
    if admin_state & ADMF_DRAIN:
        return AdminState.DRAIN
    return AdminState.READY


def health_of(row: ServerStateRow) -> Health:
    """The LB's verdict on a server.

    * checks not enabled (``no check``: never enabled, or ``disable health``) -> CHECKING,
      as :class:`Health` defines: there is no verdict;
    * no check finished yet (status INI) -> CHECKING. A dynamic server is RUNNING as soon as it
      is enabled (``UP 1/2`` in ``show stat``), before any check ran;
    * a check in progress is no verdict: it resets the check *result* to unknown for its
      duration (``* L7OK`` in ``show stat``), but the operational state and the check *status*
      stay those of the last check that finished, and they decide;
    * in maintenance the state is forced to STOPPED and checks are paused, so the last check
      result (or status) speaks: passed -> UP, failed -> DOWN;
    * otherwise the operational state: RUNNING / STARTING (slowstart) -> UP; STOPPED -> DOWN;
      STOPPING (conditionally passed, ``disable-on-404``: wants no new traffic) -> DOWN.
    """
    if not row.check_state & CHK_ST_ENABLED:
        return Health.CHECKING
    if row.check_status <= CHK_STATUS_START:
        return Health.CHECKING
    if row.admin_state & ADMF_MAINT:
        if row.check_result == CHK_RES_PASSED:
            return Health.UP
        if row.check_result in (CHK_RES_FAILED, CHK_RES_CONDPASS):
            return Health.DOWN
        if row.check_result == CHK_RES_UNKNOWN:  # paused mid-check: the last status speaks
            return Health.UP if row.check_status in CHK_STATUS_PASSED else Health.DOWN
        return Health.UNKNOWN
    if row.op_state in (OP_RUNNING, OP_STARTING):
        return Health.UP
    if row.op_state in (OP_STOPPED, OP_STOPPING):
        return Health.DOWN
    return Health.UNKNOWN


_GOING_UP = re.compile(r"DOWN (\d+)/\d+")


def rising(stat_status: str) -> bool:
    """``show stat`` says the server is DOWN but its last checks passed, fewer than ``rise``
    of them (``DOWN 1/2``): a server staged before its app listened, now starting to answer."""
    m = _GOING_UP.fullmatch(stat_status)
    return m is not None and int(m.group(1)) > 0


def build_pools(
    states: Iterable[ServerStateRow],
    stats: Iterable[StatRow],
    backends: Iterable[str] = (),
) -> dict[str, PoolState]:
    """Join both answers into one :class:`PoolState` per backend.

    ``show servers state`` decides which servers exist; ``show stat`` adds sessions (a server
    missing there, added between the two commands, has 0) and tells a DOWN server whose checks
    pass again, not ``rise`` times yet (CHECKING: no verdict, see :func:`rising`).
    ``backends`` adds empty pools.
    """
    stat = {(r.backend, r.name): r for r in stats}
    pools: dict[str, dict[str, ObservedServer]] = {b: {} for b in backends}
    for r in states:
        s = stat.get((r.backend, r.name))
        health = health_of(r)
        if health is Health.DOWN and s is not None and rising(s.status):
            health = Health.CHECKING  # checks pass now, not `rise` of them yet: no verdict
        pools.setdefault(r.backend, {})[r.name] = ObservedServer(
            name=r.name,
            address=r.address,
            port=r.port,
            weight=r.weight,
            admin=admin_of(r.admin_state),
            health=health,
            sessions=s.sessions if s is not None else 0,
            checks_off=bool(r.check_state & CHK_ST_CONFIGURED)
            and not r.check_state & CHK_ST_ENABLED,
        )
    return {b: PoolState(b, servers) for b, servers in pools.items()}


# -- answers (pure) -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Answer:
    ok: bool
    reason: str  # "ok" or a short, bounded failure code
    text: str  # HAProxy's answer, stripped

    def describe(self) -> str:
        return f"{self.reason}: {self.text}" if self.text else self.reason


# Failure texts of HAProxy 2.6.12, first match wins (see tests/unit/test_haproxy_parse.py).
FAILURES: tuple[tuple[str, str], ...] = (
    ("Already exists a server with the same name", "exists"),
    ("No such server", "no_server"),
    ("No such backend", "no_backend"),
    ("Can't find backend", "no_backend"),
    ("No such proxy", "no_backend"),
    ("Only servers in maintenance mode can be deleted", "not_in_maint"),
    ("still has connections attached", "has_connections"),
    ("Unknown command", "unknown_command"),
    ("Permission denied", "denied"),
)
# Commands that print a success message; every other change command prints nothing on success.
SUCCESS_TEXT = {"add server": "New server registered.", "del server": "Server deleted."}


def command_verb(cmd: str) -> str:
    """The bounded label of a command: ``add server``, ``set server``, ``show servers state``."""
    words = cmd.split()
    if words[:3] == ["show", "servers", "state"]:
        return "show servers state"
    return " ".join(words[:2])


def classify_answer(cmd: str, text: str) -> Answer:
    """Success or rejection of ``cmd`` from HAProxy's answer ``text``."""
    body = text.strip()
    for needle, reason in FAILURES:
        if needle in body:
            return Answer(False, reason, body)
    verb = command_verb(cmd)
    if verb in SUCCESS_TEXT:
        return Answer(
            SUCCESS_TEXT[verb] in body, "ok" if SUCCESS_TEXT[verb] in body else "rejected", body
        )
    if verb.startswith("show "):
        return Answer(True, "ok", body)
    # enable/disable health|server, set server ...: silence is success; anything said is a
    # rejection ("unknown keyword 'x'.", "Absolute weight can only be between 0 and 256 ...").
    return Answer(not body, "ok" if not body else "rejected", body)


def retried_answer(cmd: str, answer: Answer) -> Answer:
    """The answer to a command sent again after its first answer was lost: the first one may
    have run, so ``exists`` to an ``add server`` and ``no_server`` to a ``del server`` are
    what that success looks like now."""
    if (command_verb(cmd), answer.reason) in {
        ("add server", "exists"),
        ("del server", "no_server"),
    }:
        return Answer(True, "ok", answer.text)
    return answer


# -- commands (pure) ----------------------------------------------------------------------
def format_address(address: str, port: int) -> str:
    """``addr:port`` as ``add server`` parses it: IPv6 in brackets (without them HAProxy 2.6
    splits ``fd00::4`` at the last colon and takes ``fd00:`` for an FQDN). Only IP literals
    are accepted: a name would become an FQDN server that never resolves without resolvers."""
    ip = ipaddress.ip_address(address)  # ValueError if not an IP literal
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return f"[{ip.compressed}]:{port}" if ip.version == 6 else f"{ip.compressed}:{port}"


def valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def action_steps(pool: str, action: Action, server_options: str) -> list[list[str]]:
    """The command phases of one action: a phase runs only if the previous one succeeded.

    ``ValueError`` for an action that cannot be expressed (no address, bad name ...).
    """
    if not valid_name(action.server):
        raise ValueError(f"server name {action.server!r} has characters HAProxy refuses")
    srv = f"{pool}/{action.server}"
    if action.op in (Op.ADD, Op.STAGE):
        if action.address is None or action.port is None:
            raise ValueError(f"{action.op.value} needs an address and a port")
        add = f"add server {srv} {format_address(action.address, action.port)}"
        if server_options:
            add += f" {server_options}"
        if action.weight is not None:
            add += f" weight {int(action.weight)}"
        # An added server starts in maintenance: ready (ADD), or drain (STAGE: no new traffic,
        # health checks running).
        ready = f"enable server {srv}" if action.op is Op.ADD else f"set server {srv} state drain"
        follow = [ready]
        if "check" in server_options.split():
            follow.insert(0, f"enable health {srv}")
        if action.op is Op.STAGE:
            # One phase: a STAGE takes no traffic, so its follow-ups may run even if the add
            # failed (on a server that exists they set what is wanted; else they are refused).
            # On an LB API that takes a second per call, the pod is staged a second sooner.
            return [[add, *follow]]
        return [[add], follow]
    if action.op is Op.SET_WEIGHT:
        if action.weight is None:
            raise ValueError("set_weight needs a weight")
        return [[f"set server {srv} weight {int(action.weight)}"]]
    if action.op is Op.ENABLE:
        # Checks first: a server whose add was cut short has them off (enabling them again is
        # a no-op). One phase: a server without a check still gets ready.
        enable = [f"set server {srv} state ready"]
        if "check" in server_options.split():
            enable.insert(0, f"enable health {srv}")
        return [enable]
    if action.op is Op.DRAIN:
        return [[f"set server {srv} state drain"]]
    if action.op is Op.REMOVE:
        return [[f"set server {srv} state maint"], [f"del server {srv}"]]
    raise ValueError(f"unknown op {action.op!r}")


def split_answers(data: bytes) -> tuple[list[str], int]:
    """Complete answers in an interactive-mode stream and how many bytes they used.

    The stream is ``"\\n> " A1 "> " A2 "> " ...``: each answer ends with a newline followed by
    the prompt, so ``"\\n> "`` ends every answer (the first, empty one belongs to ``prompt``).
    """
    answers = []
    pos = 0
    while (i := data.find(b"\n> ", pos)) >= 0:
        answers.append(data[pos:i].decode(errors="replace"))
        pos = i + 3
    return answers, pos


# -- I/O ----------------------------------------------------------------------------------
class _Incomplete(Exception):
    """The connection failed after ``answers`` (for the first commands) came back."""

    def __init__(self, answers: list[str], cause: BaseException) -> None:
        super().__init__(str(cause))
        self.answers = answers
        self.cause = cause


@fenced_call("HAProxy runtime API command")
def _exchange_one(ep: Endpoint, cmd: str, timeout: float) -> str:
    """One command in non-interactive mode: the answer is everything up to EOF."""
    try:
        with ep.connect(timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(cmd.encode() + b"\n")
            chunks = []
            while data := sock.recv(1 << 20):
                chunks.append(data)
    except OSError as e:
        raise _Incomplete([], e) from e
    return b"".join(chunks).decode(errors="replace")


@fenced_call("HAProxy runtime API commands")
def _exchange_many(ep: Endpoint, commands: Sequence[str], timeout: float) -> list[str]:
    """Commands pipelined on one interactive connection; reads while it writes, so a large
    batch cannot deadlock on full socket buffers. ``timeout``: longest time without progress."""
    payload = memoryview(("prompt\n" + "".join(c + "\n" for c in commands) + "quit\n").encode())
    answers: list[str] = []
    want = len(commands) + 1  # the empty answer of "prompt" comes first
    got = 0
    buf = bytearray()
    try:
        sock = ep.connect(timeout)
    except OSError as e:
        raise _Incomplete([], e) from e
    sel = selectors.DefaultSelector()
    try:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while got < want:
            events = sel.select(timeout)
            if not events:
                raise TimeoutError(f"no answer for {timeout}s")
            for _key, mask in events:
                if mask & selectors.EVENT_WRITE and payload:
                    n = sock.send(payload[: 1 << 18])
                    payload = payload[n:]
                    if not payload:
                        sel.modify(sock, selectors.EVENT_READ)
                if mask & selectors.EVENT_READ:
                    data = sock.recv(1 << 20)
                    if not data:
                        raise ConnectionError("HAProxy closed the connection")
                    buf += data
                    new, used = split_answers(bytes(buf))
                    del buf[:used]
                    for text in new:
                        if got > 0:
                            answers.append(text)
                        got += 1
    except OSError as e:
        raise _Incomplete(answers, e) from e
    finally:
        sel.close()
        sock.close()
    return answers


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

    def instances(self) -> Sequence[str]:
        return list(self._endpoints)

    def independent_writes(self) -> bool:
        """agent.lb.base.IndependentWrites: each server's commands stand alone."""
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
                    answers += _exchange_many(ep, rest, self.timeout_s)
                else:
                    answers.append(_exchange_one(ep, rest[0], self.timeout_s))
                continue
            except _Incomplete as e:
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
        """Servers of one backend: ``show servers state <pool>`` + ``show stat <pool> 4 -1``."""
        if not valid_name(pool):
            raise PoolNotFound(f"{pool!r} cannot be an HAProxy backend name")
        state = self._query(instance, f"show servers state {pool}")
        if not state.ok:
            if state.reason == "no_backend":
                raise PoolNotFound(f"HAProxy {instance}: no backend {pool!r}")
            raise PermanentError(f"HAProxy {instance}: show servers state: {state.text}")
        stat = self._query(instance, f"show stat {pool} 4 -1")
        if not stat.ok:  # the backend vanished between the two commands (a reload)
            raise PoolNotFound(f"HAProxy {instance}: no backend {pool!r} ({stat.text})")
        pools = self._build(instance, state.text, stat.text, [pool])
        return pools.get(pool, PoolState(pool))

    def observe_all(self, instance: str) -> dict[str, PoolState]:
        """Every backend (empty ones too) from three commands: one observation round."""
        backends = self._query(instance, "show backend")
        state = self._query(instance, "show servers state")
        stat = self._query(instance, "show stat -1 4 -1")
        for a in (backends, state, stat):
            if not a.ok:
                raise PermanentError(f"HAProxy {instance}: {a.reason}: {a.text}")
        return self._build(instance, state.text, stat.text, parse_backends(backends.text))

    def observe_pools(self, instance: str, pools: Collection[str]) -> dict[str, PoolState]:
        """Every backend in one round (three commands), narrowed to ``pools``."""
        wanted = set(pools)
        return {n: st for n, st in self.observe_all(instance).items() if n in wanted}

    @staticmethod
    def _build(
        instance: str, state: str, stat: str, backends: Iterable[str]
    ) -> dict[str, PoolState]:
        try:
            return build_pools(parse_servers_state(state), parse_stat_csv(stat), backends)
        except ValueError as e:
            raise PermanentError(f"HAProxy {instance}: unexpected answer: {e}") from e

    def process_id(self, instance: str) -> str:
        """:func:`process_id` from one ``show info``, one attempt (a prober calls again soon),
        at most ``timeout_s``; ``TransientError`` when the instance cannot be reached."""
        cmd = "show info"
        try:
            text = _exchange_one(self._endpoint(instance), cmd, self.timeout_s)
        except _Incomplete as e:
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
    "Answer",
    "Endpoint",
    "HAProxyProvider",
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
