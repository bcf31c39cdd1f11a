"""HAProxy's state answers, parsed (pure): ``show servers state``, ``show stat``,
``show backend``, ``show info`` and ``show sess`` -> :class:`agent.lb.base.PoolState`.

Tested with answers captured from HAProxy 2.6.12 (tests/unit/test_haproxy_parse.py); the I/O
is in :mod:`agent.lb.haproxy`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

from agent.lb.base import AdminState, Health, ObservedServer, PoolState

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


def _lines(text: str, start: int = 0) -> Iterator[str]:
    """The lines of ``text`` from ``start``, one at a time (``show stat`` of 10,000 servers is
    4 MB: ``splitlines`` would hold as much again in line strings)."""
    end = len(text)
    while start < end:
        nl = text.find("\n", start)
        if nl < 0:
            nl = end
        yield text[start:nl].rstrip("\r")
        start = nl + 1


_STATE_COLUMNS = (
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


def _state_lines(text: str) -> tuple[list[int], Iterator[str]]:
    """The column indexes (in ``_STATE_COLUMNS`` order) and the server lines of a ``show
    servers state`` answer; ``ValueError`` on any other format."""
    lines = _lines(text)
    if next(lines, "").strip() != "1":
        raise ValueError(f"not a 'show servers state' version 1 answer: {text[:80]!r}")
    header = next(lines, "")
    if not header.startswith("#"):
        raise ValueError("'show servers state': no header line")
    cols = {c: i for i, c in enumerate(header[1:].split())}
    try:
        return [cols[c] for c in _STATE_COLUMNS], lines
    except KeyError as e:
        raise ValueError(f"'show servers state': no column {e}") from None


def join_states(answers: Sequence[str]) -> str:
    """Answers of ``show servers state <backend>`` for several backends as one answer: the
    first whole, the server lines of the others (each repeats the version and header lines).
    ``ValueError`` when their headers differ."""
    if not answers:
        return ""
    head = answers[0].split("\n", 2)[:2]
    parts = [answers[0].rstrip("\n")]
    for a in answers[1:]:
        lines = a.split("\n", 2)
        if lines[:2] != head:
            raise ValueError(f"'show servers state': answers of different formats: {a[:80]!r}")
        if len(lines) > 2 and lines[2].strip():
            parts.append(lines[2].rstrip("\n"))
    return "\n".join(parts) + "\n"


def _state_fields(ix: list[int], line: str) -> tuple[str, ...] | None:
    """The columns we read of one line, in ``_STATE_COLUMNS`` order, the address resolved
    (srv_fqdn for a server without one); None for a blank line."""
    f = line.split()
    if not f:
        return None
    if len(f) <= max(ix):
        raise ValueError(f"'show servers state': short line {line!r}")
    got = [f[i] for i in ix]
    if got[2] == "-" and got[10] != "-":
        got[2] = got[10]
    return tuple(got[:10])


def _state_row(fields: tuple[str, ...], line: str) -> ServerStateRow:
    be, nm, addr, port, op, adm, w, cs, cr, cst = fields
    try:
        return ServerStateRow(
            backend=be,
            name=nm,
            address=addr,
            port=int(port),
            op_state=int(op),
            admin_state=int(adm),
            weight=int(w),
            check_status=int(cs),
            check_result=int(cr),
            check_state=int(cst),
        )
    except ValueError:
        raise ValueError(f"'show servers state': bad line {line!r}") from None


def parse_servers_state(text: str) -> list[ServerStateRow]:
    """Rows of ``show servers state [<backend>]``; ``ValueError`` on any other format.

    Columns are looked up by name from the ``#`` header line, so later versions that append
    columns still parse.
    """
    ix, lines = _state_lines(text)
    return [
        _state_row(fields, line)
        for line in lines
        if (fields := _state_fields(ix, line)) is not None
    ]


def _stat_fields(text: str) -> Iterator[tuple[str, str, str, str]]:
    """(pxname, svname, status, scur) of each server row (type 2) of ``show stat``."""
    if not text.startswith("# "):
        raise ValueError(f"not a 'show stat' CSV answer: {text[:80]!r}")
    lines = _lines(text, 2)
    header = next(csv.reader([next(lines, "")]), [])
    try:
        px, sv, st, sc, ty = (
            header.index(c) for c in ("pxname", "svname", "status", "scur", "type")
        )
    except ValueError as e:
        raise ValueError(f"'show stat': missing column ({e})") from None
    width = max(px, sv, st, sc, ty) + 1
    # The columns read here (names, counters, status, type) never contain a comma or a quote:
    # split each line only as far as needed (10,000 servers: ~100 columns each).
    for line in lines:
        f = line.split(",", width)
        if len(f) < width or f[ty] != _STAT_TYPE_SERVER:
            continue
        yield f[px], f[sv], f[st], f[sc]


def parse_stat_csv(text: str) -> list[StatRow]:
    """Server rows (type 2) of ``show stat``; FRONTEND / BACKEND rows are skipped."""
    return [StatRow(px, sv, st, int(sc) if sc else 0) for px, sv, st, sc in _stat_fields(text)]


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
        pools.setdefault(r.backend, {})[r.name] = _observed(r, stat.get((r.backend, r.name)))
    return {b: PoolState(b, servers) for b, servers in pools.items()}


def _observed(r: ServerStateRow, s: StatRow | None) -> ObservedServer:
    health = health_of(r)
    if health is Health.DOWN and s is not None and rising(s.status):
        health = Health.CHECKING  # checks pass now, not `rise` of them yet: no verdict
    return ObservedServer(
        name=r.name,
        address=r.address,
        port=r.port,
        weight=r.weight,
        admin=admin_of(r.admin_state),
        health=health,
        sessions=s.sessions if s is not None else 0,
        checks_off=bool(r.check_state & CHK_ST_CONFIGURED) and not r.check_state & CHK_ST_ENABLED,
    )


StatSource = Callable[[Collection[str]], Iterable[str]]  # backends -> `show stat` answers


def out_of_rotation_pools(state: str) -> set[str]:
    """Backends of a ``show servers state`` answer with a server out of rotation (drain or
    maintenance) or down: the only servers whose ``show stat`` columns podlb reads (sessions,
    while a drain ends; ``DOWN 1/2``, checks passing again). One cheap pass: each line split
    only as far as those columns."""
    ix, lines = _state_lines(state)
    be, op, adm = ix[0], ix[4], ix[5]
    upto = max(be, op, adm) + 1
    out: set[str] = set()
    for line in lines:
        f = line.split(None, upto)
        if len(f) <= upto - 1 or f[be] in out:
            continue
        try:
            admin, up = int(f[adm]), int(f[op]) in (OP_RUNNING, OP_STARTING)
        except ValueError:
            raise ValueError(f"'show servers state': bad line {line!r}") from None
        if admin & (ADMF_MAINT | ADMF_DRAIN) or not up:
            out.add(f[be])
    return out


class PoolReader:
    """``build_pools(parse_servers_state(state), parse_stat_csv(stat), backends)``, the same
    answer, but each server read once while it stays as it was: the columns we read of its
    lines (not the timers and counters that change every second) key the server last built
    from them. At 10,000 servers a leader reads every one every few seconds; parsing them afresh
    took a quarter of a second of its CPU.

    ``stat`` is a ``show stat`` answer, or a :data:`StatSource` asked only for the backends
    whose ``show stat`` columns matter (:func:`out_of_rotation_pools`): ``show stat`` of
    10,000 servers is 4 MB, read and split every round for the few servers being drained. A
    server of another backend then reads ``sessions=None`` (not read: podlb counts sessions
    only of servers out of rotation).

    An answer is of every backend (``whole``), or of some (``show servers state <backend>``
    for each of ``backends``, joined): the servers known are then replaced for those alone, so
    reads of a few backends and reads of all share what is known. It never grows past the
    servers of the backends last read, whole or one by one."""

    def __init__(self) -> None:
        self._known: dict[str, dict[str, ObservedServer]] = {}  # backend -> line key -> server

    def read(
        self,
        state: str,
        stat: str | StatSource,
        backends: Iterable[str] = (),
        *,
        whole: bool = True,
    ) -> dict[str, PoolState]:
        if isinstance(stat, str):
            answers: Iterable[str] = (stat,)
            asked = None  # every backend
        else:
            asked = out_of_rotation_pools(state)
            answers = stat(asked) if asked else ()
        stats = {(px, sv): (st, sc) for a in answers for px, sv, st, sc in _stat_fields(a)}
        ix, lines = _state_lines(state)
        pools: dict[str, dict[str, ObservedServer]] = {b: {} for b in backends}
        known: dict[str, dict[str, ObservedServer]] = {b: {} for b in pools}
        backend, was, now = "", {}, {}  # the lines of a backend come together
        for line in lines:
            fields = _state_fields(ix, line)
            if fields is None:
                continue
            if fields[0] != backend:
                backend = fields[0]
                was, now = self._known.get(backend, {}), known.setdefault(backend, {})
            unread = asked is not None and fields[0] not in asked  # sessions not read
            # (a backend not asked is not read even when `show stat` of all came back)
            st = None if unread else stats.get((fields[0], fields[1]))
            # one string, not a tuple of 12 (10,000 of those held 8 MB between rounds)
            key = " ".join(fields + st if st is not None else (*fields, "-" if unread else ""))
            server = was.get(key)
            if server is None:
                row = _state_row(fields, line)
                srow = None
                if st is not None:
                    try:
                        srow = StatRow(fields[0], fields[1], st[0], int(st[1]) if st[1] else 0)
                    except ValueError:
                        raise ValueError(f"'show stat': bad scur {st[1]!r}") from None
                server = _observed(row, srow)
                if unread:
                    server = replace(server, sessions=None)
            now[key] = server
            pools.setdefault(fields[0], {})[fields[1]] = server
        if whole:
            self._known = known  # only the servers of this answer: it never grows past them
        else:
            self._known.update(known)
        return {b: PoolState(b, servers) for b, servers in pools.items()}

    def drop(self, backends: Iterable[str]) -> None:
        """Forget the servers of ``backends`` (asked for one by one, and gone)."""
        for b in backends:
            self._known.pop(b, None)
